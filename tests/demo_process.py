"""Run the whole demo (``python -m demo_app.run``) as a child process for a test.

The demo prints ``demo: running.`` once its sample mail went all the way
through; :func:`start_demo` waits for that line and gives back the base URL and
the var directory.  :meth:`DemoProcess.interrupt` sends SIGINT, as Ctrl-C in a
terminal would, and returns the exit status and everything the demo printed.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

from .smtpserver import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNING = "demo: running."


class DemoProcess:
    def __init__(self, var, timeout=60.0):
        self.var = var
        self.http_port, self.smtp_port = free_port(), free_port()
        while self.smtp_port == self.http_port:
            self.smtp_port = free_port()
        self.base = f"http://127.0.0.1:{self.http_port}/"
        self.lines = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "demo_app.run", "--http-port", str(self.http_port),
             "--smtp-port", str(self.smtp_port), "--var", str(var)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.interrupt()
                raise AssertionError("the demo did not start:\n" + self.output)

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith(RUNNING):
                self._ready.set()

    @property
    def output(self):
        return "".join(self.lines)

    def interrupt(self, timeout=30.0):
        """Ctrl-C: SIGINT to the demo; (exit status, output)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the demo did not stop within "
                                 f"{timeout:.0f} s of SIGINT:\n{self.output}") from None
        self._reader.join(timeout)
        return code, self.output

    def sample_address(self):
        found = re.search(r"Mail arrived: .* to (\S+)", self.output)
        return found.group(1) if found else None


def start_demo(var, timeout=60.0):
    return DemoProcess(var, timeout)
