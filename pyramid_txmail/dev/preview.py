"""The mail preview page: ``config.include('pyramid_txmail.preview')``.

It lists the messages the development deliveries kept -- the memory outbox,
the ``.eml`` files of ``mail.file_path`` and of the directories in
``mail.preview_dirs`` (e.g. the demo's local inbox) -- and shows each one:
headers, the text part, the HTML part, the attachments and the raw source.

It is for development.  "Development" means mail does not reach real
people: ``mail.delivery`` is ``memory``, ``file``, ``console`` or ``null``,
or ``pyramid.reload_templates`` / ``pyramid.reload_all`` is on (what a
development.ini sets).  Anywhere else including it is a ConfigurationError
unless ``mail.preview_allow = true`` says it is wanted.

Everything shown is escaped.  HTML mail is served from a URL of its own with
``Content-Security-Policy: sandbox`` and no sources but ``data:`` and the
message's own parts (``cid:`` references are rewritten to them), and is
shown in an ``<iframe sandbox>``: no script runs, no form posts, nothing is
loaded from outside.  Attachments are downloads (``Content-Disposition:
attachment``, ``nosniff``).  Pages are built with :func:`html.escape`; no
template engine is needed.
"""
from __future__ import annotations

import html
import re
import time
import urllib.parse

from pyramid.exceptions import ConfigurationError
from pyramid.httpexceptions import HTTPFound, HTTPNotFound
from pyramid.response import Response
from pyramid.settings import asbool

from ..util.printable import get_logger
from . import previewsource as src
from ..settings import DEV_DELIVERY_MODES, parse_settings

log = get_logger("pyramid_txmail.preview")

DEVELOPMENT_DELIVERIES = DEV_DELIVERY_MODES  # memory, file, console, null
DEVELOPMENT_FLAGS = ("pyramid.reload_templates", "pyramid.reload_all")

LIST, MESSAGE, HTML, PART, RAW = ("txmail_preview", "txmail_preview_message",
                                  "txmail_preview_html", "txmail_preview_part",
                                  "txmail_preview_raw")

PAGE_CSP = ("default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "frame-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'")
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                  "Cache-Control": "no-store", "X-DNS-Prefetch-Control": "off"}
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
_CID_REF = re.compile(r"""\bcid:([^"'\s)<>]+)""", re.IGNORECASE)
_HTTP_EQUIV = re.compile(r"http-equiv", re.IGNORECASE)

STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 70em; padding: 0 1em; color: #222 }
table { border-collapse: collapse; width: 100% }
td, th { text-align: left; padding: .3em .5em; border-bottom: 1px solid #ddd; vertical-align: top }
th { white-space: nowrap }
pre { background: #f6f6f6; padding: 1em; white-space: pre-wrap; word-wrap: break-word }
iframe { width: 100%; height: 32em; border: 1px solid #ccc }
.muted { color: #777 } .num { text-align: right; white-space: nowrap }
"""


def escape(value):
    """HTML-escaped text; undecodable header bytes (surrogates) become U+FFFD."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:  # the email package keeps undecodable bytes as surrogate escapes
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
        text = raw.decode("utf-8", "replace")
    return html.escape(text, quote=True)


_e = escape


def development_reason(settings, mail_settings):
    """Why this app counts as development (a short text), or None if it does not."""
    if mail_settings.delivery in DEVELOPMENT_DELIVERIES:
        return f"mail.delivery = {mail_settings.delivery}"
    for key in DEVELOPMENT_FLAGS:
        if asbool(settings.get(key, False)):
            return f"{key} = true"
    return None


def _check_allowed(settings, mail_settings):
    reason = development_reason(settings, mail_settings)
    if reason is not None:
        log.info("mail preview enabled at %s (development: %s)",
                 mail_settings.preview_prefix, reason)
        return
    if not mail_settings.preview_allow:
        raw = settings.get("mail.preview_allow", "false")
        raise ConfigurationError(
            f"mail.preview_allow = {raw!r}: the mail preview page "
            "(pyramid_txmail.preview) shows every message it can find and is only enabled "
            "in development, i.e. with mail.delivery = memory, file, console or null, or "
            f"{' / '.join(DEVELOPMENT_FLAGS)} = true (here mail.delivery = "
            f"{mail_settings.delivery!r}); set mail.preview_allow = true to enable it "
            "anyway, where everyone who can reach it may read that mail")
    log.warning("mail preview enabled at %s outside development because "
                "mail.preview_allow = true: whoever can reach it can read the mail it lists",
                mail_settings.preview_prefix)


# -- small helpers -----------------------------------------------------------

def _size(octets):
    for unit in ("bytes", "KiB", "MiB"):
        if octets < 1024 or unit == "MiB":
            return f"{octets} {unit}" if unit == "bytes" else f"{octets:.1f} {unit}"
        octets /= 1024
    return str(octets)


def _date(timestamp):
    """The Date header's moment (else the file's mtime) in local time, one format for all."""
    if not timestamp:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _header(message, name, default=""):
    try:
        value = message.get(name)
        return default if value is None else str(value)
    except Exception:  # a malformed header must not break the page
        return "(unreadable)"


def _download_name(name, fallback):
    """A Content-Disposition value naming the file, ASCII fallback plus RFC 5987 UTF-8."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip() or fallback
    ascii_name = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or fallback
    return (f"attachment; filename=\"{ascii_name}\"; "
            f"filename*=UTF-8''{urllib.parse.quote(base, safe='')}")


def _media_type(part):
    value = part.get_content_type()
    return value if _MEDIA_TYPE.match(value) else "application/octet-stream"


class PreviewViews:
    """The views, bound to the parsed settings."""

    def __init__(self, mail_settings):
        self.settings = mail_settings

    def _sources(self, request):
        return src.sources(self.settings, request.registry)

    def _entry(self, request):
        entry = src.find_entry(self._sources(request), request.matchdict["source"],
                               request.matchdict["name"], request.registry)
        if entry is None:
            raise HTTPNotFound()
        return entry

    def _page(self, request, title, body, status=200, back=True):
        back = f'<p><a href="{_e(request.route_url(LIST))}">All messages</a></p>' if back else ""
        text = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<meta name=\"referrer\" content=\"no-referrer\"><title>{_e(title)} · mail "
                f"preview</title><style>{STYLE}</style></head><body>{back}<h1>{_e(title)}</h1>"
                f"\n{body}\n</body></html>\n")
        response = Response(text, status=status, content_type="text/html", charset="utf-8")
        response.headers.update(COMMON_HEADERS)
        response.headers["Content-Security-Policy"] = PAGE_CSP
        return response

    # -- the list ---------------------------------------------------------------

    def list_view(self, request):
        sources = self._sources(request)
        if not sources:
            return self._page(request, "Mail preview", (
                "<p>No source of messages is configured: use <code>mail.delivery = memory"
                "</code> or <code>file</code> (with <code>mail.file_path</code>), or list "
                "directories of .eml files in <code>mail.preview_dirs</code>.</p>"), back=False)
        rows, notes = [], []
        for source in sources:
            entries = src.list_entries(source, request.registry)
            if source.directory is not None and not entries:
                notes.append(f"<li><code>{_e(source.label)}</code>: no messages (yet)</li>")
            for entry in entries:
                message = entry.message
                stamp = entry.timestamp(message)
                rows.append((stamp, self._row(request, entry, message, stamp)))
        rows.sort(key=lambda row: row[0], reverse=True)
        listed = "".join(
            f"<li><code>{_e(s.label)}</code></li>" for s in sources)
        intro = f"<p>Messages from:</p><ul>{listed}</ul>"
        if notes:
            intro += "<ul class=\"muted\">" + "".join(notes) + "</ul>"
        table = ("<table><tr><th>Date</th><th>From</th><th>To</th><th>Subject</th>"
                 "<th class=\"num\">Size</th><th>Source</th></tr>"
                 + "".join(row for _, row in rows) + "</table>") if rows else \
            "<p>No mail yet.</p>"
        return self._page(request, "Mail preview", intro + table, back=False)

    def _row(self, request, entry, message, stamp):
        url = request.route_url(MESSAGE, source=entry.source.key, name=entry.name)
        sender = _header(message, "From") or entry.fromaddr or ""
        to = _header(message, "To") or ", ".join(entry.toaddrs)
        subject = _header(message, "Subject") or "(no subject)"
        return (f"<tr><td>{_e(_date(stamp))}</td><td>{_e(sender)}</td>"
                f"<td>{_e(to)}</td><td><a href=\"{_e(url)}\">{_e(subject)}</a></td>"
                f"<td class=\"num\">{_e(_size(entry.size))}</td>"
                f"<td>{_e(entry.source.label)}</td></tr>")

    # -- one message --------------------------------------------------------------

    def message_view(self, request):
        entry = self._entry(request)
        message = entry.message
        key, name = entry.source.key, entry.name
        text_part, html_part = src.body_parts(message)
        parts = src.leaf_parts(message)

        envelope = (f"<tr><th>Envelope from</th><td>{_e(entry.fromaddr or '')}</td></tr>"
                    f"<tr><th>Envelope to</th><td>{_e(', '.join(entry.toaddrs))}</td></tr>"
                    f"<tr><th>Source</th><td>{_e(entry.source.label)} "
                    f"(<code>{_e(name)}</code>, {_e(_size(entry.size))})</td></tr>")
        headers = "".join(f"<tr><th>{_e(h)}</th><td>{_e(v)}</td></tr>"
                          for h, v in src.header_items(message))
        body = [f"<table>{envelope}</table><h2>Headers</h2><table>{headers}</table>"]

        body.append("<h2>Text</h2>")
        if text_part is not None:
            body.append(f"<pre>{_e(src.content_text(text_part))}</pre>")
        else:
            body.append('<p class="muted">This message has no text part.</p>')

        body.append("<h2>HTML</h2>")
        if html_part is not None:
            frame = request.route_url(HTML, source=key, name=name)
            body.append(f'<iframe sandbox="" referrerpolicy="no-referrer" '
                        f'title="HTML part" src="{_e(frame)}"></iframe>')
        else:
            body.append('<p class="muted">This message has no HTML part.</p>')

        body.append("<h2>Parts and attachments</h2><table><tr><th>#</th><th>Type</th>"
                    "<th>File name</th><th>Content-ID</th><th class=\"num\">Size</th></tr>")
        for index, part in enumerate(parts):
            url = request.route_url(PART, source=key, name=name, index=str(index))
            role = (" (text body)" if part is text_part else
                    " (HTML body)" if part is html_part else "")
            body.append(
                f"<tr><td>{index}</td><td>{_e(part.get_content_type())}{role}</td>"
                f"<td><a href=\"{_e(url)}\">{_e(src.filename(part) or 'download')}</a></td>"
                f"<td>{_e(src.content_id(part) or '')}</td>"
                f"<td class=\"num\">{_e(_size(len(src.part_bytes(part))))}</td></tr>")
        body.append("</table>")

        raw_url = request.route_url(RAW, source=key, name=name)
        source_text = entry.raw.decode("utf-8", errors="replace")
        body.append(f"<h2>Raw source</h2><p><a href=\"{_e(raw_url)}\">Download</a></p>"
                    f"<details><summary>Show</summary><pre>{_e(source_text)}</pre></details>")
        subject = _header(message, "Subject") or "(no subject)"
        return self._page(request, subject, "".join(body))

    def html_view(self, request):
        """The HTML part alone, sandboxed by its Content-Security-Policy."""
        entry = self._entry(request)
        message = entry.message
        _, html_part = src.body_parts(message)
        if html_part is None:
            raise HTTPNotFound()
        key, name = entry.source.key, entry.name
        parts = src.leaf_parts(message)
        by_cid = {src.content_id(p): i for i, p in enumerate(parts) if src.content_id(p)}

        def part_url(match):
            cid = urllib.parse.unquote(match.group(1))
            index = by_cid.get(cid)
            if index is None:
                return "about:invalid"
            return request.route_url(PART, source=key, name=name, index=str(index))

        text = _CID_REF.sub(part_url, src.content_text(html_part))
        # <meta http-equiv="refresh"> would navigate the frame; defuse every http-equiv.
        text = _HTTP_EQUIV.sub("data-defused-http-equiv", text)
        response = Response(text, content_type="text/html", charset="utf-8")
        response.headers.update(COMMON_HEADERS)
        parts_base = request.route_url(PART, source=key, name=name, index="0")[:-1]
        response.headers["Content-Security-Policy"] = (
            f"sandbox; default-src 'none'; img-src data: {parts_base}; "
            f"style-src 'unsafe-inline'; font-src data:; base-uri 'none'; "
            f"form-action 'none'; frame-ancestors {request.host_url}")
        return response

    def part_view(self, request):
        entry = self._entry(request)
        index = request.matchdict["index"]
        parts = src.leaf_parts(entry.message)
        if not re.match(r"^[0-9]{1,6}$", index) or int(index) >= len(parts):
            raise HTTPNotFound()
        part = parts[int(index)]
        return self._download(src.part_bytes(part), _media_type(part),
                              _download_name(src.filename(part), f"part-{index}"))

    def raw_view(self, request):
        entry = self._entry(request)
        name = entry.name if entry.name.endswith(".eml") else f"message-{entry.name}.eml"
        return self._download(entry.raw, "message/rfc822", _download_name(name, "message.eml"))

    def _download(self, data, media_type, disposition):
        response = Response(body=data, content_type=media_type)
        response.headers.update(COMMON_HEADERS)
        response.headers["Content-Disposition"] = disposition
        response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
        return response


def includeme(config):
    """Add the preview routes under ``mail.preview_prefix`` (default ``/_mail``).

    Raises ConfigurationError outside development unless ``mail.preview_allow``.
    """
    settings = config.get_settings()
    mail_settings = parse_settings(settings, warn=False)  # includeme warned already
    _check_allowed(settings, mail_settings)
    prefix = mail_settings.preview_prefix
    views = PreviewViews(mail_settings)
    config.add_route(LIST, prefix + "/")
    config.add_route(MESSAGE, prefix + "/{source}/{name}")
    config.add_route(HTML, prefix + "/{source}/{name}/html")
    config.add_route(RAW, prefix + "/{source}/{name}/raw")
    config.add_route(PART, prefix + "/{source}/{name}/part/{index}")
    config.add_view(views.list_view, route_name=LIST, request_method="GET")
    config.add_view(views.message_view, route_name=MESSAGE, request_method="GET")
    config.add_view(views.html_view, route_name=HTML, request_method="GET")
    config.add_view(views.raw_view, route_name=RAW, request_method="GET")
    config.add_view(views.part_view, route_name=PART, request_method="GET")
    config.add_route(LIST + "_bare", prefix)
    config.add_view(lambda request: HTTPFound(request.route_url(LIST)),
                    route_name=LIST + "_bare")
