"""Keep the demo's queue drained: ``txmail-qp INI --daemon`` as a child process.

The daemon delivers new mail as it arrives (the SQL outbox: LISTEN/NOTIFY on
PostgreSQL, polling on SQLite; a spool: inotify) and stops cleanly on
SIGTERM, finishing the message in flight.  :mod:`demo_app.run` uses
``start()``, ``stop()``, ``describe()`` and ``problem()``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys


class QueueRunnerError(Exception):
    """txmail-qp cannot be found or run."""


def find_qp():
    """``txmail-qp`` from the same environment as this Python."""
    candidate = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("txmail-qp")
    if found:
        return found
    raise QueueRunnerError("txmail-qp not found next to " + sys.executable +
                           ": install the package in this environment "
                           "(pip install -e '.[demo]').")


def terminate(process, grace=5.0, sig=signal.SIGTERM):
    """Ask ``process`` to stop with ``sig``; kill it if it has not stopped after ``grace`` s."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class QueueDaemon:
    """``txmail-qp INI --daemon`` as one child process, stopped with SIGTERM."""

    def __init__(self, qp, ini, env):
        self.command = [qp, ini, "--daemon"]
        self.env = env
        self.process = None

    def describe(self):
        return " ".join([os.path.basename(self.command[0])] + self.command[1:])

    def start(self):
        self.process = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL,
                                        start_new_session=True)

    def failed(self):
        """The exit status if the daemon ended (it should run until stopped), else None."""
        return None if self.process is None else self.process.poll()

    def problem(self):
        code = self.failed()
        return None if code is None else f"txmail-qp --daemon exited with status {code}"

    def stop(self, grace=10.0):
        if self.process is not None:
            terminate(self.process, grace)


def start_queue_processor(qp, ini, env):
    """Start ``txmail-qp INI --daemon``; return its runner."""
    runner = QueueDaemon(qp, ini, env)
    try:
        runner.start()
    except OSError as exc:
        raise QueueRunnerError(f"cannot start {qp}: {exc}") from None
    return runner
