"""``config.include('pyramid_txmail.debug')``: mail written as ``.eml`` files, not sent.

pyramid_mailer.debug's counterpart.  pyramid_mailer writes every message into
``./mail`` (under the working directory) the moment ``send`` is called; here it is
``mail.delivery = file``: a file appears only when the transaction commits, written
to a hidden temporary file and renamed into place (see docs/devtools.rst,
Development deliveries).  The directory is, in this order, ``mail.file_path``,
``mail.top_level_directory`` (the key pyramid_mailer's ``DebugMailer.from_settings``
reads) or ``mail`` under the working directory, as pyramid_mailer.debug uses; it is
created 0700.  Each file is the message with ``X-Envelope-From:`` /
``X-Envelope-To:`` lines first, so Bcc recipients can be seen too.
"""
from __future__ import annotations

import os

from ..settings import settings_prefix

__all__ = ["includeme", "DebugMailer", "debug_directory"]


def debug_directory(settings, prefix=None):
    """Where the debug include writes: see the module docstring."""
    prefix = settings_prefix(settings, prefix)
    for key in ("file_path", "top_level_directory"):
        value = str(settings.get(prefix + key) or "").strip()
        if value:
            return value
    return os.path.join(os.getcwd(), "mail")


def includeme(config):
    """pyramid_txmail with ``mail.delivery = file`` into :func:`debug_directory`."""
    settings = config.get_settings()
    prefix = settings_prefix(settings)
    config.add_settings({prefix + "delivery": "file",
                         prefix + "file_path": debug_directory(settings, prefix)})
    config.include("pyramid_txmail")


def DebugMailer(top_level_directory, default_sender=None):  # noqa: N802 (its class name)
    """pyramid_mailer's ``DebugMailer(top_level_directory)``: a mailer of its own that
    writes each committed message as an ``.eml`` file there, bound to
    ``transaction.manager``.  A message without a sender gets ``default_sender``,
    else ``nobody@example.com`` (pyramid_mailer's writes ``nobody``)."""
    from ..mailer.delivery import make_delivery
    from ..mailer.dummy import PLACEHOLDER_SENDER
    from ..settings import parse_settings

    return make_delivery(parse_settings({
        "mail.delivery": "file", "mail.file_path": str(top_level_directory),
        "mail.default_sender": default_sender or PLACEHOLDER_SENDER}, "mail.")).bind()
