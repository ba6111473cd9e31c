"""Keep the demo's spool drained: ``txmail-qp --daemon`` when it has it, else a loop.

``txmail-qp INI`` makes one pass and exits (the cron way).  A ``txmail-qp``
whose ``--help`` lists ``--daemon`` keeps running and delivers new mail as it
arrives; the demo then starts it once (:class:`QueueDaemon`).  Otherwise it
runs ``txmail-qp INI`` once a second (:class:`QueueLoop`).  Both have the
same face for :mod:`demo_app.run`: ``start()``, ``stop()``, ``describe()``,
``problem()`` and ``passes``.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading


class QueueRunnerError(Exception):
    """txmail-qp cannot be found or run."""


# txmail-qp's summary of a pass that found nothing to do: once a second is noise.
IDLE_PASS = re.compile(rb"txmail-qp pass over .*: sent=0 deferred=0 failed=0 skipped=0 "
                       rb"recovered=0 errors=0\s*$")


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


def has_daemon_mode(qp, env):
    """True when ``qp --help`` offers ``--daemon``."""
    try:
        result = subprocess.run([qp, "--help"], env=env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QueueRunnerError(f"cannot run {qp} --help: {exc}") from None
    return result.returncode == 0 and "--daemon" in result.stdout


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


class QueueLoop(threading.Thread):
    """Run ``txmail-qp INI --no-app`` once a second until stopped.

    ``--no-app``: the demo app has no mail event subscribers, and loading it
    in every pass would more than double the CPU each pass costs.
    """

    def __init__(self, qp, ini, env, interval=1.0):
        super().__init__(name="txmail-qp loop", daemon=True)
        self.command = [qp, ini, "--no-app"]
        self.env = env
        self.interval = interval
        self.stopping = threading.Event()
        self.process = None
        self.passes = 0
        self.last_error = None

    def describe(self):
        return " ".join([os.path.basename(self.command[0])] + self.command[1:]) + " every second"

    def problem(self):
        return self.last_error

    def failed(self):
        return None  # a failing pass is retried; it never ends the loop

    def run(self):
        while not self.stopping.is_set():
            try:
                self.process = subprocess.Popen(self.command, env=self.env,
                                                stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT,
                                                start_new_session=True)
                for line in self.process.stdout:
                    if not IDLE_PASS.search(line):
                        sys.stderr.buffer.write(line)
                        sys.stderr.flush()
                self.process.stdout.close()
                code = self.process.wait()
            except OSError as exc:
                code, self.last_error = None, str(exc)
            else:
                self.passes += 1
                if code != 0 and self.last_error is None:
                    self.last_error = f"txmail-qp exited with status {code}"
                    print(f"demo: {self.last_error} (see its output above); "
                          "retrying every second", flush=True)
                elif code == 0:
                    self.last_error = None
            self.stopping.wait(self.interval)

    def stop(self, grace=10.0):
        self.stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            # Let a pass that is delivering finish; stop it only if it hangs.
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                terminate(process)
        self.join(grace)


class QueueDaemon:
    """``txmail-qp INI --daemon`` as one child process, stopped with SIGTERM."""

    passes = None  # the daemon does not report its passes to us

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
    """Start the daemon if ``qp`` has one, else the once-a-second loop; return it."""
    runner = QueueDaemon(qp, ini, env) if has_daemon_mode(qp, env) else QueueLoop(qp, ini, env)
    runner.start()
    return runner
