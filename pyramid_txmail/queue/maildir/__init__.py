"""The Maildir backend of the queue: today's spool of directories on local disk
(``tmp/``, ``new/``, ``cur/``, ``deferred/``, ``failed/``), compatible with repoze.sendmail
in both directions.  Writing and claiming files, the deferred schedule, recovery of stale
claims, dead letters, the admin views ``txmail-queue`` shows, and the watch that wakes
the daemon when a file arrives."""
