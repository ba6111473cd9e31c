"""The names of a message's states, as ``txmail-queue`` takes and prints them.

Every backend reports its messages in these states (a spool's directory names,
which its operators already know from ``ls``), and people see the labels:
``status --json`` has one count per label, ``--state`` takes either.  A backend
may add states of its own (a spool's ``tmp`` and ``prepared``: writes not yet
committed); :data:`ALL_STATES` is every state any backend has.
"""
from __future__ import annotations

from typing import NamedTuple

#: Message states in pipeline order.
QUEUE_STATES = ("new", "cur", "deferred", "failed")
#: A spool's ``tmp/`` (uncommitted writes) and ``prepared/`` (in doubt) too.
ALL_STATES = QUEUE_STATES + ("tmp", "prepared")
#: What the states are called in ``status --json`` (and accepted as --state).
LABELS = {"tmp": "tmp", "prepared": "prepared", "new": "queued", "cur": "in_progress",
          "deferred": "deferred", "failed": "failed"}
ALIASES = {label: state for state, label in LABELS.items()}
#: States ``purge`` may remove from; new/ and cur/ are mail still being sent.
PURGEABLE = ("deferred", "failed", "tmp")


def state_of(text):
    """``queued`` → ``new``, ``in_progress`` → ``cur``; a directory name stays itself."""
    state = ALIASES.get(text, text)
    if state not in ALL_STATES:
        choices = ", ".join(sorted(set(ALL_STATES) | set(ALIASES)))
        raise ValueError(f"unknown state {text!r}; choose from: {choices}")
    return state


def purge_reason(state, older_than, purge_all):
    """Why ``purge`` must not run with these arguments, or None."""
    if state in ("new", "cur"):
        return (f"refusing to purge {state}/ ({LABELS[state]}): that is mail still being "
                "delivered; purge only deferred, failed or tmp")
    if older_than is None and not purge_all:
        return "say which messages: --older-than DURATION (e.g. 7d), or --all for every one"
    if state == "tmp" and purge_all:
        return ("refusing --all for tmp/: a committing transaction may be writing there "
                "right now; use --older-than (e.g. 1d) to clear files left by a crash")
    return None


#: The ends of the lifecycles below: a message's file or row is created (by a view's
#: ``send()``, direct delivery's fallback, or as a dead letter's copy) and in the end
#: deleted.
CREATED = "created"
GONE = "deleted"

_DM = "pyramid_txmail.mailer.datamanager.MailDataManager."
_DIRECT = "pyramid_txmail.mailer.delivery.DirectOutbox._fall_back"
_OUTCOMES = "pyramid_txmail.processor.outcomes.Outcomes."
_MAILDIR = "pyramid_txmail.queue.maildir."
_SQL = "pyramid_txmail.queue.sql."


class Move(NamedTuple):
    """One move of a message: from a state to another, and one cause of it.

    ``code`` names the function (``module.qualname``) that is on the call stack
    whenever this cause makes this move, and on no other cause's: the lifecycle
    test (tests/test_queue_lifecycle.py) attributes each move it sees to the
    innermost row whose ``code`` was on the stack, so two causes of one move are
    two rows, and the diagram's edge carries both.
    """

    source: str
    target: str
    cause: str
    code: str


