"""The app of tests/test_groupcommit_crash.py: killed while commits wait on a shared fsync.

``python -m tests.groupcommit_crash_app SPOOL DB [--threads N] [--waiting K] [--seed S]``
runs tests/crash_app.py's application (pyramid_tm, SQLite through
zope.sqlalchemy, queue delivery; a row per committed message is the truth)
from N threads at once, each sending requests in a loop (a quarter of them
fail after sending and abort).  ``os.fsync`` and ``os.rename`` are wrapped
around the real calls: when an fsync of ``new/`` begins, it waits until K
more files were renamed into ``new/`` -- K commits whose database work has
committed, now waiting for the *next* shared fsync (theirs came after this
one began) -- and then the process SIGKILLs itself, before that fsync.  It
prints ``ready``, each Message-ID as it is handed to ``send()`` (stdout), and
``killed with K renames waiting on the shared fsync`` (stderr) just before.
If no such moment comes within 30 s it exits 3 instead of being killed.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time

from .crash_app import make_app


class KillInSharedFlush:
    """Wraps os.fsync and os.rename; kills the process in an fsync of ``new/``."""

    def __init__(self, new, waiting):
        self.new, self.waiting = os.path.realpath(new), waiting
        self.renamed = 0
        self.lock = threading.Lock()
        self.real_fsync, self.real_rename = os.fsync, os.rename
        os.fsync, os.rename = self.fsync, self.rename

    def rename(self, src, dst, *args, **kwargs):
        self.real_rename(src, dst, *args, **kwargs)
        if os.path.dirname(os.path.realpath(os.fspath(dst))) == self.new:
            with self.lock:
                self.renamed += 1

    def fsync(self, fd):
        if os.readlink(f"/proc/self/fd/{fd}") == self.new:
            with self.lock:
                before = self.renamed
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with self.lock:
                    waiting = self.renamed - before
                if waiting >= self.waiting:
                    print(f"killed with {waiting} renames waiting on the shared fsync",
                          file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.001)
        self.real_fsync(fd)


class LineAtATime:
    """stdout for threads: ``print`` writes the text and its newline in two calls,
    so two threads' Message-IDs could run together; here each line goes whole."""

    def __init__(self, stream):
        self.stream, self.lock, self.local = stream, threading.Lock(), threading.local()

    def write(self, text):
        pending = getattr(self.local, "pending", "") + text
        *lines, self.local.pending = pending.split("\n")
        if lines:
            with self.lock:
                self.stream.write("".join(line + "\n" for line in lines))
                self.stream.flush()
        return len(text)

    def flush(self):
        pass


def main(argv=None):
    import webtest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spool")
    parser.add_argument("db")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--waiting", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    app = make_app(args.spool, args.db)
    KillInSharedFlush(os.path.join(args.spool, "new"), args.waiting)
    numbers = iter(range(1, 10 ** 9))
    numbers_lock = threading.Lock()

    def client(seed):
        test_app, rand = webtest.TestApp(app), random.Random(seed)
        while True:
            with numbers_lock:
                n = next(numbers)
            params = {"n": str(n)}
            if rand.random() < 0.25:
                params["fail"] = "1"
            try:
                test_app.get("/send", params)
            except RuntimeError:
                pass

    print("ready", flush=True)
    sys.stdout = LineAtATime(sys.stdout)
    for i in range(args.threads):
        threading.Thread(target=client, args=(args.seed * 1000 + i,), daemon=True).start()
    time.sleep(30)
    print("no moment with commits waiting on a shared fsync came", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
