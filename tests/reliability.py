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

Property tests (hypothesis) run in one of two profiles, chosen by
``TXMAIL_HYPOTHESIS`` and loaded by tests/conftest.py before any test module:

- ``gate`` (the default: ``make test``, ``make reliability``): derandomized --
  each test's examples come from a hash of its own code, so every run on every
  clone tries the same ones -- and no example database, so nothing a previous
  run left behind changes what runs.  Cases found earlier run first, as
  explicit ``@example``s (tests/badinput_pinned.py).  A red gate is a
  regression, never a lucky or unlucky draw.
- ``explore`` (``make explore``, tests/explore.py): random seeds, and a
  database under test-artifacts/explore that replays what it found until it
  is pinned.  Its findings become pinned examples and fixes.
"""
from __future__ import annotations

import json
import os
import threading

LONG = os.environ.get("TXMAIL_RELIABILITY", "quick") == "long"
PROFILE = os.environ.get("TXMAIL_HYPOTHESIS", "gate")
EXPLORE_DB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "test-artifacts", "explore", "hypothesis-db")
_lock = threading.Lock()


def load_hypothesis_profile():
    """Register the ``gate`` and ``explore`` profiles and load ``$TXMAIL_HYPOTHESIS``'s.

    Called from tests/conftest.py, so that it comes before every ``settings()``
    in a test module (a settings object takes its defaults when it is made).
    """
    from hypothesis import settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    settings.register_profile("gate", derandomize=True, database=None, print_blob=True)
    settings.register_profile("explore", derandomize=False, print_blob=True,
                              database=DirectoryBasedExampleDatabase(EXPLORE_DB))
    if PROFILE not in ("gate", "explore"):
        raise ValueError(f"TXMAIL_HYPOTHESIS={PROFILE!r}: use 'gate' or 'explore'")
    settings.load_profile(PROFILE)
    _import_library()


def _import_library():
    """Import every pyramid_txmail module now.

    hypothesis also draws string and number constants found in the project's
    own modules, from those imported when it draws.  Imported up front, the
    set is the same whatever the order of the tests or a thread's timing, so a
    derandomized run on the same commit draws the same examples.
    """
    import importlib
    import pkgutil

    import pyramid_txmail

    for module in pkgutil.walk_packages(pyramid_txmail.__path__, "pyramid_txmail."):
        try:
            importlib.import_module(module.name)
        except ImportError:  # an optional extra that is not installed: never imported
            pass


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
