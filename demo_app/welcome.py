"""The welcome mail: a text part, an HTML part and the logo inline in the HTML.

Both bodies are jinja2 templates rendered through Pyramid
(:func:`pyramid.renderers.render` with the request), so they can use
``request.route_url`` and the links in the mail point at this site.

Structure (what mail clients expect for "HTML with a picture, and a text
version for everyone else")::

    multipart/alternative
    ├── text/plain                      templates/mail/welcome.txt.jinja2
    └── multipart/related
        ├── text/html                   templates/mail/welcome.html.jinja2
        └── image/png  Content-ID: <…>  static/logo.png (``<img src="cid:…">``)

It is built with the standard library's ``EmailMessage`` (``set_content``,
``add_alternative``, ``add_related``).
"""
from __future__ import annotations

import functools
import importlib.resources
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid

from pyramid.renderers import render

LOGO_RESOURCE = ("demo_app", "static/logo.png")
TEXT_TEMPLATE = "demo_app:templates/mail/welcome.txt.jinja2"
HTML_TEMPLATE = "demo_app:templates/mail/welcome.html.jinja2"


@functools.lru_cache(maxsize=1)
def logo_png():
    """The logo's bytes (read once)."""
    package, name = LOGO_RESOURCE
    return importlib.resources.files(package).joinpath(name).read_bytes()


def welcome_message(request, name, addr):
    """The welcome mail for ``name <addr>``.

    Raises ``ValueError`` (from the email package) for an address it cannot
    put into a ``To`` header; the mailer validates the rest when it is sent.
    """
    logo_cid = make_msgid(idstring="logo", domain="demo.invalid")  # "<…@demo.invalid>"
    values = {"name": name, "email": addr, "logo_cid": logo_cid[1:-1]}

    msg = EmailMessage()
    msg["To"] = Address(display_name=name, addr_spec=addr)
    msg["Subject"] = f"Welcome, {name}!"
    msg.set_content(render(TEXT_TEMPLATE, values, request=request))
    msg.add_alternative(render(HTML_TEMPLATE, values, request=request), subtype="html")
    html_part = msg.get_payload()[1]
    html_part.add_related(logo_png(), "image", "png", cid=logo_cid,
                          filename="logo.png", disposition="inline")
    return msg
