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
