"""A claim held by a live processor is never taken; a dead one's always comes back.

Issue 11, findings 2 and 7: real ``txmail-qp`` subprocesses on one spool, a
real (slow) aiosmtpd relay, real clocks.  The sleeps here only set a scene
up (let a claim grow older than ``mail.claim_timeout``); nothing asserts on
how long anything took.
"""
from __future__ import annotations

import os
import time

import pytest

from pyramid_txmail.queue.maildir import spool_admin as admin
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.relay.smtp import SMTPTransport

from .claims_support import (QP, QUEUE, copies, make_spool, queue, run, start_qp, wait_until,
                             write_ini)
from .faultserver import fault_server
from .reliability import record, runs

pytestmark = pytest.mark.reliability

DAY = 86400.0


def _read(path):
    return path.read_text() if path.exists() else ""


def _claimed(spool, name):
    return os.path.join(spool.path, "cur", name)


def _second_processor_round(directory, server, msgid):
    """One round of finding 2's scene; returns the copies the relay stored."""
    directory.mkdir()
    ini = write_ini(directory, server, ["mail.claim_timeout = 3"])
    spool = make_spool(directory)
    queue(spool, msgid)
    first = start_qp(ini, directory / "first.log", "--workers", "1")
    wait_until(lambda: copies(server, msgid) == 1, "the message stored by the slow relay")
    claimed_at = time.time()  # the relay now waits 5 s before its 250
    time.sleep(max(0.0, claimed_at + 3.5 - time.time()))  # past claim_timeout
    second = run(QP, ini, "--no-app", "--workers", "1")
    assert first.wait(timeout=60) == 0, _read(directory / "first.log")
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr + _read(directory / "first.log")
    assert "recovered=0" in second.stderr, second.stderr
    assert not any(spool.names(s) for s in ("new", "cur", "deferred", "failed"))
    return copies(server, msgid)


def test_a_second_processor_never_takes_a_live_claim_past_claim_timeout(
        tmp_path, make_smtp_server):
    """Finding 2: claim_timeout=3, the relay answers the final dot after 5 s, a
    second txmail-qp starts 3.5 s in: one copy, both exit 0."""
    server = fault_server(make_smtp_server, {"delay": {"data": 5}})
    rounds = runs(1, 3)
    got = [_second_processor_round(tmp_path / f"round{i}", server, f"<live-{i}@example.org>")
           for i in range(rounds)]
    record("faults", "live claim outlasting mail.claim_timeout, second txmail-qp started",
           runs=rounds, messages=rounds, delivered=sum(1 for n in got if n),
           duplicated=sum(1 for n in got if n > 1),
           detail="claim_timeout 3 s, the relay answers the final dot after 5 s, a second "
                  "txmail-qp starts 3.5 s in; the claim's heartbeat and lock keep it")
    assert got == [1] * rounds


def test_a_live_claim_with_an_old_mtime_is_not_taken(tmp_path, make_smtp_server):
    """A clock jump (or a stalled heartbeat) makes a live claim look stale:
    its owner is alive (it holds the claim's lock), so it stays its owner's."""
    server = fault_server(make_smtp_server, {"delay": {"data": 4}})
    ini = write_ini(tmp_path, server, ["mail.claim_timeout = 1h"])
    spool = make_spool(tmp_path)
    name = queue(spool, "<jump@example.org>")
    first = start_qp(ini, tmp_path / "first.log", "--workers", "1")
    wait_until(lambda: copies(server, "<jump@example.org>") == 1, "the message stored")
    old = time.time() - 2 * 3600
    os.utime(_claimed(spool, name), (old, old))  # as if the clock jumped 2 h ahead
    second = run(QP, ini, "--no-app")
    assert first.wait(timeout=60) == 0, _read(tmp_path / "first.log")
    assert second.returncode == 0, second.stderr
    assert "recovered=0" in second.stderr
    assert "held by a live process" in second.stderr, second.stderr
    assert copies(server, "<jump@example.org>") == 1
    record("faults", "live claim with an mtime 2 h old (clock jump), second txmail-qp",
           messages=1, delivered=1, duplicated=copies(server, "<jump@example.org>") - 1,
           detail="the claim's lock says its owner is alive: not taken")


