"""Nothing from outside reaches a terminal or a log raw (issue 11, round 2, finding 4).

Hostile file names (a newline, ESC sequences), headers and server replies:
``txmail-queue list``/``show``/``purge`` and ``txmail-qp``'s log lines show
their control characters as escapes (:mod:`pyramid_txmail.util.printable`).
"""
from __future__ import annotations

import os

from pyramid_txmail.util.printable import get_logger, printable

from .claims_support import QP, QUEUE, make_spool, run, write_ini

ESC = "\x1b"
EVIL = "evil\x1b[2J\nFAKE row\x1b]0;title\x07"


def _hostile_spool(tmp_path):
    spool = make_spool(tmp_path)
    message = (f"From: s@example.org\nTo: a@example.org\nSubject: hi {ESC}[31mred\n"
               f"Message-ID: <{ESC}[2Jx@example.org>\n\nbody\n").encode()
    name = spool.write_tmp("s@example.org", ["a@example.org"], message)
    spool.commit_tmp([name])
    with open(os.path.join(spool.path, "new", "1700000000.M1P1Q1." + EVIL), "wb"):
        pass  # an empty file with a hostile name: a poison message
    return spool, name


def _clean(text):
    assert ESC not in text and "\x07" not in text
    assert not any(line.startswith("FAKE") for line in text.splitlines()), text


def test_the_processor_logs_hostile_names_headers_and_replies_escaped(tmp_path,
                                                                     make_smtp_server):
    server = make_smtp_server({"rcpt": f"450 4.2.0 busy {ESC}[5m now"})
    spool, _ = _hostile_spool(tmp_path)
    ini = write_ini(tmp_path, server)
    done = run(QP, ini, "--no-app", "-v")
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "\\x1b[2J" in out and "busy \\x1b[5m" in out  # said, escaped
    _clean(out)


def test_txmail_queue_prints_hostile_names_escaped(tmp_path, make_smtp_server):
    server = make_smtp_server({"rcpt": f"450 4.2.0 busy {ESC}[5m now"})
    spool, name = _hostile_spool(tmp_path)
    ini = write_ini(tmp_path, server)
    run(QP, ini, "--no-app")  # one deferred, one dead letter with the hostile name
    for argv in (["list"], ["list", "--state", "failed"], ["status"], ["show", name],
                 ["purge", "--state", "failed", "--all"]):
        done = run(QUEUE, ini, *argv)
        assert done.returncode in (0, 1), done.stderr
        _clean(done.stdout + done.stderr)
    listed = run(QUEUE, ini, "list").stdout
    assert len(listed.splitlines()) == 2  # header and the deferred one: one row each


def test_the_logger_escapes_every_argument(caplog):
    log = get_logger("pyramid_txmail.test")
    with caplog.at_level("INFO", logger="pyramid_txmail.test"):
        log.info("%s sent %d, %r", EVIL, 3, EVIL)
        try:
            raise ValueError(EVIL)
        except ValueError as exc:
            log.exception("failed: %s", exc)
    for record in caplog.records:
        _clean(record.getMessage())
    assert caplog.records[0].getMessage().startswith(printable(EVIL) + " sent 3, ")
    assert caplog.records[0].funcName == "test_the_logger_escapes_every_argument"
