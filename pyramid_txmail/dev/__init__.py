"""Development tools, beside the data path rather than on it: the test outbox and
pytest plugin, the preview page, the debug toolbar panel and ``pyramid_txmail.debug``.
They use the mailer and the queue; nothing below imports them."""
