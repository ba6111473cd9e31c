"""Queued-to-accepted latency of ``txmail-qp --daemon`` at a steady offered load.

What a password-reset user waits for: the time from the application's commit
(the message durable in ``new/``) to the relay's acceptance of it.  Three
processes, so that none shares an interpreter lock with another:

- an aiosmtpd sink (``latency.py sink PORT OUT``) that appends, for every
  message, its Message-ID and the time its final dot arrived;
- the daemon, ``txmail-qp INI --daemon --no-app -q`` with the default settings;
- an application process (``latency.py enqueue SPOOL RATE COUNT OUT``) that
  sends one ~2 KB message per transaction through ``request.mailer``'s own
  path (Configurator, get_mailer, a transaction manager), paced at RATE per
  second on a fixed schedule, and appends each Message-ID with the time its
  commit returned.

Latency = the sink's time minus the commit's, joined on the Message-ID (one
machine, one clock).  Reported: p50, p90, p99 and the maximum.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]+>)")


# -- the sink (its own process) ----------------------------------------------------


def run_sink(port, out):
    from aiosmtpd.controller import Controller

    lock = threading.Lock()
    log = open(out, "a", buffering=1)

    class Recorder:
        async def handle_DATA(self, server, session, envelope):
            now = time.time()
            found = _MESSAGE_ID.search(envelope.content or b"")
            with lock:
                log.write(f"{found.group(1).decode() if found else '-'} {now:.6f}\n")
            return "250 2.0.0 Ok: recorded"

    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    controller = Controller(Recorder(), hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    print("ready", flush=True)
    stopped.wait()
    controller.stop()
    log.close()
    return 0


# -- the application (its own process) ---------------------------------------------


def run_enqueue(spool, rate, count, out):
    import transaction
    from pyramid.config import Configurator

    sys.path.insert(0, str(Path(__file__).parent))
    from harness import make_message

    from pyramid_txmail import get_mailer

    config = Configurator(settings={"mail.queue_path": spool, "mail.delivery": "queue"})
    config.include("pyramid_txmail")
    config.commit()
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(config.registry, manager)
    start = time.time() + 0.2
    with open(out, "a", buffering=1) as log:
        for i in range(count):
            wait = start + i / rate - time.time()
            if wait > 0:
                time.sleep(wait)
            with manager:
                message_id = mailer.send(make_message(i))
            log.write(f"{message_id} {time.time():.6f}\n")
    return 0


# -- the measurement (the bench's process) -----------------------------------------


@dataclasses.dataclass
class Latency:
    rate: float
    count: int
    received: int
    p50: float
    p90: float
    p99: float
    worst: float
    load: float  # the 1-minute load average at the end


def _read(path):
    pairs = {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return pairs
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key and key != "-":
            pairs[key] = float(value)
    return pairs


def _percentile(sorted_values, fraction):
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def measure(workdir, bin_dir, rate=100.0, count=3000, env=None, timeout=120.0):
    """Start the sink and the daemon, offer ``count`` messages at ``rate``/s, and
    return the :class:`Latency` of those the sink received."""
    workdir = Path(workdir)
    spool, sunk, queued = workdir / "spool", workdir / "sink.log", workdir / "queued.log"
    from harness import BenchError, free_port

    from pyramid_txmail.queue.maildir.spool import Spool

    Spool(str(spool))
    port = free_port()
    ini = workdir / "latency.ini"
    ini.write_text(f"[app:main]\nmail.queue_path = {spool}\nmail.host = 127.0.0.1\n"
                   f"mail.port = {port}\n")
    me = [sys.executable, str(Path(__file__).resolve())]
    sink = subprocess.Popen(me + ["sink", str(port), str(sunk)], stdout=subprocess.PIPE,
                            env=env)
    daemon = app = None
    try:
        if sink.stdout.readline().strip() != b"ready":
            raise BenchError("the latency sink did not start")
        daemon = subprocess.Popen([str(Path(bin_dir) / "txmail-qp"), str(ini), "--daemon",
                                   "--no-app", "-q"], stderr=subprocess.PIPE, env=env)
        # a warm-up message: the daemon runs and watches new/ once it is delivered
        _offer(me, spool, 1000, 1, workdir / "warmup.log", env)
        _wait_for(sunk, 1, daemon, timeout)
        app = subprocess.run(me + ["enqueue", str(spool), str(rate), str(count), str(queued)],
                             env=env, capture_output=True, text=True, timeout=timeout + count / rate)
        if app.returncode != 0:
            raise BenchError(f"the latency app failed: {app.stderr.strip()[-300:]}")
        _wait_for(sunk, count + 1, daemon, timeout)
    finally:
        for process in (daemon, sink):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    sent, received = _read(queued), _read(sunk)
    waits = sorted(received[mid] - at for mid, at in sent.items() if mid in received)
    if not waits:
        raise BenchError("the latency sink received none of the offered messages")
    return Latency(rate, len(sent), len(waits), _percentile(waits, 0.5),
                   _percentile(waits, 0.9), _percentile(waits, 0.99), waits[-1],
                   os.getloadavg()[0])


def _offer(me, spool, rate, count, out, env):
    subprocess.run(me + ["enqueue", str(spool), str(rate), str(count), str(out)], env=env,
                   check=True, capture_output=True, timeout=60)


def _wait_for(sunk, lines, daemon, timeout):
    from harness import BenchError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = Path(sunk).read_text().count("\n")
        except FileNotFoundError:
            got = 0
        if got >= lines:
            return
        if daemon.poll() is not None:
            raise BenchError(f"txmail-qp --daemon exited ({daemon.returncode}): "
                             f"{daemon.stderr.read().decode(errors='replace')[-300:]}")
        time.sleep(0.05)
    raise BenchError(f"the latency sink received {got} of {lines} messages in {timeout:.0f} s")


def main(argv):
    if argv[:1] == ["sink"]:
        return run_sink(int(argv[1]), argv[2])
    if argv[:1] == ["enqueue"]:
        return run_enqueue(argv[1], float(argv[2]), int(argv[3]), argv[4])
    print("usage: latency.py sink PORT OUT | enqueue SPOOL RATE COUNT OUT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
