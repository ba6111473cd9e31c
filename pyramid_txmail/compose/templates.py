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

import importlib.resources
import os

from pyramid.path import AssetResolver, caller_package
from pyramid.renderers import render

from ..util.printable import get_logger
from .builder import Mail

log = get_logger("pyramid_txmail.templates")

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
    """Whether the template file ``spec`` names exists.

    Through importlib.resources, not Pyramid's AssetResolver (pkg_resources),
    which cannot look into a package whose loader it does not know -- e.g. pytest's
    assertion-rewriting loader, which pytest >= 9 puts on every package of a
    distribution with a pytest plugin (ours) and on test packages.
    """
    if os.path.isabs(spec) or ":" not in spec:
        return os.path.isfile(spec)
    package, _, path = spec.partition(":")
    try:
        return importlib.resources.files(package).joinpath(path).is_file()
    except (ModuleNotFoundError, TypeError):  # no such package, or a plain module
        try:
            return AssetResolver().resolve(spec).exists()
        except NotImplementedError:  # a built-in or frozen module: it has no files
            return False


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
    if "subject" not in mail:
        if "subject" in found:
            mail["subject"] = " ".join(rendered("subject").split())
        else:  # allowed (RFC 5322 needs no Subject), but rarely what was meant
            log.warning("mail template %r: no subject= and no %s%s, so the mail has no "
                        "Subject", name, base, subject_suffix)
    return Mail(text=text, html=html, **mail)
