"""Ctrl-C during ``txmail-queue retry --all-failed`` / ``purge`` over many messages says
how many were done out of how many (issue 15, outside probe finding 9: it said only
"interrupted").  Each message is moved or removed whole, so the count printed is
exactly what the spool shows afterwards."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from .claims_support import QUEUE, make_spool, write_ini

N = 4000
FILE = (b"From txmail-envelope-1 a@example.com b@example.org\nSubject: s\n"
        b"Message-ID: <m@example.org>\n\nbody\n")


def _dead_letters(tmp_path):
    spool = make_spool(tmp_path)
    then = time.time() - 30 * 86400
    for i in range(N):
        name = f"17961{i:05d}.M{i}P1Q{i}.vm"
        with open(os.path.join(spool.path, "failed", name), "wb") as out:
            out.write(FILE)
        with open(os.path.join(spool.path, "meta", name + ".json"), "w") as out:
            json.dump({"attempts": 1, "failed_at": then, "queued_at": then,
                       "reason": "550 no"}, out)
    return spool


def _count(spool, state):
    return len([n for n in os.listdir(os.path.join(spool.path, state))
                if not n.startswith(".")])


@pytest.mark.parametrize("argv, moved_to, past", [
    (["retry", "--all-failed"], "new", "retried"),
    (["purge", "--state", "failed", "--all"], None, "removed")])
def test_ctrl_c_says_how_many_of_how_many(tmp_path, argv, moved_to, past):
    spool = _dead_letters(tmp_path)
    ini = write_ini(tmp_path)
    proc = subprocess.Popen([QUEUE, ini, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _count(spool, "failed") == N and time.monotonic() < deadline:
        time.sleep(0.005)  # until it has begun; not a timing assertion
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    left = _count(spool, "failed")
    if left == 0:
        pytest.fail(f"it finished before the interruption: {out}{err}")  # make N larger
    assert proc.returncode == 130, err
    found = re.search(rf"interrupted: {past} (\d+) of {N}\b", err)
    assert found, err
    done = int(found.group(1))
    assert done == N - left, (done, left, err)
    if moved_to:
        assert _count(spool, moved_to) == done
    assert "Traceback" not in err


def test_ctrl_c_while_retrying_many_ids_says_how_many_of_how_many(tmp_path):
    """The ids given on the command line (here a shell's glob of 2,000 names)."""
    spool = _dead_letters(tmp_path)
    ini = write_ini(tmp_path)
    ids = sorted(os.listdir(os.path.join(spool.path, "failed")))[:2000]
    proc = subprocess.Popen([QUEUE, ini, "retry", *ids], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _count(spool, "new") == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    moved = _count(spool, "new")
    if moved == len(ids):
        pytest.fail(f"it finished before the interruption: {err}")
    assert proc.returncode == 130, err
    found = re.search(rf"interrupted: retried (\d+) of {len(ids)}\b", err)
    assert found, err
    assert int(found.group(1)) == moved == len(out.splitlines()), (found.group(1), moved)
