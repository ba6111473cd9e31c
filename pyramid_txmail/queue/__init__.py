"""The queue: where a committed message waits until the processor has sent it.

One interface (:mod:`pyramid_txmail.queue.interface`), two backends: ``maildir``
(a spool of directories on local disk, compatible with repoze.sendmail) and
``sql`` (a transactional outbox table in the application's own database).
"""
from __future__ import annotations


def open_queue(settings, create=False):
    """The queue the settings name: the SQL outbox at ``mail.queue_url`` when it is set,
    else the spool at ``mail.queue_path``.

    Each backend is imported only when it is used, so that a spool's user never
    imports SQLAlchemy.  A missing spool is created only with ``create`` (the
    processor and ``txmail-queue`` must not hide a wrong path by draining an empty
    spool of their own).  Raises
    :class:`~pyramid_txmail.queue.interface.QueueUnavailable` naming the key and
    what to fix.
    """
    from .interface import QueueUnavailable

    url = getattr(settings, "queue_url", None)
    if url:
        from .sql.backend import SQLQueue

        return SQLQueue.from_settings(settings)
    if not settings.queue_path:
        raise QueueUnavailable("neither mail.queue_url (the SQL outbox) nor "
                               "mail.queue_path (a spool directory) is set")
    from .maildir.backend import MaildirQueue

    return MaildirQueue.open(settings.queue_path, create=create)


def as_queue(queue):
    """``queue`` itself, or a :class:`~pyramid_txmail.queue.maildir.spool.Spool` wrapped in a
    :class:`~pyramid_txmail.queue.maildir.backend.MaildirQueue` (callers that
    made a processor from a spool keep working)."""
    if hasattr(queue, "candidates"):
        return queue
    from .maildir.backend import MaildirQueue

    return MaildirQueue(queue)
