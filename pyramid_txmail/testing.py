"""``pyramid_txmail.testing``: the public path of the test helpers (``setUp``,
``capture``, ``DummyMailer``, ``config.include('pyramid_txmail.testing')``), which live
in :mod:`pyramid_txmail.dev.testing`; see there."""
from .dev.testing import (MEMORY_SETTINGS, Attachment, DummyMailer, Outbox, SentMail,
                          capture, dummy_request, includeme, setUp)

__all__ = ["SentMail", "Attachment", "Outbox", "capture", "setUp", "dummy_request",
           "MEMORY_SETTINGS", "DummyMailer", "includeme"]
