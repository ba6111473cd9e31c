"""What every queue's watcher shares with the daemon: the waker and the watch errors.

The daemon (:mod:`pyramid_txmail.processor.daemon`) sleeps in a queue's watcher
(:meth:`pyramid_txmail.queue.interface.IQueue.watcher`: inotify on a spool,
LISTEN/NOTIFY on PostgreSQL, polling otherwise); a signal must end that sleep
at once, whatever the backend, so the :class:`Waker` it is poked through, and
the errors a watcher raises, belong to no one backend.
"""
from __future__ import annotations

import os
import select

#: How ``txmail-qp --daemon`` notices new mail (``--watch``); here rather than in the
#: spool's watcher module so that reading the command line imports no ctypes.
WATCH_MODES = ("auto", "inotify", "poll")


class WatchUnavailable(OSError):
    """inotify cannot be used here (not Linux, no libc symbol, out of instances)."""


class WatchLost(OSError):
    """The watched directory was removed or moved away."""


class Waker:
    """A self-pipe: :meth:`wake` makes a waiting watcher return early.

    The daemon's signal thread (:class:`pyramid_txmail.processor.daemon.Signals`) pokes
    it, so a signal wakes the sleeper at once.  Both ends are non-blocking:
    :meth:`wake` never waits (a full pipe wakes the sleeper anyway), and
    neither end takes a lock, so it is safe from any thread.
    """

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        for fd in (self.read_fd, self.write_fd):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)

    def wake(self):
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:  # the pipe is full: it will wake anyway
            pass

    def drain(self):
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout):
        """True if poked within ``timeout`` seconds (the pokes are consumed)."""
        readable, _, _ = select.select([self.read_fd], [], [], max(timeout, 0))
        if readable:
            self.drain()
            return True
        return False

    def close(self):
        for fd in (self.read_fd, self.write_fd):
            os.close(fd)
