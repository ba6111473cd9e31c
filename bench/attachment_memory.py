"""Peak resident memory of sending one large attachment, against pyramid_mailer.

    python bench/attachment_memory.py [--size-mb 50]     # prints JSON

Each leg runs in a fresh interpreter (a child of this script) that imports
everything, records ``ru_maxrss`` as its baseline, does the work once and
reports ``ru_maxrss`` again: the difference is the peak resident memory the
work added.  Legs:

- ``builder_queue``: ``Mail.attach(path)`` + ``request.mailer.send`` with queue
  delivery, committed into the spool (the attachment is streamed);
- ``pyramid_mailer_queue``: pyramid_mailer's ``Message`` + ``Attachment`` and
  ``Mailer.send_to_queue`` (the anchor: it builds the whole message in memory);
- ``processor_smtp``: the spool file from the first leg sent by our
  ``Processor`` to Postfix's smtp-sink (or an aiosmtpd sink in another process);
- ``builder_direct``: the same ``Mail`` with direct delivery, streamed from the
  attachment file to the sink after the commit.

``run()`` returns the same dict, for ``make bench``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SMTP_SINK = ROOT / ".deps" / "postfix" / "usr" / "sbin" / "smtp-sink"
MIB = 1 << 20


def _maxrss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# -- the legs (run in a child process) ----------------------------------------------------

def _send_report(path, settings, subscriber=None):
    """Build a Mail with ``path`` attached and send it in one transaction through a
    fresh app with ``settings``; returns the peak RSS measured before building."""
    import transaction
    from pyramid.config import Configurator

    from pyramid_txmail import get_mailer
    from pyramid_txmail.builder import Mail
    from pyramid_txmail.interfaces import IMailSent

    config = Configurator(settings={**settings, "mail.default_sender": "bench@example.org"})
    config.include("pyramid_txmail")
    if subscriber is not None:
        config.add_subscriber(subscriber, IMailSent)
    config.commit()
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(config.registry, manager)
    baseline = _maxrss_kib()
    mail = Mail(subject="Report", to="alice@example.com", text="The report is attached.")
    mail.attach(path, filename="report.bin")
    with manager:
        mailer.send(mail)
    return baseline


def leg_builder_queue(path, spool):
    return _send_report(path, {"mail.queue_path": spool})


def leg_builder_direct(path, port):
    sent = []
    baseline = _send_report(path, {"mail.delivery": "direct", "mail.host": "127.0.0.1",
                                   "mail.port": port, "mail.timeout": "60"}, sent.append)
    if len(sent) != 1:
        raise SystemExit("direct leg: the message was not sent")
    return baseline


def leg_pyramid_mailer_queue(path, spool):
    import transaction
    from pyramid_mailer.mailer import Mailer
    from pyramid_mailer.message import Attachment, Message

    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(spool, sub), exist_ok=True)
    mailer = Mailer(queue_path=spool)
    baseline = _maxrss_kib()
    message = Message(subject="Report", sender="bench@example.org",
                      recipients=["alice@example.com"], body="The report is attached.")
    with open(path, "rb") as f:
        message.attach(Attachment("report.bin", "application/octet-stream", f.read()))
    with transaction.manager:
        mailer.send_to_queue(message)
    return baseline


def leg_processor_smtp(spool, port):
    from pyramid_txmail.processor.processor import Processor
    from pyramid_txmail.settings import parse_settings
    from pyramid_txmail.relay.smtp import SMTPTransport
    from pyramid_txmail.queue.maildir.spool import Spool

    settings = parse_settings({"mail.host": "127.0.0.1", "mail.port": str(port),
                               "mail.queue_path": spool, "mail.timeout": "60"})
    spool_obj = Spool(spool)
    baseline = _maxrss_kib()
    with SMTPTransport.from_settings(settings) as transport:
        stats = Processor(spool_obj, transport, settings).run_once()
    if stats.sent != 1:
        raise SystemExit(f"processor leg: expected 1 message sent, got {stats}")
    return baseline


def child(argv):
    leg, *args = argv
    function = {"builder_queue": leg_builder_queue, "builder_direct": leg_builder_direct,
                "pyramid_mailer_queue": leg_pyramid_mailer_queue,
                "processor_smtp": leg_processor_smtp}[leg]
    baseline = function(*args)
    print(json.dumps({"baseline_kib": baseline, "peak_kib": _maxrss_kib()}))


# -- the parent ------------------------------------------------------------------------

def _measure(*argv):
    out = subprocess.run([sys.executable, __file__, "--child", *argv], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    figures["above_baseline_mib"] = round((figures["peak_kib"] - figures["baseline_kib"])
                                          / 1024, 1)
    return figures


def _spool_file(spool):
    new = os.path.join(spool, "new")
    [name] = [n for n in os.listdir(new) if not n.startswith(".")]
    return os.path.join(new, name)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_sink():
    port = _free_port()
    if SMTP_SINK.exists():
        env = dict(os.environ, LD_LIBRARY_PATH=str(ROOT / ".deps/postfix/usr/lib/postfix"))
        user = ["-u", "nobody"] if os.getuid() == 0 else []
        process = subprocess.Popen([str(SMTP_SINK), *user, f"127.0.0.1:{port}", "16"],
                                   env=env, stderr=subprocess.DEVNULL)
        name = "smtp-sink"
    else:
        code = ("import sys, time\nfrom aiosmtpd.controller import Controller\n"
                "class H:\n    async def handle_DATA(self, s, se, e):\n"
                "        return '250 OK'\n"
                "c = Controller(H(), hostname='127.0.0.1', port=int(sys.argv[1]), "
                "data_size_limit=0)\nc.start()\ntime.sleep(3600)\n")
        process = subprocess.Popen([sys.executable, "-c", code, str(port)])
        name = "aiosmtpd"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return name, port, process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{name} did not start on port {port}")


def run(size_mb=50) -> dict:
    """Measure every leg; returns a JSON-able dict (MiB figures, ratios to the message)."""
    work = tempfile.mkdtemp(prefix="txmail-bench-attach-")
    try:
        path = os.path.join(work, "report.bin")
        with open(path, "wb") as f:  # written in blocks: the parent stays small too
            for _ in range(size_mb):
                f.write(os.urandom(MIB))
        results = {"attachment_mib": size_mb}
        for leg, spool in (("builder_queue", "spool"), ("pyramid_mailer_queue", "pm-spool")):
            spool = os.path.join(work, spool)
            figures = _measure(leg, path, spool)
            figures["message_mib"] = round(os.path.getsize(_spool_file(spool)) / MIB, 1)
            figures["ratio_to_message"] = round(figures["above_baseline_mib"]
                                                / figures["message_mib"], 2)
            results[leg] = figures
        sink, port, process = _start_sink()
        try:
            smtp_legs = {"processor_smtp": _measure("processor_smtp",
                                                    os.path.join(work, "spool"), str(port)),
                         "builder_direct": _measure("builder_direct", path, str(port))}
        finally:
            process.terminate()
            process.wait(10)
        for leg, figures in smtp_legs.items():
            figures["sink"] = sink
            figures["message_mib"] = results["builder_queue"]["message_mib"]
            figures["ratio_to_message"] = round(figures["above_baseline_mib"]
                                                / figures["message_mib"], 2)
            results[leg] = figures
        results["builder_vs_pyramid_mailer"] = round(
            results["builder_queue"]["above_baseline_mib"]
            / max(results["pyramid_mailer_queue"]["above_baseline_mib"], 0.1), 3)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=50, help="attachment size (MiB)")
    options = parser.parse_args(argv)
    print(json.dumps(run(options.size_mb), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
