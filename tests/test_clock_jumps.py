"""Retry times and ages against a clock that jumps (issue 11, round 2, finding 3).

A real Processor and a real aiosmtpd server answering 450; the processor's
clock is a fake one set ahead and back, as a wrong system clock and its
correction would.  The rules (README, "Clock jumps"):

* a retry due further ahead than ``mail.retry_max`` plus the jitter was
  scheduled by a clock that was ahead: it is due now;
* a message's age counts from its first attempt as this processor recorded
  it (a first attempt dated ahead of now is moved back to now), never less
  than 0; and it expires only when both this attempt and the one before
  it saw it older than ``mail.max_queue_time``, so one reading of a wrong
  clock never gives up a message.
"""
from __future__ import annotations

import pytest

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.relay.smtp import SMTPTransport

from .test_processor import Clock, files, queue

DAY = 86400


@pytest.fixture
def deferring(tmp_path, make_smtp_server):
    """``(spool, processor, clock, server)``: every RCPT answered 450."""
    from pyramid_txmail.queue.maildir.spool import Spool

    spool = Spool(str(tmp_path / "spool"))
    server = make_smtp_server({"rcpt": "450 4.2.0 mailbox busy"})
    settings = parse_settings({"mail.host": server.host, "mail.port": str(server.port),
                               "mail.queue_path": spool.path, "mail.timeout": "10"})
    clock = Clock()
    with SMTPTransport.from_settings(settings) as transport:
        yield spool, Processor(spool, transport, settings, clock=clock,
                               rand=lambda: 0.5), clock, server



@pytest.mark.parametrize("ahead", [2 * DAY, 10 * DAY])
def test_a_retry_scheduled_by_a_clock_ahead_is_due_once_it_is_right(deferring, ahead):
    spool, processor, clock, _ = deferring
    real = clock.now
    name = queue(spool, ["a@example.org"])
    clock.now = real + ahead
    stats = processor.run_once()
    assert (stats.deferred, stats.failed) == (1, 0)  # one 450 never expires it
    clock.now = real + 60  # the clock is put right
    stats = processor.run_once()
    assert (stats.deferred, stats.skipped, stats.failed) == (1, 0, 0)
    meta = spool.read_meta(name)
    assert meta["attempts"] == 2
    assert meta["first_attempt"] <= clock.now  # moved back: the age counts from now
    assert meta["next_attempt"] - clock.now <= processor.settings.retry_max * 1.2


def test_one_attempt_with_the_clock_ahead_does_not_expire_a_message(deferring):
    """Three attempts on the right clock, one 10 days ahead, then right again."""
    spool, processor, clock, _ = deferring
    real = clock.now
    name = queue(spool, ["a@example.org"])
    for step in (0, 600, 1800):
        clock.now = real + step
        processor.run_once()
    clock.now = real + 10 * DAY
    stats = processor.run_once()
    assert (stats.deferred, stats.failed) == (1, 0)
    clock.now = real + 3600
    stats = processor.run_once()
    assert (stats.deferred, stats.failed) == (1, 0)
    assert files(spool, "failed") == [] and spool.read_meta(name)["attempts"] == 5


def test_a_message_older_than_max_queue_time_on_two_attempts_expires(deferring):
    spool, processor, clock, _ = deferring
    real = clock.now
    name = queue(spool, ["a@example.org"])
    processor.run_once()
    clock.now = real + 6 * DAY
    assert processor.run_once().deferred == 1  # the first reading past the limit
    clock.now = spool.read_meta(name)["next_attempt"]
    stats = processor.run_once()
    assert stats.failed == 1
    reason = spool.read_meta(name)["reason"]
    assert reason.startswith("expired after 3 attempts over 6d"), reason


def test_the_daemon_timer_sees_a_far_future_retry_as_due(deferring):
    spool, processor, clock, _ = deferring
    real = clock.now
    queue(spool, ["a@example.org"])
    clock.now = real + 2 * DAY
    processor.run_once()
    horizon = processor.retry_horizon()
    assert spool.earliest_retry(real, horizon) == real
    assert spool.due_files(real, horizon)[0] != []
