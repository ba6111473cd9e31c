"""Which transaction a ``send`` joins -- and a clear error when there is none.

Mail handed to the mailer must never be lost without a word.  transaction's
thread-local manager quietly *begins* a transaction when asked for the
current one; a script that sends and exits would then return a Message-ID
and deliver nothing.  So a send never begins a transaction: it joins the one
that is active, or raises :class:`NoTransaction` saying what to do.  A
transaction that has already committed (the send runs in an after-commit
hook, as plugins that mail on "resource changed" events do) raises
:class:`TransactionEnded` naming ``send_immediately`` and a new transaction,
instead of transaction's "expected txn status 'Active' or 'Doomed', but it's
'Committed'".
"""
from __future__ import annotations

import threading

import transaction

# transaction's Status values (strings; the class itself is private).
ACTIVE, DOOMED = "Active", "Doomed"
COMMITTING, COMMITTED, COMMITFAILED = "Committing", "Committed", "Commit failed"

#: What to do instead, shared by the messages below.
SEND_NOW = "use send_immediately(message) to send it now, outside any transaction"


class NoTransaction(RuntimeError):
    """``send`` was called with no active transaction to join (nothing was sent)."""


class TransactionEnded(NoTransaction):
    """``send`` was called when its transaction had already committed (or failed to)."""


def _has_transaction(manager):
    """Whether ``manager`` has begun a transaction (without beginning one).

    transaction's managers keep it in ``_txn``; a thread-local manager wraps
    one as ``manager``.  Unknown managers are trusted.
    """
    inner = getattr(manager, "manager", manager)
    return getattr(inner, "_txn", True) is not None


def _no_transaction(manager, request):
    from pyramid.threadlocal import get_current_request

    current = get_current_request()
    if request is not None:
        if current is not request:
            return NoTransaction(
                "request.mailer.send() found no active transaction on request.tm in this "
                f"thread ({threading.current_thread().name}), so nothing was sent: a "
                "transaction is bound to the thread that began it, and this is not the "
                "thread Pyramid is handling the request in (pyramid_tm's transaction "
                "lives there).  Send from the request's thread, or begin one here with "
                f"`with request.tm:` (the mail goes when it commits), or {SEND_NOW}.")
        return NoTransaction(
            "request.mailer.send() needs an active transaction and request.tm has none, "
            "so nothing was sent: pyramid_tm is not managing this request (see "
            "tm.activate_hook) or has already ended its transaction (e.g. in a finished "
            f"callback).  Wrap the send in `with request.tm:`, or {SEND_NOW}.")
    if current is not None and getattr(current, "tm", manager) is not manager:
        how = ("this is a request: use request.mailer (or get_mailer(request)), which "
               "joins request.tm -- this mailer (e.g. registry['mailer'] = "
               "Mailer.from_settings(...)) joins the thread-local transaction.manager, "
               "and pyramid_tm uses another (tm.manager_hook)")
    elif manager is transaction.manager:
        how = ("wrap it in `with transaction.manager:`, or call transaction.begin() before "
               "and transaction.commit() after")
        if current is not None:
            how = "in a request use request.mailer (it joins request.tm); else " + how
    else:
        how = f"wrap it in `with transaction_manager:` ({manager!r})"
    return NoTransaction(
        "a transactional send (send, send_to_queue or send_sendmail) needs an active "
        "transaction and none was begun, so nothing was "
        f"sent (mail is only sent when its transaction commits): {how}; or {SEND_NOW}.")


def _ended(txn, request):
    what = {COMMITTED: "has already committed",
            COMMITTING: "is committing",
            COMMITFAILED: "failed to commit and must be aborted"}.get(
                txn.status, f"is {txn.status}")
    where = "request.tm" if request is not None else "its transaction manager"
    return TransactionEnded(
        "mail was handed to the mailer (send, send_to_queue or send_sendmail) when the "
        f"transaction of {where} {what} (e.g. from an "
        "after-commit hook), so it cannot take more mail and nothing was sent: "
        f"{SEND_NOW}, or send inside a new transaction -- `with request.tm:` once "
        "pyramid_tm has finished the request, or, inside an after-commit hook, a manager "
        "of its own: `with transaction.TransactionManager(explicit=True) as tm: "
        "get_mailer(request.registry, tm).send(message)`.")


def joinable_transaction(manager, request=None):
    """The active (or doomed) transaction of ``manager`` that a send may join.

    Never begins one.  Raises :class:`NoTransaction` when there is none and
    :class:`TransactionEnded` when it has committed, is committing or failed.
    """
    if not _has_transaction(manager):
        raise _no_transaction(manager, request)
    try:
        txn = manager.get()
    except transaction.interfaces.NoTransaction:
        raise _no_transaction(manager, request) from None
    if txn.status not in (ACTIVE, DOOMED):
        raise _ended(txn, request)
    return txn
