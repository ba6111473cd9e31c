"""What is not a regular message file in the spool is dead-lettered, never followed or waited on.

Issue 11, finding 6 (a FIFO in new/ blocked a pass and ``txmail-queue list``
forever; a symlink was followed out of the spool and its target sent) and
10(c) (a ``*.json`` file in new/ was neither sent nor counted).  Every
command runs as a real subprocess with a timeout: a hang fails the test.
"""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from pyramid_txmail.queue.maildir import spool_admin as admin
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.relay.smtp import SMTPTransport

from .claims_support import FROM, QP, QUEUE, make_spool, message, queue, run, write_ini
from .reliability import record

pytestmark = pytest.mark.reliability
OLD = 1_000_000_000  # 2001: a target's mtime that a claim must not change


def _pass(spool, server, **extra):
    raw = {"mail.host": server.host, "mail.port": str(server.port),
           "mail.queue_path": spool.path, "mail.timeout": "10"}
    raw.update({"mail." + k: str(v) for k, v in extra.items()})
    settings = parse_settings(raw)
    with SMTPTransport.from_settings(settings) as transport:
        return Processor(spool, transport, settings).run_once()


def _outside_message(tmp_path):
    """A complete queue file outside the spool, as a symlink's target."""
    target = tmp_path / "outside.eml"
    target.write_bytes(b"X-Actually-From: " + FROM.encode() + b"\nX-Actually-To: "
                       b"victim@example.org\n" + message("<outside@example.org>"))
    os.utime(target, (OLD, OLD))
    return target


def _fifo(path):
    os.mkfifo(path, 0o600)
    return os.path.basename(path)


def _reason(spool, name):
    return spool.read_meta(name)["reason"]


def test_a_fifo_in_new_is_dead_lettered_and_the_pass_ends(tmp_path, smtp_server):
    ini = write_ini(tmp_path, smtp_server)
    spool = make_spool(tmp_path)
    fifo = _fifo(os.path.join(spool.path, "new", "1700000000.M1P1Q1.host"))
    queue(spool, "<after-fifo@example.org>")
    proc = run(QP, ini, "--no-app", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "sent=1" in proc.stderr and "failed=1" in proc.stderr
    assert spool.names("failed") == [fifo]
    assert "not a regular file" in _reason(spool, fifo) and "FIFO" in _reason(spool, fifo)
    record("disk", "FIFO in new/ (one-shot txmail-qp)", messages=1, delivered=1,
           held=1, detail="the FIFO dead-lettered with its reason, the next message sent")


def test_a_symlink_in_new_is_not_followed(tmp_path, smtp_server):
    spool = make_spool(tmp_path)
    target = _outside_message(tmp_path)
    link = "1700000000.M2P1Q1.host"
    os.symlink(target, os.path.join(spool.path, "new", link))
    stats = _pass(spool, smtp_server)
    assert stats.failed == 1 and smtp_server.messages == []
    assert os.stat(target).st_mtime == OLD  # no utime through the link
    failed = os.path.join(spool.path, "failed", link)
    assert os.path.islink(failed) and os.readlink(failed) == str(target)
    assert "symbolic link" in _reason(spool, link)
    record("disk", "symlink in new/ pointing outside the spool", held=1,
           detail="not followed: target untouched and not sent; dead-lettered")


@pytest.mark.parametrize("state", ["new", "deferred", "cur"])
def test_a_directory_or_socket_in_a_queue_state_is_dead_lettered(tmp_path, smtp_server,
                                                                 state):
    spool = make_spool(tmp_path)
    directory = "1700000000.M3P1Q1.host"
    os.mkdir(os.path.join(spool.path, state, directory))
    sock_name = "1700000000.M4P1Q1.host"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.path.join(spool.path, state, sock_name))
    try:
        old = time.time() - 7200
        for name in (directory, sock_name):
            os.utime(os.path.join(spool.path, state, name), (old, old),
                     follow_symlinks=False)
        stats = _pass(spool, smtp_server, claim_timeout="1h")
    finally:
        sock.close()
    assert stats.failed == 2 and stats.errors == 0
    assert sorted(spool.names("failed")) == [directory, sock_name]
    assert "directory" in _reason(spool, directory)
    assert "socket" in _reason(spool, sock_name)


