"""A directory's listing, read again only when the directory may have changed.

Why: the daemon passes once per wake-up -- 16 times a second with 16 new
messages a second -- and listing ``deferred/`` and ``meta/`` with 5,000
deferred messages in them cost it 12 ms a pass, though neither changes
while new mail simply goes out.  A directory's mtime moves whenever an
entry is added, removed or renamed, so an unchanged mtime means the names
are the same, with two caveats handled here:

* mtimes are coarse (a kernel tick): a change in the same tick as the
  listing may leave the mtime as it was.  A listing is trusted only when
  the directory had not changed for :data:`SETTLE` seconds before it was
  read, so any later change has a later mtime;
* on NFS the mtime comes from the server and the client caches it.  A
  listing is read again at least every :data:`MAX_AGE` seconds whatever
  the mtime says, which bounds how late a change made elsewhere is seen.
"""
from __future__ import annotations

import os
import threading
import time

#: A listing is trusted when the directory was unchanged this long before it.
SETTLE = 2.0
#: A listing is read again at least this often.
MAX_AGE = 60.0


class Listing:
    """``get()`` → ``parse(names)`` of a directory, cached while its mtime stands still.

    ``parse`` turns the list of names into what the caller keeps (sorted,
    split, filtered); it runs only when the directory is read.  A missing
    directory reads as empty.
    """

    def __init__(self, path, parse=list):
        self.path = path
        self.parse = parse
        self._lock = threading.Lock()
        self._key = None  # (mtime_ns, read at) of a trusted listing
        self._value = None
        self.reads = 0  # how many times the directory was listed (for tests, benchmarks)

    def get(self):
        with self._lock:
            try:
                mtime_ns = os.stat(self.path).st_mtime_ns
            except FileNotFoundError:
                self._key = None
                return self.parse([])
            now = time.time()
            if self._key is not None and self._key[0] == mtime_ns and \
                    0 <= now - self._key[1] < MAX_AGE:
                return self._value
            try:
                names = os.listdir(self.path)  # after the stat: a change now moves the mtime
            except FileNotFoundError:
                names = []
            self.reads += 1
            self._value = self.parse(names)
            settled = now - mtime_ns / 1e9 >= SETTLE
            self._key = (mtime_ns, now) if settled else None
            return self._value
