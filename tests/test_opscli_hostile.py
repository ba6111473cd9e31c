"""No raw control character reaches a terminal or a log file (issue 15, item 3).

Real ``txmail-qp`` and ``txmail-queue`` subprocesses over a spool full of
hostile text: Subjects, Message-IDs, quoted local parts with ESC, BEL, CR
and a right-to-left override, a file name with a newline, relay replies
(the fault server) and an exception text quoted by a traceback (a
``mail.commit_check`` that raises with the Message-ID).  Every byte of
their stdout, stderr and the ini's log file is checked: only ``\\n`` and
``\\t`` may be control characters, as text and as JSON lines.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.parse

import pytest

from pyramid_txmail.util.printable import FORMAT_CHARACTERS

from .claims_support import PROC_TIMEOUT, QP, QUEUE, make_spool
from .faultserver import fault_server

ESC = "\x1b"
#: ESC sequences, BEL, CR, a bare LF, bidi overrides, C1 controls, line separators.
EVIL = (f"ev{ESC}[2J{ESC}]0;pwned\x07il\r\nFAKE 2026 ERROR\u202eesrever\u2066\x9b31m\u2028x"
        "\u200fRLM\u061cALM\ufeff")
#: ... and every format character (Unicode Cf: RLM, ALM, BOM, zero-width...) and surrogate
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff"
                 + FORMAT_CHARACTERS + "]")
LOCAL = f'"bob{ESC}[31m\x07\u202e evil"'  # a quoted local part may hold nearly anything


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv):
    """A console script, bytes out, with this checkout on its path (for commit_check)."""
    env = dict(os.environ, PYTHONPATH=ROOT, NO_COLOR="")
    return subprocess.run(argv, capture_output=True, timeout=PROC_TIMEOUT, env=env)


def raises_hostile(message_id, registry):
    """The ``mail.commit_check`` of an app whose database error quotes the Message-ID."""
    raise LookupError(f"no order row for {message_id} {EVIL}")


def _ini(tmp_path, server, log_format="text"):
    log = tmp_path / "txmail.log"
    text = f"""\
[app:main]
use = egg:pyramid_txmail
mail.queue_path = {tmp_path / 'spool'}
mail.host = {server.host}
mail.port = {server.port}
mail.timeout = 10
mail.commit_check = tests.test_opscli_hostile:raises_hostile
mail.commit_grace = 600
mail.log_format = {log_format}

[loggers]
keys = root, txmail

[handlers]
keys = console, file

[formatters]
keys = generic

[logger_root]
level = INFO
handlers = console

[logger_txmail]
level = DEBUG
handlers = file
qualname = pyramid_txmail

