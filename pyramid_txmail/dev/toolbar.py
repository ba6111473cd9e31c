"""A pyramid_debugtoolbar panel: the mails a request sent and what its transaction did.

Enable it the way pyramid_debugtoolbar documents for extra panels::

    pyramid.includes = pyramid_debugtoolbar
    debugtoolbar.includes = pyramid_txmail.toolbar

pyramid_debugtoolbar is an optional dependency (the ``toolbar`` extra); it is
imported only here.  The panel turns on :mod:`pyramid_txmail.mailer.sendlog` for
the requests the toolbar watches, so ``request.mailer.send`` records each
message, and the transaction's hooks mark it committed, aborted or rolled
back.  The toolbar's tween runs outside pyramid_tm's, so by the time the
panel looks, the transaction has ended.
"""
from __future__ import annotations

from pyramid.exceptions import ConfigurationError
from pyramid_debugtoolbar.panels import DebugPanel

from .preview import LIST as PREVIEW_ROUTE
from .preview import escape as _e
from ..mailer.sendlog import ABORTED, COMMITTED, PENDING, ROLLED_BACK, start_recording

_STATE_NOTE = {
    COMMITTED: "the transaction committed: the mail was handed to the delivery",
    ABORTED: "the transaction was aborted: the mail was dropped",
    ROLLED_BACK: "a savepoint rollback dropped the mail (the transaction committed)",
    PENDING: "the transaction had not ended when the response was made",
}
_STATE_CLASS = {COMMITTED: "success", ABORTED: "danger", ROLLED_BACK: "warning",
                PENDING: "info"}


class MailPanel(DebugPanel):
    """The ``Mail`` tab: Message-ID, sender, recipients, subject and state of each send."""

    name = "pyramid_txmail"
    title = "Mail"
    nav_title = "Mail"
    has_content = True
    user_activate = False

    def __init__(self, request):
        self._sends = start_recording(request)
        self.records = []
        self.preview_url = _preview_url(request)

    @property
    def nav_subtitle(self):
        count = len(self.records or self._sends)
        return f"{count} sent" if count else ""

    def process_response(self, response):
        # Keep the records, not the request: the toolbar stores panels for later.
        self.records = list(self._sends)

    def render_content(self, request):
        records = self.records or list(self._sends)
        preview = (f'<p><a href="{_e(self.preview_url)}" target="_blank">The mail preview '
                   "page</a> shows the messages themselves.</p>" if self.preview_url else "")
        if not records:
            return "<p>This request sent no mail.</p>" + preview
        rows = []
        for record in records:
            rows.append(
                f"<tr><td><code>{_e(record.message_id)}</code></td>"
                f"<td>{_e(record.fromaddr)}</td>"
                f"<td>{'<br>'.join(_e(a) for a in record.toaddrs)}</td>"
                f"<td>{_e(record.subject)}</td>"
                f'<td class="{_STATE_CLASS.get(record.state, "")}" '
                f'title="{_e(_STATE_NOTE.get(record.state, ""))}">'
                f"<strong>{_e(record.state)}</strong></td></tr>")
        return (
            '<table class="table table-striped table-condensed">'
            "<thead><tr><th>Message-ID</th><th>From</th><th>To</th><th>Subject</th>"
            "<th>State</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            "<p><small>committed: handed to the delivery when the transaction committed; "
            "aborted: the transaction was aborted, the mail was dropped; rolled back: a "
            "savepoint rollback dropped it; pending: the transaction had not ended.</small>"
            "</p>" + preview)


def _preview_url(request):
    """The preview page's URL when the app includes pyramid_txmail.preview, else None."""
    try:
        return request.route_url(PREVIEW_ROUTE)
    except KeyError:  # no such route
        return None


def includeme(config):
    """Register :class:`MailPanel` (``debugtoolbar.includes = pyramid_txmail.toolbar``)."""
    add_panel = getattr(config, "add_debugtoolbar_panel", None)
    if add_panel is None:
        raise ConfigurationError(
            "pyramid_txmail.toolbar is a pyramid_debugtoolbar panel: list it in "
            "debugtoolbar.includes (not pyramid.includes or config.include), and include "
            "pyramid_debugtoolbar in the application")
    add_panel(MailPanel)
