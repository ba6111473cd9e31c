"""txmail-queue retry --all-failed and purge over a large backlog: peak memory stays flat.

Usage: python bench/bulk_admin.py N [N...]   (e.g. 10000 100000)

Fills failed/ of a fresh spool with N dead letters (one real queue file, copied
under N Maildir names: the content does not matter, the count does), then runs
the real ``txmail-queue INI retry --all-failed``, refills failed/ and runs
``purge --state failed --all``, each under ``/usr/bin/time -v``; prints the
wall time, the peak RSS and the summary line.  Memory that stays the same from
10,000 to 100,000 messages is the point (nothing is held per message).
"""
import os
import re
import subprocess
import sys
import tempfile

from pyramid_txmail.queue.maildir.spool import Spool

BIN = os.path.dirname(sys.executable)


def fill(spool, n):
    data = (b"From: a@example.org\nTo: b@example.org\nSubject: bounce\n"
            b"Message-ID: <bench@example.org>\n\nbody\n")
    name = spool.write_tmp("a@example.org", ["b@example.org"], data)
    spool.commit_tmp([name])
    source = os.path.join(spool.path, "new", name)
    with open(source, "rb") as f:
        content = f.read()
    os.unlink(source)
    failed = os.path.join(spool.path, "failed")
    for i in range(n):
        with open(os.path.join(failed, f"1795596391.M{i}P1Q{i}.bench"), "wb") as f:
            f.write(content)


def timed(*argv):
    done = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", done.stderr).group(1)
    return done.returncode, done.stdout.strip().splitlines()[-1], rss, wall


def main(counts):
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            spool = Spool(os.path.join(tmp, "spool"))
            ini = os.path.join(tmp, "app.ini")
            with open(ini, "w") as f:
                f.write(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {spool.path}\n")
            fill(spool, n)
            for argv in (["retry", "--all-failed"], ["purge", "--state", "failed", "--all"]):
                if argv[0] == "purge":
                    for name in os.listdir(os.path.join(spool.path, "new")):
                        os.unlink(os.path.join(spool.path, "new", name))
                    fill(spool, n)
                code, line, rss, wall = timed(os.path.join(BIN, "txmail-queue"), ini, *argv)
                print(f"{n:>7} {argv[0]:<6} exit {code}  peak RSS {rss / 1024:.1f} MiB  "
                      f"wall {wall}  | {line}", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10000, 100000])
