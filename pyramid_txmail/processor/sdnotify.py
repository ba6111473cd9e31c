"""systemd's ``sd_notify`` protocol for ``txmail-qp --daemon`` (``Type=notify``).

The protocol is a datagram of ``KEY=value`` lines sent to the ``AF_UNIX``
socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket):
a few lines, so no library is needed.  Without ``NOTIFY_SOCKET`` everything
here does nothing.

* ``READY=1`` once the daemon serves (after the metrics port is bound);
* ``STATUS=...`` after every pass: its summary and the queue depth;
* ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` (when ``WatchdogSec=`` is set),
  but only while :meth:`~pyramid_txmail.processor.health.Health.progressing`:
  a stuck daemon stops petting, and systemd restarts it;
* ``STOPPING=1`` when it shuts down.
"""
from __future__ import annotations

import os
import socket
import threading

from ..util.printable import get_logger, printable

log = get_logger("pyramid_txmail.sdnotify")


class Notifier:
    """Sends to ``$NOTIFY_SOCKET``; a no-op without it.  Errors are logged once, never raised."""

    #: the shortest pause between two pets: a WATCHDOG_USEC of a few microseconds
    #: would otherwise make the thread send datagrams in a tight loop.
    MIN_WATCHDOG_INTERVAL = 0.05

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        self.watchdog_interval = None
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if address and usec is not None and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = _watchdog_interval(usec)
        self._sock = None
        self._warned = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    @property
    def enabled(self):
        return self.address is not None

    def send(self, *lines):
        if self.address is None:
            return
        data = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(data, self.address)
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot notify systemd at NOTIFY_SOCKET=%s: %s",
                                self.address.replace("\0", "@"), exc)

    def ready(self, status=None):
        self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text):
        self.send(f"STATUS={_one_line(text)}")

    def stopping(self):
        self.stop_watchdog()
        self.send("STOPPING=1")

    def start_watchdog(self, progressing):
        """Pet every half WATCHDOG_USEC while ``progressing()`` is true."""
        if self.watchdog_interval is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._pet, args=(progressing,),
                                        name="txmail-watchdog", daemon=True)
        self._thread.start()

    def _pet(self, progressing):
        silent = False
        while True:
            if progressing():
                self.send("WATCHDOG=1")
                silent = False
            elif not silent:
                silent = True
                log.error("no progress: no longer petting the systemd watchdog")
            if self._stop.wait(self.watchdog_interval):
                return

    def stop_watchdog(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def forget_in_child(self):
        """In a process forked from the notifier's (a txmail-qp child): close this
        process's copy of the socket and never send (systemd listens to the parent).
        Without the lock: the parent's watchdog thread may have held it at the fork,
        and that thread does not exist here."""
        sock, self._sock, self.address = self._sock, None, None
        self._lock, self._thread = threading.Lock(), None
        if sock is not None:
            sock.close()

    def close(self):
        self.stop_watchdog()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _watchdog_interval(usec):
    """Half of ``$WATCHDOG_USEC`` in seconds, or ``None`` when it is not a positive integer.

    ``sd_watchdog_enabled(3)`` ignores a value that is not a positive decimal
    integer; so do we (``0`` once made the pet loop spin: 412k datagrams in 4 s).
    """
    text = usec.strip() if usec.strip() == usec else None
    if not text or not text.isdigit() or not text.isascii() or int(text) <= 0:
        log.warning("WATCHDOG_USEC=%r is not a positive number of microseconds; "
                    "no watchdog pings", usec)
        return None
    return max(int(text) / 2e6, Notifier.MIN_WATCHDOG_INTERVAL)


def _one_line(text):
    return printable(" ".join(str(text).split()))[:200]
