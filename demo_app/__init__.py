"""A small Pyramid application that shows pyramid_txmail at work.

* ``/``            a sign-up form; posting it sends a welcome mail with
                   ``request.mailer.send`` and redirects to ``/thanks``.
                   Ticking "fail after sending" raises after the send, so
                   pyramid_tm aborts the transaction and no mail goes out.
* ``/inbox``       what the local development SMTP server received
                   (``demo.inbox_path``, see :mod:`demo_app.devsmtp`).
* ``/inbox/{name}`` one received message.

Pages are built with plain strings and :func:`html.escape`, so the demo needs
no template engine.
"""
from __future__ import annotations

import email.errors
import email.policy
import html
import logging
import os
import re
import time
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPNotFound, HTTPSeeOther
from pyramid.response import Response

log = logging.getLogger(__name__)

INBOX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.eml$")


class DemoFailure(Exception):
    """Raised on purpose after ``mailer.send`` to show that an abort sends nothing."""


# -- page helpers ----------------------------------------------------------

def _e(value):
    return html.escape(str(value), quote=True)


STYLE = """
body { font-family: sans-serif; max-width: 46em; margin: 2em auto; padding: 0 1em; color: #222 }
nav a { margin-right: 1em }
label { display: block; margin: .6em 0 }
input[type=text], input[type=email] { width: 20em }
.error { color: #a00 }
table { border-collapse: collapse; width: 100% }
td, th { text-align: left; padding: .3em .5em; border-bottom: 1px solid #ddd; vertical-align: top }
pre { background: #f6f6f6; padding: 1em; white-space: pre-wrap; word-wrap: break-word }
code { background: #f6f6f6 }
"""


def page(request, title, body, status=200):
    nav = (f'<nav><a href="{_e(request.route_url("home"))}">Sign-up form</a>'
           f'<a href="{_e(request.route_url("inbox"))}">Inbox</a></nav>')
    text = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)} · pyramid_txmail demo</title><style>{STYLE}</style></head>"
            f"<body>{nav}<h1>{_e(title)}</h1>\n{body}\n</body></html>\n")
    return Response(text, status=status, content_type="text/html", charset="utf-8")


# -- the sign-up form ------------------------------------------------------

def _form(request, name="", addr="", fail=False, error=None):
    error_html = f'<p class="error">{_e(error)}</p>' if error else ""
    checked = " checked" if fail else ""
    return f"""
<p>Sign up and the application sends you a welcome mail through
<code>request.mailer.send</code>. The mail is queued only if the request's
transaction commits.</p>
{error_html}
<form method="post" action="{_e(request.route_url("home"))}">
  <label>Name <input type="text" name="name" value="{_e(name)}" required></label>
  <label>Email <input type="email" name="email" value="{_e(addr)}" required></label>
  <label><input type="checkbox" name="fail" value="1"{checked}>
    fail after sending (the view raises after <code>send</code>: the transaction
    aborts and no mail goes out)</label>
  <button type="submit">Sign up</button>
</form>"""


def home_view(request):
    return page(request, "Sign up", _form(request))


def _clean(value, limit=200):
    return " ".join(str(value or "").split())[:limit]


def welcome_message(name, addr):
    """The welcome mail; raises ValueError for an address that cannot be used."""
    msg = EmailMessage()
    msg["To"] = Address(display_name=name, addr_spec=addr)
    msg["Subject"] = f"Welcome, {name}!"
    msg.set_content(
        f"Hello {name},\n\n"
        "welcome to the pyramid_txmail demo. This mail was queued by the web\n"
        "request's transaction and delivered by txmail-qp after it committed.\n\n"
        "-- \nThe demo application\n")
    return msg


def signup_view(request):
    name = _clean(request.POST.get("name"))
    addr = _clean(request.POST.get("email"), 320)
    fail = bool(request.POST.get("fail"))
    error = None
    if not name:
        error = "Please give a name."
    elif not addr or "@" not in addr or " " in addr:
        error = "Please give an email address like name@example.org."
    if error is None:
        try:
            msg = welcome_message(name, addr)
        except (ValueError, IndexError, email.errors.MessageError) as exc:
            error = f"That address cannot be used: {exc}"
    if error is not None:
        return page(request, "Sign up", _form(request, name, addr, fail, error), status=400)

    try:
        message_id = request.mailer.send(msg)
    except ValueError as exc:
        # The mailer validates when send() is called; nothing was queued.
        return page(request, "Sign up",
                    _form(request, name, addr, fail, f"The mail was refused: {exc}"),
                    status=400)
    log.info("welcome mail %s to %s handed to the mailer", message_id, addr)
    if fail:
        raise DemoFailure(f"failing on purpose after sending {message_id}")
    return HTTPSeeOther(request.route_url("thanks", _query={"message_id": message_id}))


def thanks_view(request):
    message_id = request.GET.get("message_id", "")
    body = f"""
<p>Your welcome mail was queued when this request's transaction committed.
Its Message-ID is</p>
<pre>{_e(message_id)}</pre>
<p>The queue processor (<code>txmail-qp</code>) delivers it to the local
development SMTP server within a second or two: look in the
<a href="{_e(request.route_url("inbox"))}">inbox</a>.</p>"""
    return page(request, "Thanks for signing up", body)


