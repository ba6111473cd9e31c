"""``txmail-queue``: the real console script and main() over a spool filled by real sends.

Every state is reached the way it is in production: messages written and
committed through the Spool, passed through the Processor against aiosmtpd
scripted to answer 451 / 550, claimed the way a processor claims them.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from pyramid_txmail.queue.maildir import spool_admin as admin
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.scripts import queue as cli
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.relay.smtp import SMTPTransport
from pyramid_txmail.queue.maildir.spool import Spool

BIN = os.path.dirname(sys.executable)
QUEUE = os.path.join(BIN, "txmail-queue")
QP = os.path.join(BIN, "txmail-qp")
FROM = "sender@example.org"
PASSWORD = "Xyzzy-s3cret-Pa55"
DAY = 86400.0
REFUSING = {"rcpt": {"later@example.org": "451 4.3.0 mailbox busy, try later",
                     "gone@example.org": "550 5.1.1 no such user here"}}


def write_ini(tmp_path, server=None, password=PASSWORD, extra="", name="app.ini"):
    lines = ["[app:main]", "use = egg:pyramid_txmail",
             f"mail.queue_path = {tmp_path / 'spool'}", "mail.timeout = 10"]
    if server is not None:
        lines += [f"mail.host = {server.host}", f"mail.port = {server.port}"]
    if password:
        lines += ["mail.username = mailer", f"mail.password = {password}"]
    path = tmp_path / name
    path.write_text("\n".join(lines + [extra]) + "\n")
    return str(path)


def run_queue(ini, *args):
    return subprocess.run([QUEUE, ini, *args], capture_output=True, text=True, timeout=60)


def enqueue(spool, toaddrs, msgid, subject="Hello", commit=True):
    data = (f"From: {FROM}\nTo: {', '.join(toaddrs)}\nSubject: {subject}\n"
            f"Message-ID: {msgid}\n\nThe body of {msgid}.\n").encode()
    name = spool.write_tmp(FROM, list(toaddrs), data)
    if commit:
        spool.commit_tmp([name])
    return name


def send_pass(spool, server, clock=time.time):
    """One real processor pass over ``spool`` through ``server``."""
    settings = parse_settings({"mail.host": server.host, "mail.port": str(server.port),
                               "mail.queue_path": spool.path, "mail.timeout": "10"})
    with SMTPTransport.from_settings(settings) as transport:
        return Processor(spool, transport, settings, clock=clock,
                         rand=lambda: 0.5).run_once()


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() in-process configures logging; put the process's logging back."""
    root, ours = logging.getLogger(), logging.getLogger("pyramid_txmail")
    saved = (list(root.handlers), root.level, ours.level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    ours.setLevel(saved[2])


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path / "spool"))


@pytest.fixture
def refusing(make_smtp_server):
    return make_smtp_server(REFUSING)


@pytest.fixture
def filled(spool, refusing):
    """A spool with mail in every state, reached by really sending.

    deferred: <later@…> (451); failed: <gone@…> (550, whole message) and the
    dead-letter copy of <split@…> for gone@ (ok@ accepted it); new: <fresh@…>;
    cur: <sending@…> claimed as a processor claims; tmp: <writing@…> uncommitted.
    """
    names = {"later": enqueue(spool, ["later@example.org"], "<later@example.org>"),
             "gone": enqueue(spool, ["gone@example.org"], "<gone@example.org>",
                             subject="Bounce \x1b[31mme\x1b[0m"),
             "split": enqueue(spool, ["ok@example.org", "gone@example.org"],
                              "<split@example.org>")}
    stats = send_pass(spool, refusing)
    assert (stats.sent, stats.deferred, stats.failed) == (0, 1, 2)
    [copy] = [n for n in spool.names("failed") if n != names["gone"]]
    names["split-copy"] = copy
    names["fresh"] = enqueue(spool, ["new@example.org"], "<fresh@example.org>")
    names["sending"] = enqueue(spool, ["cur@example.org"], "<sending@example.org>")
    assert spool.claim("new", names["sending"]) is not None
    names["writing"] = enqueue(spool, ["tmp@example.org"], "<writing@example.org>",
                               commit=False)
    return names


