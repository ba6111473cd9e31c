"""The processor at scale: parallel workers, several processes on one spool,
fallback relays, the rate limit and queue age -- against real servers on 127.0.0.1."""
from __future__ import annotations

import collections
import os
import subprocess
import sys

import pytest

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.processor.ratelimit import RateLimiter
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.relay.smtp_session import FAILURES_BEFORE_REST, Relays
from pyramid_txmail.queue.maildir.spool import Spool

from .smtpserver import free_port
from .smtpserver_extra import extra_server
from .test_processor import Clock, message, queue

QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path / "spool"))


def settings_for(server, spool, **extra):
    raw = {"mail.host": server.host, "mail.port": str(server.port),
           "mail.queue_path": spool.path, "mail.timeout": "10"}
    raw.update({"mail." + k: str(v) for k, v in extra.items()})
    return parse_settings(raw)


def fill(spool, count, prefix="m"):
    ids = [f"<{prefix}{i}@example.org>" for i in range(count)]
    for msgid in ids:
        queue(spool, ["a@example.org"], message(msgid))
    return ids


def received_ids(server):
    return collections.Counter(
        m.data.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
        for m in server.messages)


def test_workers_share_the_queue_each_over_its_own_reused_connection(spool, make_smtp_server):
    server = extra_server(make_smtp_server, {"delay": {"data": 0.02}})
    ids = fill(spool, 40)
    stats = Processor(spool, None, settings_for(server, spool, workers=4)).run_once()
    assert stats.sent == 40 and stats.errors == 0
    assert received_ids(server) == collections.Counter(ids)  # each exactly once
    assert server.handler.connections == 4  # one per worker, reused
    assert server.handler.commands.count("QUIT") == 4  # closed when the pass ended
    assert spool.names("new") == spool.names("cur") == []


def test_stop_event_ends_the_pass_after_the_messages_in_flight(spool, make_smtp_server):
    import threading

    server = extra_server(make_smtp_server, {"delay": {"data": 0.05}})
    fill(spool, 30)
    stop = threading.Event()
    processor = Processor(spool, None, settings_for(server, spool, workers=2))
    original = processor._process_safely

    def process_then_stop(*args):
        original(*args)
        stop.set()

    processor._process_safely = process_then_stop
    stats = processor.run_once(stop)
    assert stats.sent in (1, 2)  # each worker finishes the message it holds
    assert len(server.messages) == stats.sent
    assert spool.count("new") == 30 - stats.sent and spool.count("cur") == 0


