"""The sendmail time limit holds whatever the binary's children do (probe 11b, finding 1).

A wrapper script whose child hangs with stdin open: killing only the script
left the child holding the pipe, so writing a message larger than the pipe
buffer (about 64 KB) blocked for good -- past ``mail.data_timeout``, through
SIGTERM, with the message in neither spool nor log.  The binary now runs in
a session of its own, the whole group is killed at the deadline, and stdin
is written without ever blocking past it.  Waits here are generous
deadlines on *whether* the call ends, never on how fast.
"""
from __future__ import annotations

import os
import threading

import pytest

from pyramid_txmail.relay.result import TEMPORARY
from pyramid_txmail.relay.sendmail import SendmailTransport

from .test_daemon import wait_until

BIG = b"From: a@example.com\r\nTo: b@example.com\r\nMessage-ID: <big@example.com>\r\n" \
      b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 3000  # 234 KB: beyond any pipe buffer


def hanging_wrapper(tmp_path, exec_child=False):
    """A sendmail stand-in: a shell whose child hangs with stdin open; the child's pid."""
    path = tmp_path / "hang-sendmail"
    pidfile = tmp_path / "child.pid"
    path.write_text("#!/bin/sh\n"
                    f"sh -c 'echo $$ > {pidfile}; exec sleep 3600'\n")
    path.chmod(0o755)
    return str(path), pidfile


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def deliver_in_thread(transport, data):
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault(
        "result", transport.deliver("a@example.com", ["b@example.com"], data)), daemon=True)
    thread.start()
    thread.join(60)  # generous: the point is that it returns at all
    return thread, done.get("result")


@pytest.mark.parametrize("data", [BIG, b"Subject: small\r\n\r\nsmall\r\n"],
                         ids=["over-the-pipe-buffer", "small"])
def test_a_child_holding_stdin_cannot_outlast_the_time_limit(tmp_path, data):
    app, pidfile = hanging_wrapper(tmp_path)
    transport = SendmailTransport(app, ["{sendmail_app}", "-i", "-f", "{sender}"], timeout=1)
    thread, result = deliver_in_thread(transport, data)
    assert not thread.is_alive(), "deliver() still blocked long after the time limit"
    [one] = result.results
    assert one.status == TEMPORARY and one.exit_status is None
    assert "did not finish within 1 s" in one.text
    child = int(pidfile.read_text())
    wait_until(lambda: gone(child), what="the hanging child to be killed with its group")


def test_a_binary_that_exits_early_without_reading_is_judged_by_its_status(tmp_path):
    path = tmp_path / "refuse"
    path.write_text("#!/bin/sh\necho 'go away' >&2\nexit 67\n")
    path.chmod(0o755)
    transport = SendmailTransport(str(path), ["{sendmail_app}"], timeout=30)
    thread, result = deliver_in_thread(transport, BIG)
    assert not thread.is_alive()
    [one] = result.results
    assert one.exit_status == 67 and "go away" in one.text
