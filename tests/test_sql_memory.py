"""Peak memory of a 50 MiB message on every leg through the SQL outbox.

Each leg runs in a process of its own, measured as txmail-qp's is
(:data:`tests.envelope_support.MEASURE`: the child's peak RSS); what counts
is how much the peak grows from a 256 KiB message to a 50 MiB one, so the
interpreter and the drivers are not counted.  The ceilings are wide
(streamed legs: a quarter of the message, where one 1 MiB chunk at a time is
what they hold; the bytes leg: the message it was handed plus half of it).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .envelope_support import MEASURE
from .reliability import record
from .sql_support import db_url  # noqa: F401

pytestmark = pytest.mark.reliability

LEG = os.path.join(os.path.dirname(__file__), "sql_memory_leg.py")
BIG = 50 * 1024 * 1024
SMALL = 256 * 1024


def _peak_kib(url, leg, size):
    done = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, LEG, url, leg,
                           str(size)], capture_output=True, text=True, timeout=600)
    returncode, peak = map(int, done.stdout.split()[-2:])
    assert returncode == 0, done.stderr
    return peak


def _grew(url, write, size):
    """Peak growth (octets) of the write leg and of the read leg for ``size``."""
    wrote = _peak_kib(url, write, size)
    read = _peak_kib(url, "read", size)
    return wrote, read


@pytest.mark.parametrize("write, ceiling", [("write-stream", 0.25), ("write-bytes", 1.5)])
def test_a_50_mib_message_stays_within_its_memory_ceiling_on_every_leg(db_url, write,
                                                                       ceiling):
    small_write, small_read = _grew(db_url, write, SMALL)
    big_write, big_read = _grew(db_url, write, BIG)
    write_growth = (big_write - small_write) * 1024 / BIG
    read_growth = (big_read - small_read) * 1024 / BIG
    database = db_url.split(":", 1)[0]
    print(f"{database} {write}: peak grew {write_growth:.1%} of 50 MiB writing, "
          f"{read_growth:.1%} reading")
    record("sql", f"A 50 MiB message through the SQL outbox ({database}, {write})",
           messages=1, delivered=1,
           detail=f"peak RSS growth over a 256 KiB message: {write_growth:.1%} of the "
                  f"message size writing, {read_growth:.1%} reading")
    assert write_growth < ceiling, f"{write} grew {write_growth:.0%} of the message"
    assert read_growth < 0.25, f"reading grew {read_growth:.0%} of the message"