def _settings(spool, server, **extra):
    raw = {"mail.host": server.host, "mail.port": str(server.port),
           "mail.queue_path": spool.path, "mail.timeout": "10"}
    raw.update({"mail." + k: str(v) for k, v in extra.items()})
    return parse_settings(raw)


def _pass(spool, server, **extra):
    settings = _settings(spool, server, **extra)
    with SMTPTransport.from_settings(settings) as transport:
        return Processor(spool, transport, settings).run_once()


def test_a_claim_dated_in_the_future_comes_back(tmp_path, smtp_server):
    """Finding 7: a claim whose mtime is a day ahead (the clock was set back
    after it was made, and its owner died) is stale, not stuck forever."""
    spool = make_spool(tmp_path)
    name = queue(spool, "<future@example.org>")
    os.rename(os.path.join(spool.path, "new", name), _claimed(spool, name))
    future = time.time() + DAY
    os.utime(_claimed(spool, name), (future, future))
    stats = _pass(spool, smtp_server, claim_timeout="1h")
    assert (stats.recovered, stats.sent) == (1, 1)
    assert spool.names("cur") == []
    record("crash", "claim dated a day ahead (clock set back), its owner dead",
           messages=1, delivered=len(smtp_server.messages),
           detail="stale: back in new/ and sent, not stuck in cur/ forever")


def test_a_claim_slightly_in_the_future_is_within_the_clock_skew(tmp_path, smtp_server):
    spool = make_spool(tmp_path)
    name = queue(spool, "<skew@example.org>")
    os.rename(os.path.join(spool.path, "new", name), _claimed(spool, name))
    soon = time.time() + 5
    os.utime(_claimed(spool, name), (soon, soon))
    stats = _pass(spool, smtp_server, claim_timeout="1h")
    assert (stats.recovered, stats.sent) == (0, 0)
    assert spool.names("cur") == [name]


def _claim_in_cur(spool, msgid, mtime=None):
    name = queue(spool, msgid)
    os.rename(os.path.join(spool.path, "new", name), _claimed(spool, name))
    if mtime is not None:
        os.utime(_claimed(spool, name), (mtime, mtime))
    return name


def test_release_refuses_a_fresh_claim_and_forces_it(tmp_path):
    ini = write_ini(tmp_path, extra=["mail.claim_timeout = 1h"])
    spool = make_spool(tmp_path)
    name = _claim_in_cur(spool, "<fresh@example.org>")
    proc = run(QUEUE, ini, "release", name)
    assert proc.returncode == 1, proc.stderr
    assert "heartbeat" in proc.stderr and "--force" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert spool.names("cur") == [name]
    proc = run(QUEUE, ini, "release", name, "--force")
    assert proc.returncode == 0, proc.stderr
    assert spool.names("cur") == [] and spool.names("new") == [name]


def test_release_stale_releases_only_stale_and_future_claims(tmp_path):
    ini = write_ini(tmp_path, extra=["mail.claim_timeout = 1h"])
    spool = make_spool(tmp_path)
    fresh = _claim_in_cur(spool, "<fresh@example.org>")
    stale = _claim_in_cur(spool, "<stale@example.org>", time.time() - 2 * 3600)
    future = _claim_in_cur(spool, "<future@example.org>", time.time() + DAY)
    proc = run(QUEUE, ini, "release", "--stale")
    assert proc.returncode == 0, proc.stderr
    assert spool.names("cur") == [fresh]
    assert sorted(spool.names("new")) == sorted([stale, future])
    assert stale in proc.stdout and future in proc.stdout


