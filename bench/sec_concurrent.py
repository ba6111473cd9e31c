"""Concurrent: a Pyramid view sending one mail per request, 8 requests at a time.

What a user of a signup endpoint feels.  The same Pyramid app with pyramid_tm
(bench/concurrent_app.py), served by waitress with 8 threads, is driven by
``ab -c 8`` (Debian's apache2-utils; ``make bench`` installs it).  Apps:

- ``nothing``: the same view sending nothing (the anchor every cost is taken over);
- ``floor``: the view itself writes, fsyncs and renames the file into ``new/``,
  then fsyncs ``new/`` -- what durability costs at least, one request at a time;
- ``pyramid_mailer``: ``send_to_queue`` (repoze.sendmail's Maildir, not durable);
- ``txmail``: pyramid_txmail's queued delivery (``mail.queue_path``), the view
  building a stdlib ``EmailMessage`` (what the README shows); the targets are
  judged on it;
- ``txmail-mail``: the same, the same mail built with ``pyramid_txmail.builder.Mail``
  (its figures are shown beside the targets', not judged);
- ``txmail, serial flushes``: the same code with the spool's group commit
  switched off (each finish fsyncs ``new/`` by itself, as before it), to
  show what sharing the flushes buys in the same run.

Every app serves from its own process, started once; the apps take turns in
rounds (the order rotating) with the same request count, each measurement
after a ``sync()`` (ext4's fsync commits the journal: the app after
pyramid_mailer's unsynced writes would pay for them).  A request's "mail
cost" is ``1/rate(app) - 1/rate(nothing)``: the wall time the mail adds per
request at this concurrency.  Ratios are taken within a round and the median
round is reported; the load average before each measurement is recorded.
When a target is missed, py-spy samples the txmail app under the same load
(bench/concurrent_profile.py): where the interpreter lock is held, and where
the worker threads spend the wall clock.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import machine
from harness import (BenchError, SectionResult, Target, _wait_listening, free_port, median,
                     process_cpu, stop_process, table)

APP = Path(__file__).resolve().parent / "concurrent_app.py"
#: (kind of concurrent_app.py, label in the tables), in table order.
APPS = (("nothing", "the same view sending nothing"),
        ("floor", "the durable floor (the view writes, fsyncs, renames, fsyncs new/)"),
        ("pyramid_mailer", "pyramid_mailer send_to_queue (not durable)"),
        ("txmail", "pyramid_txmail queued delivery"),
        ("txmail-mail", "pyramid_txmail queued delivery, the mail built with Mail"),
        ("txmail-serial", "pyramid_txmail, serial flushes (no group commit)"))
CONCURRENCY = 8
THROUGHPUT_TARGET = 1.2  # x pyramid_mailer's req/s
COST_TARGET = 1.5        # x the floor's cost per request
FULL = dict(requests=2000, rounds=3, warmup=200)
QUICK = dict(requests=100, rounds=1, warmup=20)


def _ab():
    path = shutil.which("ab")
    if path is None:
        raise BenchError("ab is missing: run `make bench` (it installs Debian's apache2-utils)")
    return path


class Server:
    """One app of concurrent_app.py in its own process on a free port."""

    def __init__(self, ctx, kind):
        self.kind = kind
        self.spool = ctx.scratch(f"concurrent-{kind}") / "spool"
        template = ctx.scratch(f"concurrent-{kind}-template") / "message"
        template.write_bytes(ctx.template())
        self.port = free_port()
        self.log = open(self.spool.parent / "server.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, str(APP), kind, str(self.spool), str(self.port), str(template)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        self.sent = 0

    def wait(self):
        """Until the app listens (the apps start side by side: start-up is imports)."""
        _wait_listening(self.port, self.process, f"the {self.kind} app")
        return self

    def cpu(self):
        """User + system seconds the app's process has used so far (all its threads)."""
        return process_cpu(self.process.pid)

    def url(self):
        return f"http://127.0.0.1:{self.port}/"

    def fsyncs(self):
        """``(file fsyncs, directory fsyncs)`` the app has made so far."""
        import urllib.request

        with urllib.request.urlopen(self.url() + "fsyncs", timeout=30) as answer:
            files, dirs = answer.read().split()
        return int(files), int(dirs)

    def stop(self):
        stop_process(self.process)
        self.log.close()

    def check(self):
        """Every request of a mail app left exactly one file in ``new/``."""
        if self.kind == "nothing":
            return
        new = self.spool / "new"
        found = len([n for n in os.listdir(new) if not n.startswith(".")])
        if found != self.sent:
            raise BenchError(f"concurrent {self.kind}: {found} files in {new} after "
                             f"{self.sent} requests")


