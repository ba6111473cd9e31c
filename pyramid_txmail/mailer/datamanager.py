"""The transaction data manager: mail goes out only if the transaction commits.

One :class:`MailDataManager` per delivery and transaction holds the prepared
messages.  In protocol order:

- ``tpc_vote`` hands them to the outbox, which for the queue writes and
  fsyncs each into the spool's ``tmp/`` -- a full disk fails the vote and so
  aborts the whole transaction, before any database has committed (we sort
  before zope.sqlalchemy's ``~sqlalchemy`` key, so we vote first).
- ``tpc_finish`` publishes them (rename into ``new/``).
- ``abort`` / ``tpc_abort`` drop them and remove any ``tmp/`` file.
- A savepoint rollback drops the messages sent after that savepoint.  A
  savepoint taken *before* our first send aborts us outright and removes us
  from the transaction (transaction's ``AbortSavepoint``): such a manager has
  *left* and must never take another message -- it would never vote, and its
  after-commit hook would report mail nobody wrote.  :func:`joined_manager`
  is how every caller finds "the data manager of this transaction".

Work that must not happen inside the commit (SMTP for direct delivery,
event subscribers) runs from an after-commit hook.

A transaction that holds mail and is neither committed nor aborted -- the
process exits, or the transaction is dropped -- would lose that mail without
a word; a finalizer logs an ERROR naming the Message-IDs instead.
"""
from __future__ import annotations

import sys
import weakref

import transaction
from transaction.interfaces import IDataManagerSavepoint, ISavepointDataManager
from zope.interface import implementer

from ..util.printable import get_logger

log = get_logger("pyramid_txmail.datamanager")


def write_all(messages, write, discard, where):
    """An outbox's vote: ``write`` each message, all or none.

    A failure discards what was already written and raises an ``OSError``
    naming ``where`` (the directory) and saying that the transaction is
    aborted -- the vote fails, so nothing commits.  Any other exception
    (KeyboardInterrupt, a worker's SystemExit) discards them too and goes on
    as it is: the transaction aborts, and a file left in ``prepared/`` would
    later read as a process that died in the commit.
    """
    written = []
    try:
        for prepared in messages:
            written.append(write(prepared))
    except OSError as exc:
        discard(written)
        raise OSError(exc.errno, f"cannot write {where}: {exc.strerror}; the transaction "
                      "is aborted") from exc
    except BaseException:
        discard(written)
        raise
    return written


def _report_unsent(messages):
    """The finalizer of a data manager (run when it is collected, or at exit)."""
    if messages:
        log.error("%d message(s) handed to the mailer were never sent: their transaction "
                  "was neither committed nor aborted before it was dropped or the process "
                  "exited (%s). Commit it: `with transaction.manager:` or "
                  "transaction.commit() in a script, pyramid_tm in a request",
                  len(messages), ", ".join(p.message_id for p in messages))


def _ids(messages):
    return ", ".join(p.message_id for p in messages)


#: Who aborted us.  ``transaction.begin()`` with a transaction still open
#: aborts it first, and a savepoint taken before our first send aborts us when
#: it is rolled back; a data manager cannot tell those from an explicit abort
#: except by its caller (transaction has no hook for either: synchronizers
#: only hear of the new transaction, after the abort), so we look up the stack.
_CALLERS = {transaction.TransactionManager.begin.__code__: "begin"}
try:  # private to transaction: without it, such a rollback is logged as an abort
    from transaction._transaction import AbortSavepoint

    _CALLERS[AbortSavepoint.rollback.__code__] = "savepoint"
except (ImportError, AttributeError):  # pragma: no cover
    pass


def _aborted_by():
    frame = sys._getframe(1)
    for _ in range(12):  # e.g. begin -> Transaction.abort -> ... -> abort -> here
        if frame is None:
            return None
        if frame.f_code in _CALLERS:
            return _CALLERS[frame.f_code]
        frame = frame.f_back
    return None


def _report_dropped(messages, how):
    """Dropping mail with its transaction is the design -- but never without a word.

    An abort the code asked for (``with transaction.manager:`` leaving on an
    exception, ``transaction.abort()``, pyramid_tm after an error view, a
    savepoint rollback) is INFO; an abort nobody asked for --
    ``transaction.begin()`` while one holding mail is still open, as a
    script's loop that forgot to commit does -- is a WARNING saying so.
    """
    if not messages:
        return
    caller = _aborted_by() if how == "aborted" else None
    if caller == "begin":
        log.warning("%d message(s) handed to the mailer were dropped: transaction.begin() "
                    "was called while their transaction was still open, and transaction "
                    "aborts it then (%s). Commit first (transaction.commit(), or "
                    "`with transaction.manager:` around each unit of work)",
                    len(messages), _ids(messages))
    elif caller == "savepoint":
        _report_rollback(messages)
    else:
        log.info("%d message(s) dropped because their transaction %s, as designed (%s)",
                 len(messages), how, _ids(messages))


