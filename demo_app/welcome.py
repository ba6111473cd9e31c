"""The welcome mail: a text part, an HTML part and the logo inline in the HTML.

Built with pyramid_txmail's own API: :func:`pyramid_txmail.render_mail`
renders ``templates/mail/welcome.txt.jinja2`` and ``welcome.html.jinja2``
through Pyramid (with the request, so ``request.route_url`` makes links that
point at this site), and :class:`pyramid_txmail.builder.Mail` adds the logo
as an inline image, streamed from the file when the mail is queued.

Structure (what mail clients expect for "HTML with a picture, and a text
version for everyone else")::

    multipart/alternative
    ├── text/plain                      templates/mail/welcome.txt.jinja2
    └── multipart/related
        ├── text/html                   templates/mail/welcome.html.jinja2
        └── image/png  Content-ID: <…>  static/logo.png (``<img src="cid:…">``)
"""
from __future__ import annotations

import functools
import importlib.resources
import secrets

from pyramid_txmail import render_mail

LOGO_RESOURCE = ("demo_app", "static/logo.png")
TEMPLATES = "demo_app:templates/mail/welcome"


def logo_path():
    """The logo file (part of the package)."""
    package, name = LOGO_RESOURCE
    return str(importlib.resources.files(package).joinpath(name))


@functools.lru_cache(maxsize=1)
def logo_png():
    """The logo's bytes (read once; the tests compare them with the mail's part)."""
    with open(logo_path(), "rb") as f:
        return f.read()


def welcome_message(request, name, addr):
    """The welcome mail for ``name <addr>``.

    Raises ``ValueError`` (InvalidAddress, HeaderInjection) for a name or
    address that cannot go into a ``To`` header; the mailer checks the rest
    when it is sent.
    """
    logo_cid = f"logo.{secrets.token_hex(8)}@demo.invalid"
    values = {"name": name, "email": addr, "logo_cid": logo_cid}
    mail = render_mail(request, TEMPLATES, values, to=(name, addr),
                       subject=f"Welcome, {name}!")
    mail.inline(logo_path(), cid=logo_cid, filename="logo.png")
    return mail
