"""The SQL outbox in the mailer: a send writes its row through the application's session.

With ``mail.queue_url`` set and ``mail.delivery = queue``, the queue is a table in
the application's own database.  ``request.mailer.send(msg)`` validates and
prepares the message as for the spool, then INSERTs its row *now*, through
``session.connection()`` of the application's SQLAlchemy session -- the
connection, and so the database transaction, that holds the application's own
rows.  The mail therefore commits exactly when the data does: there is no
second store, no vote of ours, no prepared state and nothing in doubt after a
crash (``mail.commit_check`` has nothing to resolve).

That only holds if the session's transaction is the request's: the session
must be joined to the request's transaction manager by zope.sqlalchemy
(``zope.sqlalchemy.register(session, transaction_manager=request.tm)``, as the
Pyramid cookiecutter does).  A session that is not would keep the row in a
database transaction nobody commits -- the mail would silently never exist -- so
a send through one is refused, at once, with an error naming
``mail.queue_session``.  Raw SQL does not tell zope.sqlalchemy that the session
wrote anything, and a session it believes unchanged is rolled back at the
commit; so every send calls ``zope.sqlalchemy.mark_changed``.

A savepoint rollback removes the row (zope.sqlalchemy makes a transaction
savepoint a SQL SAVEPOINT); an abort, a doom, a veto or an exception removes it
with the rest of the database transaction.  What is left for us is the events:
the transaction's :class:`~pyramid_txmail.datamanager.MailDataManager` keeps the
list of messages (dropping those a savepoint rollback dropped) and, after the
commit, :meth:`SqlOutbox.committed` turns them into ``MailQueued`` -- its vote
and finish do nothing.

SQLAlchemy's own savepoints (``session.begin_nested()``) are not the
transaction manager's, so the data manager never hears of their rollback: the
row is gone, but ``MailQueued`` would fire for it.  :func:`watch_rollbacks`
listens to the session's ``after_soft_rollback`` and drops the message of every
row written inside the session transaction that was rolled back (or inside one
nested in it).  Chosen over a ``SELECT id IN (...)`` after the commit: that
costs a connection and a round trip per commit, and races txmail-qp, which may
have sent and removed a row before we look -- its mail would go unreported.
"""
from __future__ import annotations

import os

from ..events import MailQueued
from ..util.printable import get_logger
from ..util.shown_url import shown_url

log = get_logger("pyramid_txmail")

SETTING = "mail.queue_session"
#: How an application joins its session to the request's transaction (the cookiecutter's).
HOW_TO_JOIN = ("zope.sqlalchemy.register(session, transaction_manager=request.tm), as "
               "the Pyramid cookiecutter's get_tm_session does")


class QueueSessionError(RuntimeError):
    """A send to the SQL outbox found no usable session: nothing was queued."""


class NoSession(QueueSessionError):
    """No session to write the row through (no request attribute, or no request)."""


class SessionNotJoined(QueueSessionError):
    """The session is not joined to the transaction the mail belongs to."""


def describe(finder):
    """``mail.queue_session``'s value as the ini file gives it (for error messages)."""
    if isinstance(finder, str):
        return f"{SETTING} = {finder}"
    name = getattr(finder, "__qualname__", None) or repr(finder)
    return f"{SETTING} = {getattr(finder, '__module__', '?')}:{name}"