[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic

[handler_file]
class = FileHandler
args = ({str(log)!r}, 'a')
formatter = generic

[formatter_generic]
format = %(asctime)s %(levelname)s [%(name)s] %(message)s
"""
    path = tmp_path / "app.ini"
    path.write_text(text)
    return str(path), log


def _hostile_spool(tmp_path):
    spool = make_spool(tmp_path)
    subject = f"Hi {EVIL}".replace("\r\n", " ")  # one header line, hostile inside
    for i, to in enumerate(["ok@example.org", "gone@example.org"]):
        data = (f"From: {LOCAL}@example.org\nTo: {LOCAL}@example.org\nSubject: {subject}\n"
                f"Message-ID: <{i}{ESC}[2J\u202e@example.org>\n\nbody {EVIL}\n").encode()
        name = spool.write_tmp("s@example.org", [to], data)
        spool.commit_tmp([name])
    # the spool's writer refuses control characters in the envelope: a hand-made file
    # (or another writer) brings them percent-encoded
    hostile_to = urllib.parse.quote(f"{LOCAL}@example.org", safe="@")
    with open(os.path.join(spool.path, "new", "1700000001.M2P2Q2.host"), "wb") as f:
        f.write(f"From txmail-envelope-1 s@example.org {hostile_to}\n"
                f"Subject: {subject}\nMessage-ID: <env@example.org>\n\nbody\n".encode())
    with open(os.path.join(spool.path, "new", "1700000000.M1P1Q1." + EVIL), "wb"):
        pass  # an empty file with a hostile name: a poison message
    # a commit that crashed in doubt: commit_check raises, its traceback quotes the id
    data = (f"From: s@example.org\nTo: a@example.org\nSubject: {subject}\n"
            f"Message-ID: <doubt{ESC}[2J@example.org>\n\nbody\n").encode()
    prepared = spool.prepare("s@example.org", ["a@example.org"], data)
    path = os.path.join(spool.path, "prepared", prepared)
    then = time.time() - 3600
    os.utime(path, (then, then))
    return spool


def _assert_clean(what, data):
    text = data.decode("utf-8", "strict") if isinstance(data, bytes) else data
    found = sorted({m.group() for m in RAW.finditer(text)})
    assert not found, f"{what} has raw control characters {found!r}:\n{text[:3000]}"
    assert not any(line.startswith("FAKE") for line in text.splitlines()), what


@pytest.fixture
def relay(make_smtp_server):
    reply = f"550 5.1.1 no {ESC}[5m such\x07 user \u202e{ESC}]0;t\x07 x"
    return fault_server(make_smtp_server, {"rcpt": {"gone@example.org": reply}})


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_qp_and_queue_print_and_log_no_raw_control_character(tmp_path, relay, log_format):
    spool = _hostile_spool(tmp_path)
    ini, log = _ini(tmp_path, relay, log_format)
    done = run(QP, ini, "--no-app", "-v")
    assert done.returncode in (0, 1), done.stderr
    outputs = [("txmail-qp stdout", done.stdout), ("txmail-qp stderr", done.stderr)]
    assert "mail.commit_check raised" in log.read_text()
    assert "no order row for" in log.read_text()  # the traceback's text, escaped
    assert spool.names("failed"), "the hostile reply and the poison file dead-letter"
    failed = spool.names("failed")
    for argv in (["status"], ["list"], ["list", "--state", "failed", "--json"],
                 ["list", "--reason", "such"], ["list", "--to", f"{LOCAL}@EXAMPLE.org"],
                 ["show", failed[0], "--body"], ["show", failed[0], "--json"],
                 ["watch", "--count", "1"], ["purge", "--state", "failed", "--all",
                                             "--dry-run"],
                 ["retry", "--all-failed", "-v"], ["list", "--state", EVIL],
                 ["show", EVIL]):
        got = run(QUEUE, ini, *argv)
        assert got.returncode in (0, 1, 2), (argv, got.stderr)
        outputs += [(f"txmail-queue {argv} stdout", got.stdout),
                    (f"txmail-queue {argv} stderr", got.stderr)]
    outputs.append(("the log file", log.read_bytes()))
    for what, data in outputs:
        _assert_clean(what, data)
    if log_format == "json":
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert {"time", "level", "logger", "message"} <= set(records[0])
        dead = [r for r in records if r["message"].startswith("dead letter <1")]
        assert dead and dead[0]["message_id"].startswith("<1")
        assert dead[0]["code"] == 550 and dead[0]["attempt"] == 1
        assert dead[0]["recipient"] == "gone@example.org"


def test_usage_errors_quote_hostile_arguments_escaped(tmp_path, relay):
    """argparse quotes what it did not understand: a pasted ESC sequence must not reach
    the terminal through ``unrecognized arguments`` or ``invalid choice``."""
    ini, _ = _ini(tmp_path, relay)
    _hostile_spool(tmp_path)
    for argv in ([QUEUE, ini, "list", EVIL], [QUEUE, ini, EVIL], [QUEUE, ini, "list",
                                                                  "--limit", EVIL],
                 [QP, ini, "--" + EVIL], [QP, ini, "--workers", EVIL]):
        got = run(*argv)
        assert got.returncode == 2, argv
        _assert_clean(f"{argv[0]} {argv[2:]} stderr", got.stderr)
        assert b"\\x1b[2J" in got.stderr  # said, escaped


def test_an_apps_ini_can_name_our_formatters(tmp_path):
    """The web app's logging is its own: its ini names SafeFormatter (with its format)
    or JsonFormatter, and gets the same escaping as the command-line tools."""
    import logging
    import logging.config

    out = tmp_path / "app.log"
    ini = tmp_path / "logging.ini"
    ini.write_text(f"""\
[loggers]
keys = root, txmail
[handlers]
keys = text, json
[formatters]
keys = safe, json
[logger_root]
level = WARNING
handlers =
[logger_txmail]
level = INFO
handlers = text, json
qualname = pyramid_txmail.test_app
propagate = 0
[handler_text]
class = FileHandler
args = ({str(out)!r}, 'a')
formatter = safe
[handler_json]
class = FileHandler
args = ({str(out)!r}, 'a')
formatter = json
[formatter_safe]
class = pyramid_txmail.util.logformat.SafeFormatter
format = %(levelname)s [%(name)s] %(message)s
[formatter_json]
class = pyramid_txmail.util.logformat.JsonFormatter
""")
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logging.config.fileConfig(str(ini), disable_existing_loggers=False)
        logging.getLogger("pyramid_txmail.test_app").warning(
            "reply %s", EVIL, extra={"message_id": "<a@example.org>", "code": 451})
    finally:
        for handler in logging.getLogger("pyramid_txmail.test_app").handlers:
            handler.close()
        logging.getLogger("pyramid_txmail.test_app").handlers[:] = []
        root.handlers[:], root.level = saved[0], saved[1]
    text_line, json_line = out.read_text().splitlines()
    _assert_clean("the app's log", out.read_bytes())
    assert text_line.startswith("WARNING [pyramid_txmail.test_app] reply ev\\x1b[2J")
    record = json.loads(json_line)
    assert (record["message"], record["message_id"], record["code"]) == (
        f"reply {EVIL}", "<a@example.org>", 451)