def failure_view(exc, request):
    """The exception view for DemoFailure.

    pyramid_tm sees that an exception view rendered this response
    (``request.exception`` is set) and aborts the transaction, so the mail
    handed to the mailer is dropped.  This view sends nothing itself.
    """
    body = f"""
<p>The view raised <code>{_e(type(exc).__name__)}: {_e(exc)}</code> after it had
called <code>request.mailer.send</code>.</p>
<p>Because the request failed, its transaction was aborted and the welcome mail
was <strong>not</strong> queued: nothing will arrive in the
<a href="{_e(request.route_url("inbox"))}">inbox</a>. Try again
<a href="{_e(request.route_url("home"))}">without the checkbox</a>.</p>"""
    return page(request, "Something went wrong (on purpose)", body, status=500)


# -- the inbox -------------------------------------------------------------

_parser = BytesParser(policy=email.policy.default)


def _inbox_path(request):
    return request.registry.settings.get("demo.inbox_path")


def _read_message(path):
    with open(path, "rb") as fh:
        return _parser.parse(fh)


def _header(msg, name):
    try:
        return str(msg.get(name, ""))
    except Exception:  # a malformed header must not break the page
        return "(unreadable)"


def inbox_entries(inbox):
    """(name, message, mtime) for each received message, newest first."""
    try:
        names = [n for n in os.listdir(inbox) if INBOX_NAME.match(n)]
    except FileNotFoundError:
        return []
    entries = []
    for name in sorted(names, reverse=True):
        path = os.path.join(inbox, name)
        try:
            entries.append((name, _read_message(path), os.path.getmtime(path)))
        except OSError:
            continue  # removed while we were reading
    return entries


def _when(msg, mtime):
    return _header(msg, "Date") or time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime))


def inbox_view(request):
    inbox = _inbox_path(request)
    if not inbox:
        return page(request, "Inbox", "<p>No inbox is configured "
                    "(set <code>demo.inbox_path</code>).</p>")
    entries = inbox_entries(inbox)
    intro = (f"<p>Messages the development SMTP server stored in "
             f"<code>{_e(os.path.normpath(inbox))}</code>, newest first.</p>")
    if not entries:
        return page(request, "Inbox", intro + "<p>No mail yet.</p>")
    rows = []
    for name, msg, mtime in entries:
        url = request.route_url("message", name=name)
        rows.append(
            f"<tr><td>{_e(_when(msg, mtime))}</td><td>{_e(_header(msg, 'From'))}</td>"
            f"<td>{_e(_header(msg, 'To'))}</td>"
            f"<td><a href=\"{_e(url)}\">{_e(_header(msg, 'Subject') or '(no subject)')}</a>"
            f"</td></tr>")
    table = ("<table><tr><th>Date</th><th>From</th><th>To</th><th>Subject</th></tr>"
             + "".join(rows) + "</table>")
    return page(request, "Inbox", intro + table)


def _text_of(msg):
    try:
        part = msg.get_body(preferencelist=("plain",))
        if part is not None:
            return part.get_content()
    except (KeyError, LookupError, ValueError):
        pass
    return None


def message_view(request):
    inbox = _inbox_path(request)
    name = request.matchdict["name"]
    if not inbox or not INBOX_NAME.match(name):
        raise HTTPNotFound()
    path = os.path.join(inbox, name)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, IsADirectoryError):
        raise HTTPNotFound()
    msg = _parser.parsebytes(raw)
    rows = "".join(
        f"<tr><th>{_e(h)}</th><td>{_e(_header(msg, h))}</td></tr>"
        for h in ("From", "To", "Subject", "Date", "Message-ID",
                  "X-Envelope-From", "X-Envelope-To")
        if msg.get(h) is not None)
    text = _text_of(msg)
    text_html = (f"<pre>{_e(text)}</pre>" if text is not None
                 else "<p>This message has no text part.</p>")
    source = raw.decode("utf-8", errors="replace")
    body = (f"<table>{rows}</table><h2>Text</h2>{text_html}"
            f"<details><summary>Source ({_e(name)})</summary><pre>{_e(source)}</pre></details>")
    return page(request, _header(msg, "Subject") or "(no subject)", body)


# -- the app factory -------------------------------------------------------

def main(global_config, **settings):
    """The WSGI application (``use = call:demo_app:main``)."""
    with Configurator(settings=settings) as config:
        config.include("pyramid_txmail")  # includes pyramid_tm too
        config.add_route("home", "/")
        config.add_route("thanks", "/thanks")
        config.add_route("inbox", "/inbox")
        config.add_route("message", "/inbox/{name}")
        config.add_view(home_view, route_name="home", request_method="GET")
        config.add_view(signup_view, route_name="home", request_method="POST")
        config.add_view(thanks_view, route_name="thanks")
        config.add_view(inbox_view, route_name="inbox")
        config.add_view(message_view, route_name="message")
        config.add_exception_view(failure_view, context=DemoFailure)
        return config.make_wsgi_app()