def test_a_fifo_as_a_state_file_is_not_waited_on(tmp_path, smtp_server):
    spool = make_spool(tmp_path)
    name = queue(spool, "<fifo-meta@example.org>")
    _fifo(os.path.join(spool.path, "meta", name + ".json"))
    stats = _pass(spool, smtp_server)
    assert stats.failed == 1 and smtp_server.messages == []
    assert "not a regular file" in _reason(spool, name)


def test_a_fifo_in_prepared_is_dead_lettered_by_recovery(tmp_path, smtp_server):
    spool = make_spool(tmp_path)
    fifo = _fifo(os.path.join(spool.path, "prepared", "1700000000.M5P1Q1.host"))
    old = time.time() - 7200
    os.utime(os.path.join(spool.path, "prepared", fifo), (old, old))
    stats = _pass(spool, smtp_server, commit_grace="1h")
    assert stats.recovered == 1
    assert spool.names("failed") == [fifo]
    assert "not a regular file" in _reason(spool, fifo)


def test_txmail_queue_lists_shows_and_purges_a_fifo_without_hanging(tmp_path):
    ini = write_ini(tmp_path)
    spool = make_spool(tmp_path)
    fifo = _fifo(os.path.join(spool.path, "new", "1700000000.M6P1Q1.host"))
    failed = _fifo(os.path.join(spool.path, "failed", "1700000000.M7P1Q1.host"))
    link = "1700000000.M8P1Q1.host"
    os.symlink(_outside_message(tmp_path), os.path.join(spool.path, "failed", link))
    proc = run(QUEUE, ini, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = {m["id"]: m for m in json.loads(proc.stdout)}
    assert set(listed) == {fifo, failed, link}
    assert "not a regular file" in listed[fifo]["last_error"]
    assert listed[link]["to"] == []  # the target was not read
    proc = run(QUEUE, ini, "show", fifo, "--body")
    assert proc.returncode == 0, proc.stderr
    assert "FIFO" in proc.stdout
    proc = run(QUEUE, ini, "status", "--json")
    assert json.loads(proc.stdout)["queued"] == 1
    proc = run(QUEUE, ini, "purge", "--state", "failed", "--all")
    assert proc.returncode == 0, proc.stderr
    assert spool.names("failed") == []
    assert os.path.exists(tmp_path / "outside.eml")  # the link went, not its target


def test_a_json_file_in_new_is_sent_and_counted(tmp_path, smtp_server):
    """10(c): the name is only a name: a queue file called *.json is mail."""
    ini = write_ini(tmp_path, smtp_server)
    spool = make_spool(tmp_path)
    name = queue(spool, "<json@example.org>")
    os.rename(os.path.join(spool.path, "new", name),
              os.path.join(spool.path, "new", name + ".json"))
    junk = os.path.join(spool.path, "new", "notes.json")
    with open(junk, "w") as f:
        f.write('{"not": "mail"}\n')
    status = json.loads(run(QUEUE, ini, "status", "--json").stdout)
    assert status["queued"] == 2
    assert {m.name for m in admin.messages(spool)} == {name + ".json", "notes.json"}
    proc = run(QP, ini, "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert "sent=1" in proc.stderr and "failed=1" in proc.stderr
    assert [m.rcpt_tos for m in smtp_server.messages] == [["a@example.org"]]
    assert spool.names("failed") == ["notes.json"]
    assert "no envelope" in _reason(spool, "notes.json")
    record("disk", "*.json files in new/", messages=1, delivered=1, held=1,
           detail="a queue file named *.json is sent; a JSON file without an envelope "
                  "is dead-lettered")
