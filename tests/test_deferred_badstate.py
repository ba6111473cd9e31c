"""A bad name in ``deferred/`` or a bad value in a state file stays with its one message.

Issue 11 hardening, round 2 (probe11b items 3 and 4):

* a hand-made ``deferred/`` name with the indexed shape but a date that does
  not exist (``20261399T999999.999Z~NAME``) crashed the daemon's timer at
  every restart and was never due;
* an older version's (plain-named) deferred file whose state file said
  ``next_attempt`` = 1e20, NaN or Infinity raised inside the workers' job
  listing: no deferred message was sent again, the pass said errors=0, the
  traceback went to stderr only, and ``txmail-queue status`` crashed.

Real parts: aiosmtpd on 127.0.0.1, the real Processor, and the real
``txmail-qp``/``txmail-queue`` console scripts as subprocesses.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from pyramid_txmail.queue.maildir import schedule
from pyramid_txmail.queue.maildir import spool_admin as admin
from pyramid_txmail.processor.daemon import Daemon
from pyramid_txmail.scripts import queue as cli
from pyramid_txmail.queue.maildir.spool import Spool

from .test_daemon import received, setup_for, wait_for_log, wait_until  # noqa: F401
from .test_deferred_index import processor
from .test_processor import FROM, clock, message, spool  # noqa: F401 -- fixtures
from .test_queue_cli import _restore_logging  # noqa: F401 -- autouse fixture

BIN = os.path.dirname(sys.executable)
BAD_STAMPS = ["20261399T999999.999Z", "20260230T120000.000Z", "00000101T000000.000Z",
              "20261201T246000.000Z", "2026\u0661201T120000.000Z"]
BAD_NUMBERS = ["1e20", "-1e20", "NaN", "Infinity", "-Infinity", '"soon"', "true", "[1]",
               "{}", "1e400"]


def park(spool, filename, to, meta_text=None, msgid=None):
    """A message in ``deferred/FILENAME`` and, given, its state file's raw JSON text."""
    name = spool.write_tmp(FROM, [to], message(msgid=msgid or f"<{to}>"))
    os.rename(os.path.join(spool.path, "tmp", name),
              os.path.join(spool.path, "deferred", filename.replace("NAME", name)))
    if meta_text is not None:
        with open(os.path.join(spool.path, "meta", name + ".json"), "w") as f:
            f.write(meta_text)
    return name


def meta_text(next_attempt, attempts="1", first="1600000000"):
    return (f'{{"attempts": {attempts}, "first_attempt": {first}, "last_attempt": {first}, '
            f'"queued_at": {first}, "next_attempt": {next_attempt}, "delivered": [], '
            f'"failed_recipients": [], "history": []}}')


def recipients(server):
    return sorted(r for m in server.messages for r in m.rcpt_tos)


def ini_for(spool):
    ini = os.path.join(os.path.dirname(spool.path), "q.ini")
    with open(ini, "w") as f:
        f.write(f"[app:main]\nmail.queue_path = {spool.path}\n")
    return ini


def queue_cli(spool, *args):
    """The real ``txmail-queue`` console script."""
    return subprocess.run([os.path.join(BIN, "txmail-queue"), ini_for(spool), *args],
                          capture_output=True, text=True, timeout=60)