#: Every move a message makes through a Maildir spool's directories, one row per
#: cause, in the order a message meets them.  The documentation's state diagram is
#: drawn from this table (docs/_ext/lifecycle_graph.py), and
#: tests/test_queue_lifecycle.py runs each cause for real (transactions, direct
#: delivery, txmail-qp's processor against an SMTP server, a crash's leftovers,
#: txmail-queue's retry, release and purge) and checks that the moves seen, with the
#: code that made them, are exactly these rows -- and that every function of the
#: queue backends and scripts that renames or deletes a file ran in it.
SPOOL_LIFECYCLE = (
    Move(CREATED, "tmp", "send() in a transaction: written, fsynced at tpc_vote",
         _MAILDIR + "spool.Spool.prepare"),
    Move(CREATED, "tmp", "direct delivery's fallback: what the relay deferred or refused",
         _DIRECT),
    Move(CREATED, "tmp", "txmail-qp: a copy for the refused recipients when others accepted",
         _OUTCOMES + "_bury"),
    Move("tmp", GONE, "a write that failed (disk full, I/O error): removed at once",
         _MAILDIR + "spool.Spool.discard_tmp"),
    Move("tmp", "prepared", "tpc_vote: renamed", _MAILDIR + "spool.Spool.prepare"),
    Move("prepared", "new", "tpc_finish, after the database's commit", _DM + "tpc_finish"),
    Move("prepared", GONE, "tpc_abort: the transaction did not commit", _DM + "tpc_abort"),
    Move("new", "cur", "claimed by txmail-qp", _MAILDIR + "spool.Spool.claim"),
    Move("cur", "done", "every recipient accepted (2yz)", _MAILDIR + "spool.Spool.retire"),
    Move("done", GONE, "deleted by the pass's reaper threads", _MAILDIR + "backend._reap_all"),
    Move("done", GONE, "deleted at once when retired outside a pass (the IQueue API)",
         _MAILDIR + "backend.MaildirQueue.retire"),
    Move("done", GONE, "left by a crash: deleted by the next pass's housekeeping",
         _MAILDIR + "spool.Spool.reap"),
    Move("cur", "deferred", "a temporary failure (4yz, no connection)",
         _OUTCOMES + "_defer"),
    Move("deferred", "cur", "claimed when its retry is due", _MAILDIR + "spool.Spool.claim"),
    Move("cur", "failed", "a permanent failure (5yz), or mail.max_queue_time: dead letter",
         _OUTCOMES + "_bury"),
    Move("cur", "failed", "poison (an unreadable or malformed file): dead letter",
         _OUTCOMES + "_bury_poison"),
    Move("cur", "failed", "a corrupt state file (who already got it is unknown): dead letter",
         _OUTCOMES + "_bury_unknown_state"),
    Move("tmp", "failed", "txmail-qp: a copy for the refused recipients when others accepted",
         _OUTCOMES + "_bury"),
    Move("tmp", "failed", "direct delivery: a copy for the refused recipients",
         _DIRECT),
    Move("tmp", "new", "direct delivery's fallback: what the relay deferred", _DIRECT),
    Move("cur", "new", "a dead processor's claim, after mail.claim_timeout (txmail-qp, or "
         "txmail-queue release --stale)", _MAILDIR + "spool.Spool.recover_stale"),
    Move("cur", "new", "txmail-queue release", _MAILDIR + "spool_admin.release"),
    Move("tmp", GONE, "a crashed write, after mail.commit_grace",
         _MAILDIR + "recovery._clean_tmp"),
    Move("tmp", GONE, "txmail-queue purge --state tmp", _MAILDIR + "spool_admin.purge"),
    Move("prepared", "new", "in doubt after mail.commit_grace: mail.commit_check said "
         "it committed", _MAILDIR + "recovery._resolve_prepared"),
    Move("prepared", GONE, "in doubt after mail.commit_grace: mail.commit_check said "
         "it did not commit", _MAILDIR + "recovery._resolve_prepared"),
    Move("prepared", "failed", "in doubt after mail.commit_grace, no mail.commit_check "
         "or it could not tell: dead letter", _MAILDIR + "recovery._resolve_prepared"),
    Move("deferred", "new", "txmail-queue retry", _MAILDIR + "spool_admin.retry"),
    Move("failed", "new", "txmail-queue retry", _MAILDIR + "spool_admin.retry"),
    Move("deferred", GONE, "txmail-queue purge --state deferred",
         _MAILDIR + "spool_admin.purge"),
    Move("failed", GONE, "txmail-queue purge", _MAILDIR + "spool_admin.purge"),
)

#: The same for the SQL outbox: a row's ``state`` column (its
#: ``pyramid_txmail.queue.sql.schema.STATES``).  A rolled-back transaction never
#: shows its row, so the outbox has no ``tmp``/``prepared``; a copy for refused
#: recipients is a new row inserted as ``failed``.  Checked the same way.
OUTBOX_LIFECYCLE = (
    Move(CREATED, "queued", "send(): the row is in the application's transaction",
         _SQL + "store.enqueue"),
    Move("queued", "in_progress", "claimed by txmail-qp (a lease)",
         _SQL + "backend.SQLQueue._claim_batch"),
    Move("in_progress", "delivered", "every recipient accepted (the body dropped)",
         _SQL + "backend.SQLQueue._retire_one"),
    Move("in_progress", GONE, "every recipient accepted, mail.keep_delivered = 0",
         _SQL + "backend.SQLQueue._retire_one"),
    Move("delivered", GONE, "deleted after mail.keep_delivered",
         _SQL + "backend.SQLQueue.reap_delivered"),
    Move("in_progress", "deferred", "a temporary failure (4yz, no connection)",
         _SQL + "backend.SQLQueue.defer"),
    Move("deferred", "in_progress", "claimed when its retry is due",
         _SQL + "backend.SQLQueue._claim_batch"),
    Move("in_progress", "failed", "a permanent failure (5yz), or mail.max_queue_time: "
         "dead letter", _OUTCOMES + "_bury"),
    Move("in_progress", "failed", "poison (an unreadable row): dead letter",
         _OUTCOMES + "_bury_poison"),
    Move("in_progress", "failed", "a corrupt state record (who already got it is unknown): "
         "dead letter", _OUTCOMES + "_bury_unknown_state"),
    Move(CREATED, "failed", "a copy for the refused recipients when others accepted",
         _SQL + "backend.SQLQueue.bury_copy"),
    Move("in_progress", "queued", "a dead processor's lease ran out (txmail-qp, or "
         "txmail-queue release --stale)", _SQL + "admin.SqlAdmin.release_stale"),
    Move("in_progress", "queued", "txmail-queue release", _SQL + "admin.SqlAdmin.release_claim"),
    Move("in_progress", "queued", "a pass stopped before handing its claim out: given back",
         _SQL + "backend.SQLQueue.unclaim"),
    Move("deferred", "queued", "txmail-queue retry", _SQL + "admin.SqlAdmin.retry"),
    Move("failed", "queued", "txmail-queue retry", _SQL + "admin.SqlAdmin.retry"),
    Move("deferred", GONE, "txmail-queue purge --state deferred", _SQL + "admin.SqlAdmin.purge"),
    Move("failed", GONE, "txmail-queue purge", _SQL + "admin.SqlAdmin.purge"),
)
