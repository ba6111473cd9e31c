"""Render a message from Pyramid renderers: one context, a text and an HTML template.

::

    mail = render_mail(request, "myapp:templates/mail/welcome", {"user": user},
                       to=user.email)
    request.mailer.send(mail)

renders ``welcome.txt.jinja2`` (the text alternative), ``welcome.html.jinja2``
(the HTML one) and, when no ``subject=`` is given, ``welcome.subject.jinja2``
through :func:`pyramid.renderers.render` with the request -- so templates can
call ``request.route_url(...)``.  Either body template may be missing, not
both.  Any Pyramid renderer works: pass other suffixes (``.txt.mako``...).
"""
from __future__ import annotations

import os

from pyramid.path import AssetResolver, caller_package
from pyramid.renderers import render

from .builder import Mail

__all__ = ["render_mail", "MissingTemplate"]


class MissingTemplate(LookupError):
    """Neither the text nor the HTML template of a mail exists."""


def _asset_spec(name, package):
    """``name`` as an absolute asset spec or path (relative names are taken
    relative to ``package``, as ``pyramid.renderers.render`` does for its caller)."""
    if ":" in name or os.path.isabs(name):
        return name
    return f"{package.__name__}:{name}"


def _exists(spec):
    return AssetResolver().resolve(spec).exists()


def render_mail(request, name, context=None, *, text_suffix=".txt.jinja2",
                html_suffix=".html.jinja2", subject_suffix=".subject.jinja2",
                package=None, **mail):
    """A :class:`~pyramid_txmail.builder.Mail` rendered from the templates ``name + suffix``.

    ``context`` is the same dict for every template (each renderer gets its
    own copy).  ``mail`` is passed to :class:`Mail` (``to=``, ``subject=``,
    ``headers=``...); attach files to the result before sending it.  A
    subject template's output is stripped and its whitespace collapsed to
    single spaces (a Subject is one line).
    """
    package = package or caller_package()
    base = _asset_spec(name, package)
    found = {kind: base + suffix for kind, suffix in
             (("text", text_suffix), ("html", html_suffix), ("subject", subject_suffix))
             if suffix and _exists(base + suffix)}
    if "text" not in found and "html" not in found:
        raise MissingTemplate(f"mail template {name!r}: neither {base}{text_suffix} nor "
                              f"{base}{html_suffix} exists")

    def rendered(kind):
        return render(found[kind], dict(context or {}), request=request)

    text = rendered("text") if "text" in found else None
    html = rendered("html") if "html" in found else None
    if "subject" not in mail and "subject" in found:
        mail["subject"] = " ".join(rendered("subject").split())
    return Mail(text=text, html=html, **mail)