def find_session(mailer, finder):
    """The SQLAlchemy session a send of ``mailer`` writes through.

    An explicit ``session`` (``get_mailer(registry, tm, session=session)``) wins;
    otherwise ``finder`` (``mail.queue_session``) is applied to the request.
    """
    if getattr(mailer, "session", None) is not None:
        return _real_session(mailer.session)
    request = mailer.request
    if request is None:
        raise NoSession(
            "the mail queue is a table in the application's database (mail.queue_url), "
            "and this mailer has no session to write the row through and no request to "
            "find one in, so nothing was queued: outside a request pass the session, "
            "get_mailer(registry, transaction_manager, session=session), and commit "
            "through that transaction manager")
    if isinstance(finder, str):
        session = getattr(request, finder, None)
        where = f"request.{finder}"
    else:
        session = finder(request)
        where = "what it returned"
    if session is None:
        raise NoSession(
            f"{describe(finder)}: {where} is not set on this request, so the mail row "
            "could not be written and nothing was queued: the SQL outbox writes through "
            "the application's SQLAlchemy session (set mail.queue_session to the request "
            "attribute that holds it, or to a dotted name pkg.module:function(request))")
    return _real_session(session)


def _real_session(session):
    """A ``scoped_session`` stands for the session of the current scope."""
    from sqlalchemy.orm import scoped_session

    return session() if isinstance(session, scoped_session) else session


def check_joined(session, txn, finder):
    """Refuse ``session`` unless zope.sqlalchemy has joined it to ``txn`` writable.

    zope.sqlalchemy joins a registered session to its transaction manager's
    transaction when the session begins (``session.connection()`` does) and
    records it in ``_SESSION_STATE``; its data manager is then one of the
    transaction's resources.  Both are looked at: a session registered on
    another transaction manager (the thread-local one while pyramid_tm runs an
    explicit ``request.tm``) is in the state table but not in *this*
    transaction, and its row would commit -- or not -- with another one.
    """
    from zope.sqlalchemy.datamanager import _SESSION_STATE, STATUS_READONLY

    state = _SESSION_STATE.get(session)
    if state is None:
        raise SessionNotJoined(
            f"{describe(finder)}: the session is not joined to the transaction (it is not "
            "registered with zope.sqlalchemy), so a mail row written through it would never "
            f"be committed; nothing was queued.  Join it: {HOW_TO_JOIN}")
    resources = getattr(txn, "_resources", None)  # transaction's list of data managers
    if resources is not None and not any(getattr(r, "session", None) is session
                                         for r in resources):
        raise SessionNotJoined(
            f"{describe(finder)}: the session is joined to another transaction than the "
            "mailer's (registered with zope.sqlalchemy on another transaction manager), so "
            "the mail row would commit or abort with that one; nothing was queued.  "
            f"Register it on the mailer's: {HOW_TO_JOIN}")
    if state == STATUS_READONLY:
        raise SessionNotJoined(
            f"{describe(finder)}: the session is registered read-only with zope.sqlalchemy "
            "(initial_state='readonly'), so it cannot take the mail row; nothing was queued")


#: ``session.info`` key: what :func:`watch_rollbacks` watches in this session.
WATCHED = "pyramid_txmail.rows"


def watch_rollbacks(session, manager, prepared):
    """Drop ``prepared`` from ``manager`` if its row's session transaction rolls back.

    The row belongs to the innermost session transaction now open (a
    ``begin_nested()`` one, else the session's own) and so to each one it is
    nested in: a rollback of any of them takes it back.  One
    ``after_soft_rollback`` listener per session; entries of data managers that
    have left their transaction are forgotten as we go.
    """
    from sqlalchemy import event

    current = session.get_nested_transaction() or session.get_transaction()
    chain = []
    while current is not None:
        chain.append(current)
        current = current.parent
    watched = session.info.get(WATCHED)
    if watched is None:
        watched = session.info[WATCHED] = []
        event.listen(session, "after_soft_rollback", _rolled_back)
        event.listen(session, "after_commit", _forget_committed)
    watched[:] = [entry for entry in watched if not entry[1].left]
    watched.append((chain, manager, prepared))


def _rolled_back(session, previous):
    """``after_soft_rollback``: ``previous`` is the session transaction rolled back."""
    kept = []
    for chain, manager, prepared in session.info.get(WATCHED, ()):
        if manager.left:
            continue
        if any(t is previous for t in chain):
            manager.drop(prepared, "its row was rolled back with its SQLAlchemy "
                         "savepoint (session.begin_nested())" if previous.nested else
                         "its row was rolled back with the session's transaction")
        else:
            kept.append((chain, manager, prepared))
    session.info[WATCHED] = kept