def test_release_refuses_a_claim_held_by_a_live_process_even_when_stale(tmp_path):
    """The lock says its owner is alive: only --force takes it."""
    ini = write_ini(tmp_path, extra=["mail.claim_timeout = 1h"])
    spool = make_spool(tmp_path)
    name = queue(spool, "<held@example.org>")
    entry = spool.claim("new", name)  # this test process is the live owner
    try:
        old = time.time() - 2 * 3600
        os.utime(_claimed(spool, name), (old, old))
        proc = run(QUEUE, ini, "release", "--stale")
        assert proc.returncode == 0 and spool.names("cur") == [name], proc.stderr
        proc = run(QUEUE, ini, "release", name)
        assert proc.returncode == 1 and "live process" in proc.stderr, proc.stderr
        assert spool.names("cur") == [name]
    finally:
        entry.claim.close()


def test_retry_of_a_claimed_message_points_to_release(tmp_path):
    ini = write_ini(tmp_path)
    spool = make_spool(tmp_path)
    name = _claim_in_cur(spool, "<busy@example.org>")
    proc = run(QUEUE, ini, "retry", name)
    assert proc.returncode == 1
    assert "release" in proc.stderr


def test_a_processor_that_loses_its_claim_moves_on(tmp_path, make_smtp_server, caplog):
    """The claim is released (--force) while the relay is slow: the sender
    logs that it lost the claim and does not crash or move the file."""
    server = fault_server(make_smtp_server, {"delay": {"data": 2}})
    spool = make_spool(tmp_path)
    name = queue(spool, "<lost@example.org>")
    settings = _settings(spool, server, claim_timeout="1h")
    released = []

    class Releasing(SMTPTransport):
        def deliver(self, *args, **kwargs):
            msg = admin.find(spool, name)
            released.append(admin.release(spool, msg, 3600.0, force=True))
            return super().deliver(*args, **kwargs)

    with Releasing.from_settings(settings) as transport:
        stats = Processor(spool, transport, settings).run_once()
    assert released and stats.errors == 0
    assert spool.names("new") == [name]  # left to whoever claims it next
    assert "lost its claim" in caplog.text


def test_the_heartbeat_alone_keeps_a_long_send_claimed(tmp_path, make_smtp_server,
                                                       monkeypatch):
    """Where locks do not reach other machines (an NFS mount with ``nolock``), the
    heartbeat is what keeps the claim: its mtime moves while the relay is slow."""
    import threading

    from pyramid_txmail.queue.maildir import claims

    monkeypatch.setattr(claims, "_try_lock", lambda fd: True)  # no lock protects
    server = fault_server(make_smtp_server, {"delay": {"data": 4}})
    spool = make_spool(tmp_path)
    name = queue(spool, "<beat@example.org>")
    results = []
    sender = threading.Thread(target=lambda: results.append(
        _pass(spool, server, claim_timeout="2s")))
    sender.start()
    try:
        wait_until(lambda: copies(server, "<beat@example.org>") == 1, "the message stored")
        first = os.lstat(_claimed(spool, name)).st_mtime
        wait_until(lambda: os.lstat(_claimed(spool, name)).st_mtime > first,
                   "a heartbeat on the claim", limit=3)
        time.sleep(2.2)  # longer than claim_timeout since the claim was made
        assert spool.recover_stale(2.0) == []
    finally:
        sender.join(timeout=60)
    assert results and results[0].sent == 1
    assert copies(server, "<beat@example.org>") == 1


def test_leftovers_dated_in_the_future_are_resolved_too(tmp_path, smtp_server):
    """The sibling in recovery: a tmp/ or prepared/ file dated a day ahead (the
    clock was set back after a crash) is cleaned up or dead-lettered, not kept forever."""
    spool = make_spool(tmp_path)
    future = time.time() + DAY
    tmp_name = spool.write_tmp("a@example.org", ["b@example.org"], b"Subject: x\n\nx\n")
    prepared = spool.prepare("a@example.org", ["b@example.org"], b"Subject: y\n\ny\n")
    os.utime(os.path.join(spool.path, "tmp", tmp_name), (future, future))
    os.utime(os.path.join(spool.path, "prepared", prepared), (future, future))
    stats = _pass(spool, smtp_server, commit_grace="1h")
    assert stats.recovered == 2
    assert os.listdir(os.path.join(spool.path, "tmp")) == []
    assert spool.names("failed") == [prepared]
