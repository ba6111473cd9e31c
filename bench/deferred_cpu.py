"""CPU of ``txmail-qp --daemon`` with a deferred backlog (issue 11, finding 8).

Usage: ``python bench/deferred_cpu.py [--backlog 5000] [--rate 16] [--seconds 20]``

Puts ``--backlog`` messages into ``deferred/``, due in an hour, the way a
processor of any version leaves them (a state file with ``next_attempt``,
the file under its plain name), starts the daemon against an aiosmtpd sink
in its own process, waits for the first passes to settle (a version with
the due-time index renames the old-style files once), then commits
``--rate`` new messages a second for ``--seconds`` and reads the daemon's
user+system CPU time from ``/proc/PID/stat`` before and after.  It prints
the share of one core, with the backlog and with an empty ``deferred/``.

A measurement, not a test: figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from pyramid_txmail.queue.maildir.spool import Spool

HERE = os.path.dirname(os.path.abspath(__file__))
QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
MESSAGE = b"From: a@example.org\nTo: b@example.org\nSubject: hi\n\nbody\n"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_backlog(spool, count, due):
    for _ in range(count):
        name = spool.write_tmp("a@example.org", ["later@example.org"], MESSAGE)
        spool.write_meta(name, {"attempts": 1, "first_attempt": due - 3600,
                                "last_attempt": due - 3600, "next_attempt": due,
                                "queued_at": due - 3600, "delivered": [],
                                "failed_recipients": [], "history": []})
        os.rename(os.path.join(spool.path, "tmp", name),
                  os.path.join(spool.path, "deferred", name))


def run(backlog, rate, seconds, port):
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(os.path.join(tmp, "spool"))
        make_backlog(spool, backlog, time.time() + 3600)
        ini = os.path.join(tmp, "qp.ini")
        with open(ini, "w") as f:
            f.write(f"[app:main]\nmail.host = 127.0.0.1\nmail.port = {port}\n"
                    f"mail.queue_path = {spool.path}\n")
        proc = subprocess.Popen([QP, ini, "--no-app", "--daemon"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(5)  # start-up and the first passes (and a one-off migration)
            start_cpu, start = cpu_seconds(proc.pid), time.monotonic()
            sent = 0
            while time.monotonic() - start < seconds:
                spool.commit_tmp([spool.write_tmp("a@example.org", ["b@example.org"],
                                                  MESSAGE)])
                sent += 1
                time.sleep(max(0.0, start + sent / rate - time.monotonic()))
            time.sleep(1)
            used, wall = cpu_seconds(proc.pid) - start_cpu, time.monotonic() - start
            left = len(spool.names("new"))
        finally:
            proc.terminate()
            proc.wait(60)
    return used / wall, sent, left


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    port = free_port()
    sink = subprocess.Popen([sys.executable, os.path.join(HERE, "aiosmtpd_sink.py"),
                             str(port)], stdout=subprocess.PIPE)
    try:
        sink.stdout.readline()
        for backlog in (args.backlog, 0):
            share, sent, left = run(backlog, args.rate, args.seconds, port)
            print(f"deferred backlog {backlog:5d}: daemon CPU {share:6.1%} of a core "
                  f"({sent} new messages at {args.rate:g}/s, {left} left in new/)")
    finally:
        sink.terminate()
        sink.wait(10)


if __name__ == "__main__":
    main()
