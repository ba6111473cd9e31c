"""Enqueue: the cost of committing one message into a queue on disk.

Three paths write the same kind of ~2 KB message, one message per
transaction, each into a fresh spool on the repository's disk:

- ``txmail``: ``get_mailer(registry, manager).send(msg)`` and the commit
  (vote writes and fsyncs the file in ``tmp/``, finish renames it into
  ``new/`` and fsyncs the directory);
- ``pyramid_mailer``: ``Mailer(queue_path=...).send_to_queue(msg)`` and
  ``transaction.commit()`` (repoze.sendmail's Maildir: no fsync at all);
- ``floor``: plain Python doing only what durability needs -- create with
  ``O_EXCL`` in ``tmp/``, write the bytes of a file our path wrote, fsync,
  rename into ``new/``, fsync the directory.

The message objects are built before the clock starts: the figure is the
send and the commit, not composing the mail.
"""
from __future__ import annotations

import os
import time

from harness import (RECIPIENT, SENDER, BenchError, SectionResult, Target, make_message, median,
                     rate, table)

PATHS = ("txmail", "pyramid_mailer", "floor")
TARGET = 1.25


def _count_new(spool):
    return len([n for n in os.listdir(spool / "new") if not n.startswith(".")])


def enqueue_txmail(ctx, count):
    import transaction
    from pyramid.config import Configurator

    from pyramid_txmail import get_mailer

    spool = ctx.scratch("enqueue-txmail") / "spool"
    config = Configurator(settings={"mail.queue_path": str(spool)})
    config.include("pyramid_txmail")
    config.commit()
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(config.registry, manager)
    messages = [make_message(i) for i in range(count)]
    start = time.perf_counter()
    for msg in messages:
        with manager:
            mailer.send(msg)
    return time.perf_counter() - start, spool


def enqueue_pyramid_mailer(ctx, count):
    import transaction
    from pyramid_mailer.mailer import Mailer
    from pyramid_mailer.message import Message

    spool = ctx.scratch("enqueue-pyramid_mailer") / "spool"
    mailer = Mailer(queue_path=str(spool))
    body = make_message().get_content()
    messages = [Message(subject=f"Your order #{100000 + i} has shipped", sender=SENDER,
                        recipients=[RECIPIENT], body=body) for i in range(count)]
    transaction.abort()
    start = time.perf_counter()
    for msg in messages:
        mailer.send_to_queue(msg)
        transaction.commit()
    return time.perf_counter() - start, spool


def enqueue_floor(ctx, count):
    spool = ctx.scratch("enqueue-floor") / "spool"
    tmp, new = spool / "tmp", spool / "new"
    for directory in (spool, tmp, new):
        directory.mkdir(mode=0o700)
    data = ctx.template()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    start = time.perf_counter()
    for i in range(count):
        name = f"{i}.bench"
        fd = os.open(tmp / name, flags, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp / name, new / name)
        dfd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
    return time.perf_counter() - start, spool


RUNNERS = {"txmail": enqueue_txmail, "pyramid_mailer": enqueue_pyramid_mailer,
           "floor": enqueue_floor}


def run(ctx):
    count, repeats = ctx.options.enqueue_count, ctx.options.repeats
    seconds = {path: [] for path in PATHS}
    sizes = {}
    for _ in range(repeats):
        for path in PATHS:  # interleaved, so that a slow moment of the disk hits all
            elapsed, spool = RUNNERS[path](ctx, count)
            if _count_new(spool) != count:
                raise BenchError(f"enqueue {path}: {_count_new(spool)} files in "
                                   f"{spool}/new, expected {count}")
            first = sorted(os.listdir(spool / "new"))[0]
            sizes[path] = os.path.getsize(spool / "new" / first)
            seconds[path].append(elapsed)
    per = {path: median(seconds[path]) / count for path in PATHS}
    floor = per["floor"]
    rows = [(path, f"{per[path] * 1e6:.0f}", f"{rate(1, per[path]):.0f}",
             f"{per[path] / floor:.2f}x", sizes[path],
             ", ".join(f"{s / count * 1e6:.0f}" for s in seconds[path]))
            for path in PATHS]
    ratio = per["txmail"] / floor
    target = Target(f"durable enqueue <= {TARGET}x the floor", ratio <= TARGET,
                    f"txmail {per['txmail'] * 1e6:.0f} us vs floor {floor * 1e6:.0f} us "
                    f"per message = {ratio:.2f}x")
    markdown = "\n\n".join([
        f"{count} messages, one per transaction, into an empty spool; median of "
        f"{repeats} runs (the runs were interleaved).  Message objects are built before "
        "the clock starts.",
        table(["path", "us / message", "msg/s", "vs floor", "file bytes",
               "us / message, each run"], rows),
        "pyramid_mailer never calls fsync (a crash can lose or truncate a committed "
        "message), so it is expected to beat the floor; it is shown as the cost of not "
        "being durable, not as a target."])
    lines = [f"enqueue: txmail {per['txmail'] * 1e6:.0f} us/msg, pyramid_mailer "
             f"{per['pyramid_mailer'] * 1e6:.0f} us/msg, floor {floor * 1e6:.0f} us/msg; "
             f"txmail/floor = {ratio:.2f}x, pyramid_mailer/floor = "
             f"{per['pyramid_mailer'] / floor:.2f}x"]
    return SectionResult("Enqueue: durable commit vs pyramid_mailer vs the floor",
                         markdown, lines, [target])