def _report_rollback(messages):
    log.info("%d message(s) dropped by a savepoint rollback, as designed: they were sent "
             "after the savepoint (%s)", len(messages), _ids(messages))


class ManagerLeft(RuntimeError):
    """A message was handed to a data manager that has left its transaction."""


def joined_manager(txn, key, make):
    """The data manager stored under ``key`` in ``txn`` -- if it is still joined.

    One manager per outbox and transaction is kept with ``txn.set_data``; but a
    rollback to a savepoint older than the manager aborts it and removes it
    from the transaction, while ``txn.data(key)`` still hands it back.  Then,
    and the first time, ``make()`` builds a fresh manager that the caller
    joins (and stores here).  Returns ``(manager, is_new)``.
    """
    try:
        manager = txn.data(key)
    except KeyError:
        manager = None
    if manager is not None and not manager.left:
        return manager, False
    manager = make()
    txn.set_data(key, manager)
    return manager, True


@implementer(ISavepointDataManager)
class MailDataManager:
    def __init__(self, outbox, transaction_manager, on_committed):
        self.outbox = outbox
        self.transaction_manager = transaction_manager
        self.on_committed = on_committed
        #: Changed in place only: the finalizer holds this list (not ``self``).
        self.messages = []
        self.voted = None  # the outbox's handle for what tpc_vote wrote
        #: What tpc_vote handed to the outbox: what tpc_finish then published.
        self.voting = []
        #: What was really published at tpc_finish (the after-commit hook and the
        #: toolbar's send log report these, never the pending list).
        self.published = []
        #: Aborted, committed or removed by a savepoint rollback: takes no more mail.
        self.left = False
        #: Messages whose row a rollback outside our savepoints took back (the SQL
        #: outbox and ``session.begin_nested()``): never voted, never reported.
        self.dropped = []
        self._unsent = weakref.finalize(self, _report_unsent, self.messages)

    def add(self, prepared):
        if self.left:  # a bug of ours if it happens: never lose the mail quietly
            raise ManagerLeft(
                f"{prepared.message_id} was handed to a mail data manager that has "
                "already left its transaction (aborted, committed, or removed by a "
                "savepoint rollback), so it would never be sent; nothing was sent")
        self.messages.append(prepared)

    def drop(self, prepared, why):
        """Forget ``prepared``: what it was written into was rolled back (``why``)."""
        if self.left or all(p is not prepared for p in self.messages):
            return
        if all(p is not prepared for p in self.dropped):
            self.dropped.append(prepared)
            log.info("%s dropped: %s, as designed", prepared.message_id, why)

    def abort(self, txn):
        # Also a rollback to a savepoint older than us: transaction removes us
        # from the transaction right after this call.
        self.left = True
        _report_dropped(self.messages, "aborted")
        self._discard()

    def tpc_begin(self, txn):
        pass

    def commit(self, txn):
        pass

    def tpc_vote(self, txn):
        self.voting = [p for p in self.messages if all(p is not d for d in self.dropped)] \
            if self.dropped else list(self.messages)
        self.voted = self.outbox.vote(self.voting)

    def tpc_finish(self, txn):
        self.outbox.finish(self.voted)
        self.voted = None
        self.published = self.voting
        self.left = True

    def tpc_abort(self, txn):
        self.left = True
        _report_dropped(self.messages, "failed to commit")
        self._discard()

    def sortKey(self):
        return "!pyramid_txmail:%d" % id(self)

    def savepoint(self):
        return MailSavepoint(self)

    def after_commit(self, status):
        """After-commit hook: hand the committed messages on (never raises)."""
        if not status:
            return
        messages = list(self.published)
        # published is what was voted, taken from messages: when nothing was dropped
        # and the counts agree, every message was published (no quadratic search)
        unpublished = [p for p in self.messages if all(p is not q for q in messages)
                       and all(p is not d for d in self.dropped)] \
            if self.dropped or len(messages) != len(self.messages) else []
        if unpublished:  # never expected: say so rather than report them as sent
            log.error("%d message(s) were handed to the mailer but never written by the "
                      "commit (%s): not reported as sent", len(unpublished),
                      _ids(unpublished))
        self._done()
        if not messages:  # e.g. we left at a savepoint rollback: nothing was written
            return
        try:
            self.on_committed(messages)
        except Exception:
            log.exception("after-commit mail handling failed for %d message(s)",
                          len(messages))

    def _discard(self):
        if self.voted is not None:
            self.outbox.discard(self.voted)
            self.voted = None
        self._done()

    def _done(self):
        """Committed or aborted: nothing left that could be lost unreported."""
        self.messages.clear()
        self.dropped.clear()
        self._unsent.detach()


@implementer(IDataManagerSavepoint)
class MailSavepoint:
    def __init__(self, manager):
        self.manager = manager
        self.length = len(manager.messages)

    def rollback(self):
        dropped = self.manager.messages[self.length:]
        if dropped:
            _report_rollback(dropped)
        del self.manager.messages[self.length:]