def ab(server, requests):
    """Drive ``server`` with ``ab -c 8``; its requests per second."""
    done = subprocess.run([_ab(), "-q", "-c", str(CONCURRENCY), "-n", str(requests),
                           server.url()], capture_output=True, text=True, timeout=900)
    server.sent += requests
    if done.returncode != 0:
        raise BenchError(f"ab against the {server.kind} app failed: "
                         f"{(done.stderr or done.stdout).strip()[-300:]}")
    out = done.stdout
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if (failed and int(failed.group(1))) or non2xx:
        tail = open(server.log.name, "rb").read()[-500:].decode("utf-8", "replace")
        raise BenchError(f"the {server.kind} app answered requests with errors:\n{out}\n{tail}")
    found = re.search(r"Requests per second:\s+([\d.]+)", out)
    if not found:
        raise BenchError(f"no 'Requests per second' in ab's output:\n{out}")
    return float(found.group(1))


def measure(ctx, kinds, requests, rounds, warmup):
    """Per kind and round: req/s, app CPU us per request, ``(file, directory)``
    fsyncs per request; ``[load before each measurement]``; ``{kind: spool}``."""
    servers = {}
    try:
        for kind in kinds:
            servers[kind] = Server(ctx, kind)
        for server in servers.values():
            server.wait()
            ab(server, warmup)  # first files, page cache
        rates, cpus, loads = {kind: [] for kind in kinds}, {kind: [] for kind in kinds}, []
        flushes = {kind: [] for kind in kinds}
        for round_ in range(rounds):
            shift = round_ % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                os.sync()
                loads.append(machine.load())
                cpu, fsyncs = servers[kind].cpu(), servers[kind].fsyncs()
                rates[kind].append(ab(servers[kind], requests))
                cpus[kind].append((servers[kind].cpu() - cpu) / requests * 1e6)
                after = servers[kind].fsyncs()
                flushes[kind].append(tuple((b - a) / requests for a, b in zip(fsyncs, after)))
        for server in servers.values():
            server.check()
        spools = {kind: server.spool for kind, server in servers.items()}
        return rates, cpus, flushes, loads, spools
    finally:
        for server in servers.values():
            server.stop()


def cost_us(rate, anchor):
    """Wall time per request an app adds over the anchor app, in microseconds."""
    return 1e6 / rate - 1e6 / anchor


def run(ctx):
    sizes = QUICK if ctx.options.quick else FULL
    requests, rounds = sizes["requests"], max(sizes["rounds"], 1 if ctx.options.quick
                                               else ctx.options.repeats)
    kinds = [kind for kind, _ in APPS]
    rates, cpus, flushes, loads, spools = measure(ctx, kinds, requests, rounds,
                                                  sizes["warmup"])
    return report(ctx, rates, cpus, flushes, loads, requests, rounds,
                  same_on_disk(spools["txmail"], spools["txmail-mail"]))


#: What the two views may differ in: the order number in the Subject (each request
#: has its own), the Message-ID and the Date.
_COMPARED = ("From", "To", "Subject", "MIME-Version", "Content-Type",
             "Content-Transfer-Encoding")


def _one_message(spool):
    from email import message_from_bytes, policy

    from pyramid_txmail.queue.maildir.spool import split_envelope

    new = Path(spool) / "new"
    name = min(n for n in os.listdir(new) if not n.startswith("."))
    sender, recipients, data = split_envelope((new / name).read_bytes())
    return (sender, tuple(recipients)), message_from_bytes(data, policy=policy.default)


def same_on_disk(email_message_spool, mail_spool):
    """A sentence saying how a file the EmailMessage view queued and one the Mail
    view queued differ: envelope, the headers of :data:`_COMPARED` (the Subject's
    order number aside), the decoded text, and the order of the headers."""
    (envelope_a, a), (envelope_b, b) = (_one_message(s) for s in (email_message_spool,
                                                                   mail_spool))
    differ = ["the envelope"] if envelope_a != envelope_b else []
    for name in _COMPARED:
        values = [re.sub(r"#\d+", "#N", str(m[name])) if m[name] is not None else None
                  for m in (a, b)]
        if values[0] != values[1]:
            differ.append(f"{name} ({values[0]!r} vs {values[1]!r})")
    if a.get_content() != b.get_content():
        differ.append("the decoded text")
    order = [[k for k in m.keys() if k in _COMPARED] for m in (a, b)]
    same = ("the same envelope, " + ", ".join(_COMPARED[:2]) + ", Subject (but its order "
            "number), " + ", ".join(_COMPARED[3:]) + " and decoded text")
    if differ:
        found = "they differ in " + "; ".join(differ)
    else:
        found = f"a file of each holds {same}"
    if order[0] != order[1]:
        found += (" (the headers in another order: " + ", ".join(order[0]) + " vs "
                  + ", ".join(order[1]) + ")")
    return f"on disk, {found}; the Message-ID and Date differ, as between any two mails."


