"""The transaction-bound mailer: ``request.mailer`` / ``get_mailer``, the data manager
that writes a message into its outbox when the transaction commits, and the outboxes
themselves (the queue: the spool, or the SQL outbox's row written through the application's
session; direct delivery after the commit; the memory/file/console
development deliveries, pyramid_mailer's DummyMailer)."""