def _forget_committed(session):
    """After the session's own COMMIT nothing can take those rows back: let go of
    them (a long-lived session would otherwise hold every message it sent)."""
    watched = session.info.get(WATCHED)
    if watched:
        session.info[WATCHED] = [entry for entry in watched
                                 if not entry[1].left and entry[0][-1].is_active]


def _database_of(url):
    """What names a database in a SQLAlchemy URL (driver and password aside)."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return backend, os.path.realpath(url.database) if url.database else url.database
    return backend, url.host, url.port or (5432 if backend == "postgresql" else None), \
        url.database


def _shown(url):
    return shown_url(url)


class SqlOutbox:
    """The queue outbox of ``mail.queue_url``: rows in the application's transaction.

    :meth:`write_now` runs in ``send`` (the mailer calls it before it records
    the message with the transaction's data manager); the data manager's vote
    and finish have nothing left to do.
    """

    def __init__(self, settings):
        from sqlalchemy.engine import make_url

        self.finder = settings.queue_session
        self.queue_url = make_url(settings.queue_url)
        self._seen = {}  # id -> the session engines' URLs already looked at
        self._databases = set()  # what they name, compared with queue_url once each

    def check_database(self, connection):
        """WARN (once per database) when the session writes elsewhere than ``mail.queue_url``.

        txmail-qp drains ``mail.queue_url``; a row in another database would wait
        there unseen.  Not an error: two spellings of one server (a pooler's host
        for the app, the server's own for txmail-qp) are a correct set-up that a
        URL comparison cannot tell from a wrong one.
        """
        url = connection.engine.url
        if self._seen.get(id(url)) is url:  # looked at already (URL's hash renders it)
            return
        self._seen[id(url)] = url  # kept, so that its id names no other URL
        database = _database_of(url)
        if database in self._databases:
            return
        self._databases.add(database)
        if database != _database_of(self.queue_url):
            log.warning("%s: the session writes the mail rows to %s, but mail.queue_url is "
                        "%s, which txmail-qp drains: unless both name the same database, "
                        "that mail is never sent; point mail.queue_url at the application's "
                        "database", describe(self.finder), _shown(url),
                        _shown(self.queue_url))

    def write_now(self, mailer, txn, prepared, manager=None):
        """INSERT ``prepared``'s row in the session's transaction; mark the session changed.

        ``manager`` (the transaction's data manager) is told if a rollback of
        the session transaction the row was written in takes the row back.
        """
        from zope.sqlalchemy import mark_changed

        from ..queue.sql import enqueue

        session = find_session(mailer, self.finder)
        connection = session.connection()  # begins the session: zope.sqlalchemy joins it now
        check_joined(session, txn, self.finder)
        self.check_database(connection)
        row = enqueue(connection, prepared.fromaddr, list(prepared.toaddrs), prepared.data,
                      message_id=prepared.message_id)
        # Raw SQL leaves a zope.sqlalchemy session "unchanged", and an unchanged one is
        # rolled back at the commit, the row with it.
        mark_changed(session, mailer.transaction_manager)
        if manager is not None:
            watch_rollbacks(session, manager, prepared)
        log.debug("wrote the queue row %s of %s in the application's transaction", row,
                  prepared.message_id)
        return row

    # The data manager's protocol: the row is already in the database transaction.
    def vote(self, messages):
        return None

    def finish(self, voted):
        pass

    def discard(self, voted):
        pass

    def committed(self, messages):
        for prepared in messages:
            log.info("queued %s from %s to %s (in the database)", prepared.message_id,
                     prepared.fromaddr, ", ".join(prepared.toaddrs))
        return [MailQueued(p.message_id, p.fromaddr, p.toaddrs) for p in messages]
