"""The names of a message's states, as ``txmail-queue`` takes and prints them.

Every backend reports its messages in these states (a spool's directory names,
which its operators already know from ``ls``), and people see the labels:
``status --json`` has one count per label, ``--state`` takes either.  A backend
may add states of its own (a spool's ``tmp`` and ``prepared``: writes not yet
committed); :data:`ALL_STATES` is every state any backend has.
"""
from __future__ import annotations

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
#: ``send()``, or as a dead letter's copy) and in the end deleted.
CREATED = "created"
GONE = "deleted"

#: Every move a message makes through a Maildir spool's directories: (from, to,
#: what moves it), in the order a message meets them.  The documentation's state
#: diagram is drawn from this table (docs/_ext/txmail_docs.py), and
#: tests/test_queue_lifecycle.py runs each move for real (a transaction, txmail-qp's
#: processor against an SMTP server, a crash's leftovers, txmail-queue) and checks
#: that the moves seen are exactly these.
SPOOL_LIFECYCLE = (
    (CREATED, "tmp", "send(), then tpc_vote: written, fsynced"),
    ("tmp", "prepared", "tpc_vote: renamed"),
    ("prepared", "new", "tpc_finish, after the database's commit"),
    ("prepared", GONE, "tpc_abort: the transaction did not commit"),
    ("new", "cur", "claimed by txmail-qp"),
    ("cur", "done", "every recipient accepted (2yz)"),
    ("done", GONE, "deleted in the background"),
    ("cur", "deferred", "a temporary failure (4yz, no connection)"),
    ("deferred", "cur", "claimed when its retry is due"),
    ("cur", "failed", "a permanent failure (5yz), or mail.max_queue_time: dead letter"),
    ("tmp", "failed", "a copy for the refused recipients when others accepted"),
    ("tmp", "new", "direct delivery's fallback: what the relay deferred"),
    ("cur", "new", "a dead processor's claim, after mail.claim_timeout"),
    ("tmp", GONE, "a crashed write, after mail.commit_grace"),
    ("prepared", "failed", "a crashed commit in doubt, after mail.commit_grace: dead letter"),
    ("failed", "new", "txmail-queue retry"),
    ("failed", GONE, "txmail-queue purge"),
)

#: The same for the SQL outbox: a row's ``state`` column (its
#: ``pyramid_txmail.queue.sql.schema.STATES``).  A rolled-back transaction never
#: shows its row, so the outbox has no ``tmp``/``prepared``; a copy for refused
#: recipients is a new row inserted as ``failed``.  Checked the same way.
OUTBOX_LIFECYCLE = (
    (CREATED, "queued", "the application's commit (the row is in its transaction)"),
    ("queued", "in_progress", "claimed by txmail-qp (a lease)"),
    ("in_progress", "delivered", "every recipient accepted (the body dropped)"),
    ("delivered", GONE, "deleted after mail.keep_delivered"),
    ("in_progress", "deferred", "a temporary failure (4yz, no connection)"),
    ("deferred", "in_progress", "claimed when its retry is due"),
    ("in_progress", "failed", "a permanent failure (5yz), or mail.max_queue_time: dead letter"),
    (CREATED, "failed", "a copy for the refused recipients when others accepted"),
    ("in_progress", "queued", "a dead processor's lease ran out"),
    ("failed", "queued", "txmail-queue retry"),
    ("failed", GONE, "txmail-queue purge"),
)
