"""Shared by the claim and spool-file tests: an ini, queued mail, the real console scripts."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from pyramid_txmail.queue.maildir.spool import Spool

BIN = os.path.dirname(sys.executable)
QP = os.path.join(BIN, "txmail-qp")
QUEUE = os.path.join(BIN, "txmail-queue")
FROM = "sender@example.org"
#: Generous bound for a subprocess that must end by itself (a hang fails the test).
PROC_TIMEOUT = 60


def write_ini(tmp_path, server=None, extra=(), spool=None, name="app.ini"):
    """An ini for --no-app runs; ``extra`` are more ``mail.key = value`` lines."""
    lines = ["[app:main]", "use = egg:pyramid_txmail",
             f"mail.queue_path = {spool or tmp_path / 'spool'}", "mail.timeout = 10"]
    if server is not None:
        lines += [f"mail.host = {server.host}", f"mail.port = {server.port}"]
    path = tmp_path / name
    path.write_text("\n".join(lines + list(extra)) + "\n")
    return str(path)


def message(msgid, to="a@example.org"):
    return (f"From: {FROM}\nTo: {to}\nSubject: hello\nMessage-ID: {msgid}\n\n"
            f"The body of {msgid}.\n").encode()


def queue(spool, msgid, toaddrs=("a@example.org",)):
    """Write and commit one message; returns its file name."""
    name = spool.write_tmp(FROM, list(toaddrs), message(msgid, toaddrs[0]))
    spool.commit_tmp([name])
    return name


def make_spool(tmp_path):
    return Spool(str(tmp_path / "spool"))


def run(*argv, cwd=None, timeout=PROC_TIMEOUT):
    """A console script to its end (``subprocess.TimeoutExpired`` if it hangs)."""
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def start_qp(ini, log_path, *args):
    """``txmail-qp INI --no-app`` in the background, its output in ``log_path``."""
    with open(log_path, "wb") as out:
        return subprocess.Popen([QP, ini, "--no-app", *args], stdout=out,
                                stderr=subprocess.STDOUT)


def wait_until(predicate, what, limit=PROC_TIMEOUT):
    """Set-up only (never an assertion about speed): wait for a state to be reached."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def copies(server, msgid):
    """How many copies of ``msgid`` the server stored."""
    with server.handler.lock:
        return sum(1 for m in server.messages if msgid.encode() in m.data)
