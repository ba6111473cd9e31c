"""Shared by the reliability suite: how many runs, and where the counts go.

Every reliability scenario runs in two sizes.  ``make test`` runs the quick
one; ``make reliability`` sets ``TXMAIL_RELIABILITY=long`` and runs the long
one, with ``TXMAIL_RELIABILITY_OUT`` naming a JSON-lines file that
:func:`record` appends one line per scenario to.  ``tests/reliability_report.py``
turns that file into docs/RELIABILITY.md.

A scenario counts, over all its runs:

- ``messages``: messages that had to arrive (committed, accepted for
  delivery);
- ``delivered``: of those, how many arrived (each counted once);
- ``duplicated``: extra copies that arrived (a message at a recipient twice
  counts one);
- ``lost``: messages neither delivered, nor waiting for a retry, nor in the
  dead-letter folder with a reason -- must be 0;
- ``held``: messages kept on purpose instead of delivered (deferred for a
  retry, dead-lettered with a reason, or refused before the commit);
- ``bad_inputs``: bad or random inputs tried (property-based tests).

The test itself asserts what must hold (``lost == 0`` and its scenario's own
rules); :func:`record` only reports.
"""
from __future__ import annotations

import json
import os
import threading

LONG = os.environ.get("TXMAIL_RELIABILITY", "quick") == "long"
_lock = threading.Lock()


def runs(quick, long):
    """The number of runs (or examples) for this size of the suite."""
    return long if LONG else quick


def record(group, scenario, *, runs=1, messages=0, delivered=0, duplicated=0, lost=0,
           held=0, bad_inputs=0, detail=""):
    """Append one scenario's counts to ``$TXMAIL_RELIABILITY_OUT`` (if set)."""
    out = os.environ.get("TXMAIL_RELIABILITY_OUT")
    if not out:
        return
    row = {"group": group, "scenario": scenario, "runs": runs, "messages": messages,
           "delivered": delivered, "duplicated": duplicated, "lost": lost, "held": held,
           "bad_inputs": bad_inputs, "detail": detail,
           "size": "long" if LONG else "quick"}
    with _lock, open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