def _per_round(rates, fn):
    return median([fn({k: v[i] for k, v in rates.items()}) for i in range(len(rates["nothing"]))])


def report(ctx, rates, cpus, flushes, loads, requests, rounds, disk_note):
    labels = dict(APPS)
    med = {kind: median(values) for kind, values in rates.items()}
    cost = {kind: _per_round(rates, lambda r, k=kind: cost_us(r[k], r["nothing"]))
            for kind in rates if kind != "nothing"}
    vs_floor = {kind: _per_round(rates, lambda r, k=kind: cost_us(r[k], r["nothing"])
                                 / cost_us(r["floor"], r["nothing"]))
                for kind in cost}
    vs_mailer = {kind: _per_round(rates, lambda r, k=kind: r[k] / r["pyramid_mailer"])
                 for kind in rates}
    rows = [(labels[kind], f"{med[kind]:.0f}",
             "--" if kind == "nothing" else f"{cost[kind]:.0f}",
             "--" if kind == "nothing" else f"{vs_floor[kind]:.2f}x",
             f"{vs_mailer[kind]:.2f}x", f"{median(cpus[kind]):.0f}",
             f"{median([f for f, _ in flushes[kind]]):.2f} / "
             f"{median([d for _, d in flushes[kind]]):.2f}",
             ", ".join(f"{r:.0f}" for r in rates[kind]))
            for kind in rates]
    throughput = Target(
        f"{CONCURRENCY} concurrent requests: pyramid_txmail >= {THROUGHPUT_TARGET}x "
        "pyramid_mailer's throughput", vs_mailer["txmail"] >= THROUGHPUT_TARGET,
        f"{med['txmail']:.0f} vs {med['pyramid_mailer']:.0f} req/s = "
        f"{vs_mailer['txmail']:.2f}x (the mail built with Mail: "
        f"{med['txmail-mail']:.0f} req/s = {vs_mailer['txmail-mail']:.2f}x)")
    per_request = Target(
        f"{CONCURRENCY} concurrent requests: the mail costs <= {COST_TARGET}x the floor's "
        "per request", vs_floor["txmail"] <= COST_TARGET,
        f"{cost['txmail']:.0f} vs {cost['floor']:.0f} us per request = "
        f"{vs_floor['txmail']:.2f}x (the mail built with Mail: "
        f"{cost['txmail-mail']:.0f} us = {vs_floor['txmail-mail']:.2f}x)")
    markdown = [
        f"A Pyramid view with pyramid_tm sending one ~2 KB mail per request, waitress "
        f"with 8 threads, `ab -c {CONCURRENCY} -n {requests}`; {rounds} round(s), the apps "
        "taking turns (order rotating), each app in its own process.  \"Mail cost\" is "
        "the wall time per request over the app sending nothing (1/rate - 1/rate of "
        "nothing); ratios are per round, the median round shown.  \"app CPU\" is the "
        "user+system time of the app's process (all its threads) per request, steadier "
        "than the wall clock on a busy machine; fsyncs are counted by the app around "
        "the real calls.",
        table(["app", "req/s", "mail cost us / request", "cost vs floor",
               "req/s vs pyramid_mailer", "app CPU us / request",
               "fsyncs / request (files / directories)", "req/s, each round"],
              rows),
        "Load before each measurement, in order: " + "; ".join(
            load.replace("load average ", "") for load in loads) + ".",
        "pyramid_mailer never calls fsync (a crash can lose or truncate a committed "
        "message); the floor is durable but does nothing else (no message is built).  "
        "\"serial flushes\" is our code with the group commit switched off: each finish "
        "fsyncs `new/` by itself, as before it "
        f"({_per_round(rates, lambda r: r['txmail'] / r['txmail-serial']):.2f}x its req/s "
        "with the group commit, median round).  \"the mail built with Mail\" is the "
        "same view and path with the same mail built by `pyramid_txmail.builder.Mail` "
        "instead of a stdlib `EmailMessage`; " + disk_note
        + "  The targets are judged on the `EmailMessage` row (what the README shows); "
        "the Mail row's figures are given beside them."]
    if not (throughput.met and per_request.met):
        import concurrent_profile

        markdown.append(concurrent_profile.why(lambda: Server(ctx, "txmail"), ab, requests))
    lines = ["concurrent: " + ", ".join(f"{kind} {med[kind]:.0f} req/s" for kind in rates),
             f"concurrent: txmail mail cost {cost['txmail']:.0f} us/request vs floor "
             f"{cost['floor']:.0f} ({vs_floor['txmail']:.2f}x); txmail/pyramid_mailer "
             f"{vs_mailer['txmail']:.2f}x"]
    return SectionResult("Concurrent: a view sending one mail, waitress 8 threads, ab -c 8",
                         "\n\n".join(markdown), lines, [throughput, per_request])