def call(capsys, *argv):
    """main() in this process: (exit code, stdout, stderr); argparse's exits included."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# -- status ---------------------------------------------------------------------------

def test_status_json_has_an_integer_count_per_state(tmp_path, spool, filled):
    proc = run_queue(write_ini(tmp_path), "status", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    counts = {k: info[k] for k in ("queued", "in_progress", "deferred", "failed", "tmp")}
    assert counts == {"queued": 1, "in_progress": 1, "deferred": 1, "failed": 2, "tmp": 1}
    assert all(type(v) is int for v in counts.values())
    assert info["next_retry"] == spool.read_meta(filled["later"])["next_attempt"]
    assert info["next_retry_in"] > 200  # retry_initial 300 s, no jitter
    assert info["deferred_due"] == 0
    assert info["states"]["failed"]["oldest_age"] >= 0
    assert info["oldest_age"] >= info["states"]["new"]["oldest_age"]


def test_status_on_an_empty_spool_and_in_words(tmp_path, spool, filled, capsys):
    ini = write_ini(tmp_path)
    code, out, _ = call(capsys, ini, "status")
    assert code == 0
    assert f"spool: {spool.path}" in out
    lines = {line.split()[0]: line for line in out.splitlines()[1:6]}
    assert lines["queued"].split()[1:3] == ["new/", "1"]
    assert lines["failed"].split()[1:3] == ["failed/", "2"]
    assert "next retry" in lines["deferred"] and "(in 4m" in lines["deferred"]
    for name in ("later", "gone", "split-copy", "fresh", "sending", "writing"):
        for state in admin.ALL_STATES:
            for found, filename in admin.files(spool, state):  # deferred/: DUE~NAME
                if found == filled[name]:
                    os.unlink(os.path.join(spool.path, state, filename))
    code, out, _ = call(capsys, ini, "status", "--json")
    info = json.loads(out)
    assert [info[k] for k in ("queued", "in_progress", "deferred", "failed", "tmp")] == [0] * 5
    assert info["oldest_age"] is None and info["next_retry"] is None


# -- list -------------------------------------------------------------------------------

def test_list_shows_every_state_but_tmp_one_line_each(tmp_path, filled, capsys):
    code, out, _ = call(capsys, write_ini(tmp_path), "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["ID", "STATE", "AGE", "TRIES"]
    by_name = {row.split()[0]: row for row in rows}
    assert set(by_name) == {filled[k] for k in ("later", "gone", "split-copy", "fresh",
                                                "sending")}
    assert "deferred" in by_name[filled["later"]]
    assert "451 4.3.0 mailbox busy" in by_name[filled["later"]]
    assert "550 5.1.1 no such user" in by_name[filled["gone"]]
    assert f"{FROM} -> later@example.org | Hello |" in by_name[filled["later"]]
    assert "in_progress" in by_name[filled["sending"]]
    # a hostile Subject is printed with its control characters escaped
    assert "Bounce \\x1b[31mme\\x1b[0m" in by_name[filled["gone"]]
    assert "\x1b" not in out


def test_list_state_filter_and_json(tmp_path, filled):
    ini = write_ini(tmp_path)
    proc = run_queue(ini, "list", "--state", "failed", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["id"] for r in rows} == {filled["gone"], filled["split-copy"]}
    copy = next(r for r in rows if r["id"] == filled["split-copy"])
    assert copy["to"] == ["gone@example.org"]  # the copy holds only the refused recipient
    assert copy["message_id"] == "<split@example.org>"
    assert copy["attempts"] == 1 and "550" in copy["last_error"]
    proc = run_queue(ini, "list", "--state", "queued", "--state", "tmp", "--json")
    assert [(r["id"], r["state"]) for r in json.loads(proc.stdout)] == [
        (filled["fresh"], "new"), (filled["writing"], "tmp")]


def test_list_of_an_empty_state_says_so(tmp_path, spool, capsys):
    code, out, _ = call(capsys, write_ini(tmp_path), "list", "--state", "deferred")
    assert (code, out) == (0, "no messages in deferred/\n")


# -- show ------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["name", "prefix", "message-id", "bare message-id",
                                 "state/name"])
def test_show_finds_a_message_by_name_prefix_or_message_id(tmp_path, filled, capsys, how):
    name = filled["gone"]
    ident = {"name": name, "prefix": name[:-4], "message-id": "<gone@example.org>",
             "bare message-id": "gone@example.org", "state/name": f"failed/{name}"}[how]
    code, out, err = call(capsys, write_ini(tmp_path), "show", ident)
    assert code == 0, err
    assert f"id:             {name}" in out
    assert "state:          failed (failed/)" in out
    assert f"envelope from:  {FROM}" in out
    assert "envelope to:    gone@example.org" in out
    assert "reason:         permanent failure: gone@example.org: 550 5.1.1 no such user" in out
    assert "  Message-ID: <gone@example.org>" in out
    assert "1. " in out and "gone@example.org: permanent 550 5.1.1 no such user here" in out
    assert "The body of" not in out


def test_show_body_and_json(tmp_path, filled, capsys):
    ini = write_ini(tmp_path)
    code, out, _ = call(capsys, ini, "show", "<later@example.org>", "--body")
    assert code == 0
    assert "The body of <later@example.org>." in out
    assert "next attempt:" in out
    code, out, _ = call(capsys, ini, "show", filled["later"], "--json", "--body")
    data = json.loads(out)
    assert data["state"] == "deferred" and data["attempts"] == 1
    assert data["meta"]["history"][0]["results"][0]["code"] == 451
    assert ["Subject", "Hello"] in data["headers"]
    assert data["body"] == "The body of <later@example.org>.\n"


def test_show_unknown_or_ambiguous_id_exits_1(tmp_path, spool, filled, capsys):
    ini = write_ini(tmp_path)
    proc = run_queue(ini, "show", "<nobody@example.org>")
    assert proc.returncode == 1
    assert "no message in" in proc.stderr and "<nobody@example.org>" in proc.stderr
    prefix = os.path.commonprefix([filled["later"], filled["gone"]])
    code, out, err = call(capsys, ini, "show", prefix)
    assert code == 1 and out == ""
    assert "messages match the file name prefix" in err
    assert filled["later"] in err and filled["gone"] in err and "Traceback" not in err
    enqueue(spool, ["x@example.org"], "<twice@example.org>")
    enqueue(spool, ["y@example.org"], "<twice@example.org>")
    code, out, err = call(capsys, ini, "show", "twice@example.org")
    assert code == 1 and "2 messages match the Message-ID" in err


# -- retry -------------------------------------------------------------------------------

def test_retried_dead_letter_is_delivered_by_the_next_txmail_qp_pass(
        tmp_path, spool, filled, smtp_server):
    ini = write_ini(tmp_path)
    proc = run_queue(ini, "retry", "<gone@example.org>")
    assert proc.returncode == 0, proc.stderr
    assert f"{filled['gone']}: moved from failed/ to new/" in proc.stdout
    assert filled["gone"] in spool.names("new")
    accepting = write_ini(tmp_path, smtp_server, password=None, name="relay.ini")
    qp = subprocess.run([QP, accepting, "--no-app", "-q"], capture_output=True, text=True,
                        timeout=60)
    assert qp.returncode == 0, qp.stderr
    got = {m.data.split(b"Message-ID: ")[1].split(b"\r\n")[0]: m.rcpt_tos
           for m in smtp_server.messages}
    assert got[b"<gone@example.org>"] == ["gone@example.org"]
    assert filled["gone"] not in spool.names("failed") + spool.names("new")
    assert spool.read_meta(filled["gone"]) == {}  # delivered: state file gone too


def test_retry_all_failed_then_deferred_becomes_due_now(tmp_path, spool, filled,
                                                        smtp_server, capsys):
    ini = write_ini(tmp_path)
    code, out, _ = call(capsys, ini, "retry", "--all-failed")
    assert code == 0
    assert spool.names("failed") == []
    assert {filled["gone"], filled["split-copy"]} <= set(spool.names("new"))
    code, out, _ = call(capsys, ini, "retry", filled["later"])
    assert code == 0 and "moved from deferred/ to new/" in out
    stats = send_pass(spool, smtp_server)  # next_attempt was 5 minutes away
    assert stats.sent == 4 and spool.names("new") == spool.names("deferred") == []
    retried = [m for m in smtp_server.messages if b"<later@example.org>" in m.data]
    assert [m.rcpt_tos for m in retried] == [["later@example.org"]]
    code, out, _ = call(capsys, ini, "retry", "--all-failed")
    assert (code, out) == (0, "no dead letters in failed/\n")


def test_retry_refuses_mail_being_sent_or_written_and_unknown_ids(tmp_path, spool, filled,
                                                                  capsys):
    ini = write_ini(tmp_path)
    code, out, err = call(capsys, ini, "retry", filled["sending"], filled["writing"],
                          "<nobody@example.org>", filled["gone"])
    assert code == 1
    assert f"cannot retry cur/{filled['sending']}: it is being sent right now" in err
    assert f"cannot retry tmp/{filled['writing']}: it is still being committed" in err
    assert "no message in" in err and "<nobody@example.org>" in err
    assert filled["sending"] in spool.names("cur") and filled["writing"] in spool.names("tmp")
    assert filled["gone"] in spool.names("new")  # the good id was still retried
    code, out, err = call(capsys, ini, "retry", filled["fresh"])
    assert code == 0 and "already queued" in out


@pytest.mark.parametrize("argv", [["retry"], ["retry", "x", "--all-failed"]])
def test_retry_needs_ids_or_all_failed(tmp_path, spool, capsys, argv):
    code, _, err = call(capsys, write_ini(tmp_path), *argv)
    assert code == 2 and "give message ids or --all-failed" in err


def test_retry_and_purge_tolerate_a_file_taken_meanwhile(spool, filled):
    later = admin.find(spool, filled["later"])
    assert spool.claim("deferred", filled["later"]) is not None  # a processor won
    with pytest.raises(admin.Vanished, match="gone: a processor or another"):
        admin.retry(spool, later)
    assert filled["later"] in spool.names("cur")
    gone = admin.find(spool, filled["gone"])
    os.rename(gone.path, os.path.join(spool.path, "new", gone.name))  # another retry won
    with pytest.raises(admin.Vanished):
        admin.purge(spool, gone)
    assert filled["gone"] in spool.names("new") and spool.read_meta(filled["gone"])


# -- purge -------------------------------------------------------------------------------

def test_purge_removes_only_dead_letters_older_than_asked(tmp_path, spool, refusing, capsys):
    fresh = enqueue(spool, ["gone@example.org"], "<fresh-bounce@example.org>")
    send_pass(spool, refusing)
    old = enqueue(spool, ["gone@example.org"], "<old-bounce@example.org>")
    send_pass(spool, refusing, clock=lambda: time.time() - 8 * DAY)  # it failed 8 days ago
    assert set(spool.names("failed")) == {fresh, old}
    ini = write_ini(tmp_path)
    proc = run_queue(ini, "purge", "--state", "failed", "--older-than", "7d", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"would remove failed/{old}  8d old  <old-bounce@example.org>" in proc.stdout
    assert fresh not in proc.stdout
    assert "would remove 1 message from failed/ older than 7d" in proc.stdout
    assert set(spool.names("failed")) == {fresh, old}
    code, out, _ = call(capsys, ini, "purge", "--state", "failed", "--older-than", "7d")
    assert code == 0
    assert "removed 1 message from failed/ older than 7d" in out
    assert spool.names("failed") == [fresh]
    assert spool.read_meta(old) == {} and spool.read_meta(fresh)["reason"]
    code, out, _ = call(capsys, ini, "purge", "--state", "failed", "--all")
    assert code == 0 and spool.names("failed") == []
    assert os.listdir(os.path.join(spool.path, "meta")) == []


def test_purge_deferred_and_tmp_count_from_the_enqueue_time(spool, filled):
    now = time.time()
    assert admin.purge_candidates(spool, "deferred", 7 * DAY, now) == []
    [later] = admin.purge_candidates(spool, "deferred", 7 * DAY, now + 8 * DAY)
    assert later.name == filled["later"]
    [writing] = admin.purge_candidates(spool, "tmp", DAY, now + 2 * DAY)
    admin.purge(spool, writing)
    assert spool.names("tmp") == []
    with pytest.raises(admin.Refused, match="still being delivered"):
        admin.purge_candidates(spool, "new", DAY, now)


@pytest.mark.parametrize("argv, words", [
    (["purge", "--state", "new", "--all"], "refusing to purge new/ (queued): that is mail "
                                           "still being delivered"),
    (["purge", "--state", "in_progress", "--older-than", "1d"], "refusing to purge cur/"),
    (["purge", "--state", "failed"], "--older-than DURATION (e.g. 7d), or --all"),
    (["purge", "--state", "tmp", "--all"], "refusing --all for tmp/"),
])
def test_purge_refusals_are_usage_errors(tmp_path, spool, filled, capsys, argv, words):
    code, _, err = call(capsys, write_ini(tmp_path), *argv)
    assert code == 2 and words in err
    assert spool.names("new") == [filled["fresh"]] and spool.names("cur") == [filled["sending"]]


@pytest.mark.parametrize("argv, words", [
    (["purge", "--state", "failed", "--older-than", "soon"],
     "argument --older-than: 'soon': expected a positive duration"),
    (["purge", "--state", "failed", "--older-than", "-3d"], "argument --older-than"),
    (["purge", "--state", "bounced", "--all"], "unknown state 'bounced'; choose from"),
    (["list", "--state", "sent"], "unknown state 'sent'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_command_lines_exit_2_and_name_the_culprit(tmp_path, spool, capsys, argv, words):
    code, out, err = call(capsys, write_ini(tmp_path), *argv)
    assert code == 2 and out == ""
    assert words in err and "Traceback" not in err


def test_the_console_script_exits_2_on_a_bad_duration(tmp_path, spool):
    proc = run_queue(write_ini(tmp_path), "purge", "--state", "failed", "--older-than", "7 weeks")
    assert proc.returncode == 2
    assert "argument --older-than: '7 weeks': expected a positive duration" in proc.stderr


# -- configuration and secrets ------------------------------------------------------------

def test_configuration_errors_exit_78_in_one_line(tmp_path, capsys):
    missing = str(tmp_path / "nowhere.ini")
    cases = [(missing, [missing]),
             (write_ini(tmp_path, extra="mail.workers = blue", name="a.ini"), ["mail.workers"]),
             (write_ini(tmp_path, extra="[app:other]", name="b.ini") + "#nope",
              ["no [app:nope] section"])]
    no_spool = tmp_path / "c.ini"
    no_spool.write_text("[app:main]\nuse = egg:pyramid_txmail\nmail.host = x\n")
    cases.append((str(no_spool), ["mail.queue_path is not set", "txmail-queue"]))
    for number, (ini, words) in enumerate(cases):
        if number == 0:  # the console script itself once, main() in-process for the rest
            proc = run_queue(ini, "status")
            code, err = proc.returncode, proc.stderr
        else:
            code, _, err = call(capsys, ini, "status")
        assert code == 78, (ini, err)
        assert err.startswith("txmail-queue: error: ")
        assert len(err.strip().splitlines()) == 1
        for word in words:
            assert word in err


def test_a_missing_spool_directory_is_reported_not_created(tmp_path, capsys):
    code, _, err = call(capsys, write_ini(tmp_path), "status")
    assert code == 78
    assert f"mail.queue_path = '{tmp_path / 'spool'}': no spool directory there" in err
    assert not (tmp_path / "spool").exists()


def test_the_password_never_reaches_any_output(tmp_path, spool, filled, capsys):
    ini = write_ini(tmp_path)
    runs = [["status"], ["status", "--json"], ["list"], ["list", "--json"],
            ["show", filled["gone"], "--body"], ["show", "<later@example.org>", "--json"],
            ["show", "nothing-here"], ["purge", "--state", "failed", "--all", "--dry-run"],
            ["retry", "nothing-here"], ["purge", "--state", "new", "--all"],
            ["-v", "status"], ["list", "--help"]]
    seen = []
    for argv in runs:
        code, out, err = call(capsys, ini, *argv)
        seen.append(out + err)
    for extra in ("mail.port = PASSWORD-IS-NOT-A-PORT", "mail.password = again " + PASSWORD):
        code, out, err = call(capsys, write_ini(tmp_path, extra=extra, name="bad.ini"), "status")
        assert code == 78
        seen.append(out + err)
    # configparser quotes the text after a stray '%': only the key is named
    percent = write_ini(tmp_path, password="ab%" + PASSWORD, name="percent.ini")
    proc = run_queue(percent, "list")
    assert proc.returncode == 78 and "Traceback" not in proc.stderr
    assert "'mail.password'" in proc.stderr and "%%" in proc.stderr
    seen.append(proc.stdout + proc.stderr)
    broken = tmp_path / "broken.ini"  # no '=': configparser would quote the whole line
    broken.write_text(f"[app:main]\nmail.queue_path = {spool.path}\nmail.password {PASSWORD}\n")
    code, out, err = call(capsys, str(broken), "status")
    assert code == 78 and "ParsingError at line 3" in err
    seen.append(out + err)
    for text in seen:
        assert PASSWORD not in text and PASSWORD[4:] not in text


def test_help_of_every_command_has_examples(capsys):
    proc = subprocess.run([QUEUE, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "examples:" in proc.stdout and "exit status:" in proc.stdout
    for command in cli.COMMANDS:
        code, out, _ = call(capsys, "app.ini", command, "--help")
        assert code == 0
        assert out.startswith(f"usage: txmail-queue CONFIG_URI {command} ")
        assert f"examples:\n  txmail-queue production.ini {command}" in out


def test_a_file_without_envelope_is_listed_as_poison(tmp_path, spool, capsys):
    # repoze.sendmail-style files always carry an envelope; this one was dropped by hand
    path = os.path.join(spool.path, "new", "1700000000.M1P1.example")
    with open(path, "wb") as f:
        f.write(b"Subject: stray\n\nno envelope\n")
    code, out, _ = call(capsys, write_ini(tmp_path), "list")
    assert code == 0
    assert "1700000000.M1P1.example" in out and "poison: no envelope" in out
    code, out, _ = call(capsys, write_ini(tmp_path), "show", "1700000000")
    assert code == 0 and "envelope from:  -" in out and "Subject: stray" in out


@pytest.mark.parametrize("raw, one_line, shown", [
    ("Hi\x1b]0;owned\x07", True, "Hi\\x1b]0;owned\\x07"),
    ("a\r\nBcc: x", True, "a\\x0d\\x0aBcc: x"),
    ("evil\u202etxt.exe", True, "evil\\u202etxt.exe"),
    ("line one\nline two\ttab\x08", False, "line one\nline two\ttab\\x08"),
    (None, True, "-"),
])
def test_message_text_is_escaped_before_it_reaches_the_terminal(raw, one_line, shown):
    from pyramid_txmail.scripts.queue_text import clean

    assert clean(raw, one_line) == shown
