"""The queue: where a committed message waits until the processor has sent it.

One interface (:mod:`pyramid_txmail.queue.interface`), two backends: ``maildir``
(a spool of directories on local disk, compatible with repoze.sendmail) and
``sql`` (a transactional outbox table in the application's own database).
"""
