"""The inbox pages: what the development SMTP server received (``demo.inbox_path``).

* ``/inbox``                    the list, newest first
* ``/inbox/{name}``             one message: headers, text part, source, and
                                the HTML part in a sandboxed iframe
* ``/inbox/{name}/html``        the HTML part alone, ``cid:`` references
                                rewritten to the URLs below; served with a
                                Content-Security-Policy that runs no script and
                                loads images from this site only
* ``/inbox/{name}/cid/{cid}``   an inline image of the message, by Content-ID

A message is mail from anybody, so everything from it is escaped (jinja2
autoescape) and its HTML is never put into the page itself.
"""
from __future__ import annotations

import email.policy
import html
import os
import re
import time
import urllib.parse
from email.parser import BytesParser

from pyramid.httpexceptions import HTTPNotFound
from pyramid.response import Response
from pyramid.view import view_config

INBOX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.eml$")
CID_REFERENCE = re.compile(r"""(["'])cid:([^"']+)\1""", re.IGNORECASE)
SHOWN_HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "X-Envelope-From",
                 "X-Envelope-To")

_parser = BytesParser(policy=email.policy.default)


def _inbox_path(request):
    return request.registry.settings.get("demo.inbox_path")


def _header(msg, name):
    try:
        return str(msg.get(name, ""))
    except Exception:  # a malformed header must not break the page
        return "(unreadable)"


def inbox_entries(inbox):
    """``(name, message, mtime)`` for each received message, newest first.

    ``message`` holds the headers only (the list needs no bodies).
    """
    try:
        names = [n for n in os.listdir(inbox) if INBOX_NAME.match(n)]
    except FileNotFoundError:
        return []
    entries = []
    for name in sorted(names, reverse=True):
        path = os.path.join(inbox, name)
        try:
            with open(path, "rb") as fh:
                msg = _parser.parse(fh, headersonly=True)
            entries.append((name, msg, os.path.getmtime(path)))
        except OSError:
            continue  # removed while we were reading
    return entries


def _listing(name, msg, mtime):
    return {
        "name": name,
        "date": _header(msg, "Date") or time.strftime("%Y-%m-%d %H:%M:%S",
                                                      time.localtime(mtime)),
        "sender": _header(msg, "From"),
        "to": _header(msg, "To"),
        "subject": _header(msg, "Subject"),
    }


def _load(request):
    """(raw bytes, parsed message) of ``{name}``; 404 for anything that is not an inbox file."""
    inbox = _inbox_path(request)
    name = request.matchdict["name"]
    if not inbox or not INBOX_NAME.match(name):
        raise HTTPNotFound()
    try:
        with open(os.path.join(inbox, name), "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, IsADirectoryError):
        raise HTTPNotFound()
    return raw, _parser.parsebytes(raw)


def _body(msg, kind):
    try:
        part = msg.get_body(preferencelist=(kind,))
        return part.get_content() if part is not None else None
    except (KeyError, LookupError, ValueError):
        return None


def _describe(part):
    cid = part.get("Content-ID")
    size = len(part.get_payload(decode=True) or b"")
    return (f"{part.get_content_type()}, {size} bytes"
            + (f", Content-ID {cid}" if cid else "")
            + (f", {part.get_content_disposition()}" if part.get_content_disposition() else ""))


def _inline_part(msg, cid):
    for part in msg.walk():
        if part.is_multipart():
            continue
        if str(part.get("Content-ID", "")).strip().strip("<>") == cid:
            return part
    return None


@view_config(route_name="inbox", renderer="demo_app:templates/inbox.jinja2")
def inbox_view(request):
    inbox = _inbox_path(request)
    if not inbox:
        return {"inbox": None, "entries": []}
    return {"inbox": os.path.normpath(inbox),
            "entries": [_listing(*entry) for entry in inbox_entries(inbox)]}


@view_config(route_name="message", renderer="demo_app:templates/message.jinja2")
def message_view(request):
    raw, msg = _load(request)
    return {
        "name": request.matchdict["name"],
        "subject": _header(msg, "Subject"),
        "headers": [(h, _header(msg, h)) for h in SHOWN_HEADERS if msg.get(h) is not None],
        "text": _body(msg, "plain"),
        "has_html": _body(msg, "html") is not None,
        "parts": [_describe(p) for p in msg.walk() if not p.is_multipart()]
                 if msg.is_multipart() else [],
        "source": raw.decode("utf-8", errors="replace"),
    }


@view_config(route_name="message_html")
def message_html_view(request):
    _, msg = _load(request)
    body = _body(msg, "html")
    if body is None:
        raise HTTPNotFound()
    name = request.matchdict["name"]

    def to_url(match):
        cid = urllib.parse.unquote(match.group(2))  # RFC 2392: cid: URLs are %-encoded
        url = request.route_url("message_part", name=name, cid=cid)
        return f'{match.group(1)}{html.escape(url)}{match.group(1)}'

    response = Response(CID_REFERENCE.sub(to_url, body), content_type="text/html",
                        charset="utf-8")
    origin = request.host_url
    response.headers["Content-Security-Policy"] = (
        f"sandbox; default-src 'none'; img-src {origin}; style-src 'unsafe-inline'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@view_config(route_name="message_part")
def message_part_view(request):
    _, msg = _load(request)
    part = _inline_part(msg, request.matchdict["cid"])
    if part is None or part.get_content_maintype() != "image":
        raise HTTPNotFound()
    response = Response(part.get_payload(decode=True) or b"",
                        content_type=part.get_content_type())
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'"
    return response