def test_several_processes_on_one_spool_deliver_each_message_once(tmp_path, spool,
                                                                  make_smtp_server):
    server = extra_server(make_smtp_server, {"delay": {"data": 0.005}})
    ids = fill(spool, 150)
    ini = tmp_path / "app.ini"
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.host = {server.host}\n"
                   f"mail.port = {server.port}\nmail.queue_path = {spool.path}\n"
                   "mail.workers = 2\n")
    procs = [subprocess.Popen([QP, str(ini), "--no-app", "-q"]) for _ in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    assert received_ids(server) == collections.Counter(ids)
    assert server.handler.connections >= 2  # more than one process took part
    for state in ("new", "cur", "deferred", "failed", "tmp"):
        assert spool.names(state) == []


def test_unreachable_relay_falls_back_to_the_next_and_rests(spool, make_smtp_server):
    server = extra_server(make_smtp_server)
    dead = free_port()
    settings = settings_for(server, spool, port=dead,
                            fallback_hosts=f"{server.host}:{server.port}", host_rest="1h")
    processor = Processor(spool, None, settings)
    for i in range(FAILURES_BEFORE_REST):
        fill(spool, 1, prefix=f"pass{i}-")
        assert processor.run_once().sent == 1
    assert processor.relays.resting() == [("127.0.0.1", dead)]
    assert processor.relays.candidates() == [(server.host, server.port)]
    assert len(server.messages) == FAILURES_BEFORE_REST


def test_every_relay_unreachable_defers_with_every_reason(spool, make_smtp_server):
    clock = Clock()
    one, two = free_port(), free_port()
    settings = parse_settings({"mail.host": "127.0.0.1", "mail.port": str(one),
                               "mail.fallback_hosts": f"127.0.0.1:{two}",
                               "mail.queue_path": spool.path})
    name = queue(spool, ["a@example.org"])
    assert Processor(spool, None, settings, clock=clock).run_once().deferred == 1
    text = spool.read_meta(name)["history"][0]["results"][0]["text"]
    assert f"127.0.0.1:{one}" in text and f"127.0.0.1:{two}" in text
    assert "connection refused" in text


def test_relays_rest_after_repeated_failures_and_wake_up():
    now = [0.0]
    relays = Relays([("a", 25), ("b", 25)], rest=60, clock=lambda: now[0])
    for _ in range(FAILURES_BEFORE_REST - 1):
        relays.failed(("a", 25))
    assert relays.candidates() == [("a", 25), ("b", 25)]
    relays.failed(("a", 25))
    assert relays.candidates() == [("b", 25)]
    relays.failed(("b", 25)), relays.failed(("b", 25)), relays.failed(("b", 25))
    assert relays.candidates() == [("a", 25), ("b", 25)]  # all resting: try all anyway
    now[0] = 61
    relays.succeeded(("a", 25))
    assert relays.resting() == []


def test_rate_limit_spaces_messages_across_workers(spool, make_smtp_server):
    server = extra_server(make_smtp_server)
    fill(spool, 5)
    now = [100.0]
    slept = []

    def sleep(seconds):
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = RateLimiter(10, clock=lambda: now[0], sleep=sleep)
    stats = Processor(spool, None, settings_for(server, spool, workers=2),
                      limiter=limiter).run_once()
    assert stats.sent == 5
    assert sum(slept) == pytest.approx(0.4)  # 5 messages at 10/s: 4 gaps of 0.1 s


def test_rate_limit_setting_builds_a_limiter(spool, make_smtp_server):
    server = extra_server(make_smtp_server)
    processor = Processor(spool, None, settings_for(server, spool, rate_limit=50))
    assert processor.limiter.interval == pytest.approx(0.02)
    assert Processor(spool, None, settings_for(server, spool)).limiter is None


def test_queue_age_counts_from_enqueue_not_from_the_first_attempt(spool, make_smtp_server):
    server = extra_server(make_smtp_server, {"rcpt": "451 4.4.1 relay down"})
    name = queue(spool, ["a@example.org"])
    clock = Clock()
    clock.advance(6 * 86400)  # the processor first runs six days after the enqueue
    processor = Processor(spool, None, settings_for(server, spool), clock=clock)
    # one reading past max_queue_time is not enough (a clock that was ahead once):
    # the attempt after it, seeing the same, gives it up (test_clock_jumps)
    assert processor.run_once().deferred == 1
    clock.advance(3600)
    stats = processor.run_once()
    assert (stats.deferred, stats.failed) == (0, 1)
    assert spool.names("failed") == [name]
    assert spool.read_meta(name)["reason"].startswith("expired after 2 attempts over 6d")


def test_a_retried_dead_letter_gets_a_fresh_queue_age(spool, make_smtp_server):
    server = extra_server(make_smtp_server, {"rcpt": "451 4.4.1 relay down"})
    name = queue(spool, ["a@example.org"])
    clock = Clock()
    clock.advance(6 * 86400)
    processor = Processor(spool, None, settings_for(server, spool), clock=clock)
    assert processor.run_once().deferred == 1
    clock.advance(3600)
    assert processor.run_once().failed == 1
    os.rename(os.path.join(spool.path, "failed", name), os.path.join(spool.path, "new", name))
    assert processor.run_once().deferred == 1  # not expired again at once
    assert spool.read_meta(name)["queued_at"] == clock.now


def test_subscribers_in_worker_threads_see_the_app_registry(spool, make_smtp_server):
    import transaction
    from pyramid.config import Configurator
    from pyramid.threadlocal import get_current_registry

    from pyramid_txmail.interfaces import IMailSent

    server = extra_server(make_smtp_server, {"delay": {"data": 0.01}})
    seen = []
    config = Configurator()
    config.add_subscriber(
        lambda event: seen.append((get_current_registry() is config.registry,
                                   event.transaction_manager.get().status)), IMailSent)
    config.commit()
    fill(spool, 12)
    for manager in (None, transaction.TransactionManager(explicit=True)):
        seen.clear()
        fill(spool, 12, prefix=f"again{id(manager)}-")
        stats = Processor(spool, None, settings_for(server, spool, workers=3),
                          registry=config.registry, transaction_manager=manager).run_once()
        assert stats.sent == len(seen) and stats.errors == 0
        assert seen == [(True, "Active")] * len(seen)


def test_names_come_in_sorted_batches_and_a_long_queue_drains_once(spool, make_smtp_server,
                                                                   monkeypatch):
    import pyramid_txmail.queue.maildir.spool

    ids = fill(spool, 23)
    names = spool.names("new")
    got = list(spool.iter_names("new", batch=5))
    assert sorted(got) == sorted(names) and len(got) == len(set(got))
    for start in range(0, 23, 5):  # each batch oldest first
        chunk = got[start:start + 5]
        assert chunk == sorted(chunk, key=names.index)
    assert list(spool.iter_names("new")) == names  # shorter than a batch: strictly in order
    monkeypatch.setattr(pyramid_txmail.queue.maildir.spool, "BATCH", 5)
    server = extra_server(make_smtp_server)
    stats = Processor(spool, None, settings_for(server, spool, workers=3)).run_once()
    assert stats.sent == 23
    assert received_ids(server) == collections.Counter(ids)