def queue_main(spool, capsys, *args):
    """``txmail-queue``'s main() in this process (many cases: no interpreter start-up each)."""
    try:
        code = cli.main([ini_for(spool), *args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


CLI_CALLS = (["status"], ["status", "--json"], ["list"], ["list", "--json"], ["show", "ID"],
             ["show", "ID", "--json"])


def check_cli(run, name):
    """status, list and show (also --json) exit 0 with no traceback; JSON is strict."""
    for args in CLI_CALLS:
        args = [name if a == "ID" else a for a in args]
        done = run(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert "Traceback" not in done.stderr and "unexpected error" not in done.stderr
        if "--json" in args:
            json.loads(done.stdout, parse_constant=pytest.fail)  # no NaN, no Infinity


# -- item 3: a name whose due part does not parse ---------------------------------

@pytest.mark.parametrize("bad", BAD_STAMPS)
def test_a_deferred_name_whose_date_does_not_exist_is_read_from_its_state_file(
        spool, clock, smtp_server, bad):
    """Due by its state file → sent; not due → renamed to its right indexed name.
    Neither the timer, the status, the listing nor ``show`` raises meanwhile."""
    due = park(spool, bad + "~NAME", "due@example.org", meta_text(clock.now - 5))
    later = park(spool, bad + "~NAME", "later@example.org", meta_text(clock.now + 600))
    bare = park(spool, bad + "~NAME", "bare@example.org")  # no state file: due
    assert sorted(spool.names("deferred")) == sorted([due, later, bare])
    assert admin.status(spool, now=clock.now)["deferred_due"] == 2
    assert {m.name for m in admin.messages(spool)} == {due, later, bare}
    assert admin.find(spool, later).name == later
    qp = processor(smtp_server, spool, clock)
    daemon = Daemon(spool, qp.settings, qp.run_once, None, None, None, rescan=7200,
                    clock=clock)
    assert daemon.next_wake_in() <= 1.0  # due now (the timer's floor)

    stats = qp.run_once()
    assert (stats.sent, stats.skipped, stats.errors) == (2, 1, 0)
    assert recipients(smtp_server) == ["bare@example.org", "due@example.org"]
    [indexed] = os.listdir(os.path.join(spool.path, "deferred"))
    assert indexed == schedule.indexed_name(clock.now + 600, later)
    assert 599 <= daemon.next_wake_in() <= 601
    clock.advance(601)
    assert qp.run_once().sent == 1 and not spool.names("deferred")


def test_the_daemon_survives_a_deferred_name_whose_date_does_not_exist(
        tmp_path, setup_for, smtp_server):
    """``txmail-qp --daemon`` exited 1 at every start (ValueError in its timer)."""
    s = setup_for(smtp_server)
    [message_id] = s.queue()
    [name] = s.spool.names("new")
    os.rename(os.path.join(s.spool.path, "new", name),
              os.path.join(s.spool.path, "deferred", "20261399T999999.999Z~" + name))
    proc = s.start()
    wait_for_log(proc, "daemon started")
    wait_until(lambda: len(received(smtp_server)) == 2, what="the message at the server")
    wait_until(lambda: not s.spool.names("deferred"), what="deferred/ to empty")
    assert proc.poll() is None, log_text(proc)
    assert s.stop(proc) == 0
    assert "Traceback" not in log_text(proc)


def log_text(proc):
    return proc.log_path.read_text()


# -- item 4: a bad number in a state file -----------------------------------------

def test_txmail_queue_reports_a_spool_whose_state_file_says_infinity(spool, clock):
    """The probe's case, through the real console script: ``status`` crashed.
    (Every other bad value: in-process below.)"""
    bad = "Infinity"
    odd = park(spool, "NAME", "odd@example.org", meta_text(bad, first=clock.now - 60))
    park(spool, "20200101T000000.000Z~NAME", "old@example.org", meta_text(1577836800))
    check_cli(lambda *args: queue_cli(spool, *args), odd)
    done = queue_cli(spool, "show", odd)
    assert "next attempt:   inf (not a time)" in done.stdout
    assert "deferred/" in queue_cli(spool, "status").stdout


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_a_bad_next_attempt_in_an_unindexed_file_does_not_block_the_deferred_queue(
        spool, clock, smtp_server, bad, caplog):
    """The bad one is treated as due (its next attempt is unknown) and sent; the
    message due since 2020 behind it is sent too; the bad value is logged with
    the message's name."""
    odd = park(spool, "NAME", "odd@example.org", meta_text(bad))
    old = park(spool, "20200101T000000.000Z~NAME", "old@example.org",
               meta_text(1577836800))
    qp = processor(smtp_server, spool, clock)
    with caplog.at_level(logging.WARNING, "pyramid_txmail"):
        stats = qp.run_once()
    assert recipients(smtp_server) == ["odd@example.org", "old@example.org"]
    assert (stats.sent, stats.errors) == (2, 0)
    assert not any(spool.names(s) for s in ("new", "cur", "deferred", "failed"))
    assert any(odd in r.getMessage() and "next_attempt" in r.getMessage()
               for r in caplog.records), caplog.text


@pytest.mark.parametrize("bad", BAD_NUMBERS)
@pytest.mark.parametrize("key", ["next_attempt", "attempts", "first_attempt",
                                 "last_attempt", "queued_at"])
def test_a_bad_number_anywhere_in_a_state_file_stays_with_its_message(
        spool, clock, make_smtp_server, key, bad, caplog, capsys):
    """status, list and show (the real txmail-queue) and a pass all get through;
    the message is tried, deferred again with sane numbers, and the other one
    is sent."""
    server = make_smtp_server({"rcpt": ["451 4.3.0 try later", "250 OK"]})
    recent = clock.now - 60
    meta = json.loads(meta_text(recent, first=recent))
    text = json.dumps(meta).replace(f'"{key}": {json.dumps(meta[key])}', f'"{key}": {bad}')
    assert bad in text
    odd = park(spool, "NAME", "odd@example.org", text)
    old = park(spool, "20200101T000000.000Z~NAME", "old@example.org",
               meta_text(1577836800))
    check_cli(lambda *args: queue_main(spool, capsys, *args), odd)
    qp = processor(server, spool, clock)
    with caplog.at_level(logging.WARNING, "pyramid_txmail"):
        stats = qp.run_once()
    assert stats.errors == 0, caplog.text
    assert (stats.deferred, stats.sent) == (1, 1)
    assert recipients(server) == ["old@example.org"]
    state = spool.read_meta(odd)
    for number in ("attempts", "first_attempt", "last_attempt", "next_attempt",
                   "queued_at"):
        value = state[number]
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        assert 0 <= value < clock.now + 86400 * 10, (number, value)
    assert state["next_attempt"] > clock.now
    assert any(odd in r.getMessage() and key in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content", ["[]", "42", '"text"', "null"])
def test_a_state_file_that_is_not_an_object_dead_letters_its_message_only(
        spool, clock, smtp_server, content, capsys):
    """Whom it reached is unknown: dead-lettered with the reason, never guessed."""
    odd = park(spool, "NAME", "odd@example.org", content)
    park(spool, "20200101T000000.000Z~NAME", "old@example.org", meta_text(1577836800))
    check_cli(lambda *args: queue_main(spool, capsys, *args), odd)
    stats = processor(smtp_server, spool, clock).run_once()
    assert (stats.sent, stats.failed, stats.errors) == (1, 1, 0)
    assert recipients(smtp_server) == ["old@example.org"]
    [failed] = spool.names("failed")
    assert failed == odd and "not a JSON object" in spool.read_meta(odd)["reason"]


def test_an_error_while_listing_the_deferred_jobs_is_counted_and_logged(
        spool, clock, smtp_server, monkeypatch, caplog):
    """Whatever goes wrong with one file while the due ones are found stays with it:
    the pass counts an error, logs it (with the file's name) through logging,
    and sends the other messages."""
    odd = park(spool, "NAME", "odd@example.org", meta_text(clock.now + 600))
    park(spool, "20200101T000000.000Z~NAME", "old@example.org", meta_text(1577836800))
    real_index = Spool.index

    def broken_index(self, filename, due):
        if filename == odd:
            raise PermissionError(13, "Permission denied")
        return real_index(self, filename, due)

    monkeypatch.setattr(Spool, "index", broken_index)
    with caplog.at_level(logging.WARNING, "pyramid_txmail"):
        stats = processor(smtp_server, spool, clock).run_once()
    assert recipients(smtp_server) == ["old@example.org"]
    assert stats.errors == 1 and stats.sent == 1
    assert any(odd in r.getMessage() and r.exc_info for r in caplog.records), caplog.text
    assert spool.names("deferred") == [odd]


# -- a sibling: the enqueue time in a Maildir name -----------------------------------

@pytest.mark.parametrize("head", ["-5", "-99999999999", "99999999999999"])
def test_a_queue_file_name_whose_time_is_no_time_is_sent_and_listed(
        spool, clock, make_smtp_server, head, capsys):
    """``-5.M1P1.host`` in new/: its age is unknown (the file's mtime), so a
    temporary failure defers it rather than dead-lettering it as expired (or
    never expiring), and txmail-queue prints strict JSON."""
    server = make_smtp_server({"rcpt": "451 4.3.0 try later"})
    name = spool.write_tmp(FROM, ["odd@example.org"], message())
    spool.commit_tmp([name])
    odd = f"{head}.M1P1.host"
    os.rename(os.path.join(spool.path, "new", name), os.path.join(spool.path, "new", odd))
    check_cli(lambda *args: queue_main(spool, capsys, *args), f"new/{odd}")
    stats = processor(server, spool, clock).run_once()
    assert (stats.deferred, stats.failed, stats.errors) == (1, 0, 0)
    assert 0 < spool.read_meta(odd)["queued_at"] <= clock.now
    check_cli(lambda *args: queue_main(spool, capsys, *args), f"deferred/{odd}")
