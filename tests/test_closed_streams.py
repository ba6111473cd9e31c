"""txmail-qp and txmail-queue started with stdout/stderr closed (``>&-``, as some process
managers and cron wrappers do): a clean run exits 0, and nothing they print lands in a
file or socket that took the closed descriptor's number (outside probe of issue 14:
a clean pass exited 1 on ``sys.stdout.flush()`` with stdout closed)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .test_qp import queue, write_ini

BIN = os.path.dirname(sys.executable)


def closed(*command, close=">&-"):
    """``command`` with the given descriptors closed by the shell."""
    return ["bash", "-c", f'exec "$@" {close}', "closed", *command]


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("close", [">&-", ">&- 2>&-"])
def test_a_pass_with_closed_output_exits_0_and_delivers(tmp_path, smtp_server, processes,
                                                        close):
    ini = write_ini(tmp_path, smtp_server, extra=f"mail.processes = {processes}\n")
    queue(tmp_path, ["a@example.org"])
    done = subprocess.run(closed(f"{BIN}/txmail-qp", ini, "--no-app", "-v", close=close),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(smtp_server.messages) == 1
    for message in smtp_server.messages:  # nothing printed went into the session
        assert b"txmail-qp" not in bytes(message.data)


def test_a_daemon_with_closed_stdout_stops_cleanly(tmp_path, smtp_server):
    ini = write_ini(tmp_path, smtp_server, extra="mail.processes = 2\n")
    queue(tmp_path, ["a@example.org"])
    proc = subprocess.Popen(closed(f"{BIN}/txmail-qp", ini, "--no-app", "--daemon"),
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not smtp_server.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert smtp_server.messages
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_txmail_queue_with_closed_stdout_exits_0(tmp_path):
    ini = write_ini(tmp_path)
    queue(tmp_path, ["a@example.org"])
    for args in (["status"], ["list"], ["--help"]):
        done = subprocess.run(closed(f"{BIN}/txmail-queue", *([ini] if args[0] != "--help"
                                                               else []), *args),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (args, done.stderr)
