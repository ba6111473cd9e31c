"""The whole path into Postfix's smtp-sink (Debian's postfix package, unpacked by the
Makefile): request.mailer → spool → the real ``txmail-qp`` → a real Postfix SMTP peer."""
from __future__ import annotations

import email
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import webtest

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.relay.smtp import SMTPTransport
from pyramid_txmail.queue.maildir.spool import Spool

from .app import main
from .smtpserver import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent / ".deps" / "postfix"
SINK = ROOT / "usr" / "sbin" / "smtp-sink"
QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")


class Sink:
    """smtp-sink on 127.0.0.1, dumping each transaction into ``directory``."""

    def __init__(self, directory, *options):
        if not SINK.exists():
            pytest.fail(f"{SINK} is missing: run `make test`, which unpacks Debian's "
                        "postfix package there")
        self.directory = directory
        directory.mkdir(exist_ok=True)
        directory.chmod(0o777)  # smtp-sink drops root privileges to nobody
        self.port = free_port()
        env = dict(os.environ, LD_LIBRARY_PATH=str(ROOT / "usr" / "lib" / "postfix"))
        user = ["-u", "nobody"] if os.getuid() == 0 else []
        self.process = subprocess.Popen(
            [str(SINK), *user, *options, "-d", f"{directory}/%Y%m%d%H%M%S.",
             f"127.0.0.1:{self.port}", "50"], env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("smtp-sink did not start: " + self.process.stderr.read().decode())

    def dumps(self):
        found = []
        for path in sorted(self.directory.iterdir()):
            # smtp-sink prepends its X-* fields and a Received: line to the headers.
            msg = email.message_from_bytes(path.read_bytes())
            found.append((msg["X-Mail-Args"], msg.get_all("X-Rcpt-Args"), msg))
        return found

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def sink_factory():
    # Not under tmp_path: pytest makes its parents 0700, and smtp-sink writes as nobody.
    sinks, base = [], pathlib.Path(tempfile.mkdtemp(prefix="txmail-sink-"))
    base.chmod(0o755)

    def make(*options):
        sinks.append(Sink(base / f"sink{len(sinks)}", *options))
        return sinks[-1]

    yield make
    for sink in sinks:
        sink.stop()
    shutil.rmtree(base)


def wait_for(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_committed_mail_reaches_postfix_smtp_sink_through_txmail_qp(tmp_path, sink_factory):
    sink = sink_factory()
    spool = tmp_path / "spool"
    app = webtest.TestApp(main({"mail.queue_path": str(spool)}))
    ids = app.get("/send", {"count": "20", "to": "a@example.com", "bcc": "b@example.com"}
                  ).text.split("\n")
    app.get("/abort")
    ini = tmp_path / "qp.ini"
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {spool}\n"
                   f"mail.host = 127.0.0.1\nmail.port = {sink.port}\n")
    done = subprocess.run([QP, str(ini), "--no-app"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: len(sink.dumps()) == 20)
    dumps = sink.dumps()
    assert sorted(m["Message-ID"] for _, _, m in dumps) == sorted(ids)
    for mail_from, rcpts, msg in dumps:
        assert mail_from == "<sender@example.com>"
        assert rcpts == ["<a@example.com>", "<b@example.com>"]
        assert msg["Bcc"] is None and "X-Actually-To" not in msg
    assert Spool(str(spool)).names("new") == [] and os.listdir(spool / "cur") == []


@pytest.mark.parametrize("option, state", [("-r", "deferred"), ("-f", "failed")])
def test_postfix_rejections_defer_or_dead_letter(tmp_path, sink_factory, option, state):
    sink = sink_factory(option, "RCPT")  # soft (4xx) or hard (5xx) reject of RCPT TO
    spool = Spool(str(tmp_path / "spool"))
    app = webtest.TestApp(main({"mail.queue_path": spool.path}))
    app.get("/send")
    settings = parse_settings({"mail.queue_path": spool.path, "mail.host": "127.0.0.1",
                               "mail.port": str(sink.port)})
    with SMTPTransport.from_settings(settings) as transport:
        Processor(spool, transport, settings).run_once()
    assert spool.count(state) == 1 and spool.count("new") == 0
    meta = spool.read_meta(spool.names(state)[0])
    code = meta["history"][-1]["results"][0]["code"]
    assert code // 100 == (4 if state == "deferred" else 5)
    assert sink.dumps() == []
