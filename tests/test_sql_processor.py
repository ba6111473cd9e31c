"""The real Processor drains the SQL outbox through a real SMTP server, on both databases.

The same policy as on a spool: a recipient that accepted is never asked again,
a 4yz is deferred with backoff, a 5yz is dead-lettered as a copy for that
recipient, a message every recipient accepted is retired (kept as delivered,
without its body), and a large message is sent from its chunks.
"""
from __future__ import annotations

import time

from zope.interface.verify import verifyObject

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.queue.interface import IQueue, IQueueAdmin
from pyramid_txmail.settings import parse_settings

from .sql_support import db_url, message, put, queue, row, states  # noqa: F401


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def settings_for(server, url, **extra):
    raw = {"mail.queue_url": url, "mail.host": server.host, "mail.port": str(server.port),
           "mail.timeout": "10", "mail.retry_initial": "5m"}
    raw.update({f"mail.{k}": v for k, v in extra.items()})
    return parse_settings(raw)


def test_the_sql_queue_provides_both_interfaces(queue):
    assert verifyObject(IQueue, queue) and verifyObject(IQueueAdmin, queue)
    assert "@" not in queue.where or "***" in queue.where or ":" not in queue.where.split(
        "@")[0].split("//")[-1]


def test_the_password_is_never_in_where(pg_url):
    from pyramid_txmail.queue.sql import SQLQueue

    with_password = pg_url.replace("txmail@", "txmail:s3cret@")
    queue = SQLQueue(with_password)
    assert "s3cret" not in queue.where and "***" in queue.where
    queue.close()


def test_the_processor_drains_the_outbox(db_url, make_smtp_server, queue):
    server = make_smtp_server({"rcpt": {"busy@example.org": "451 4.3.0 try later",
                                        "gone@example.org": "550 5.1.1 no such user"}})
    clock = Clock()
    big = message(subject="big", body=b"".join(b"%07d\r\n" % i for i in range(400000)))
    whole = put(queue, big, "app@example.org", ["ok@example.org"])
    mixed = put(queue, None, "app@example.org",
                ["ok2@example.org", "busy@example.org", "gone@example.org"])
    qp = Processor(queue, None, settings_for(server, db_url), clock=clock, rand=lambda: 0.5)
    stats = qp.run_once()
    assert (stats.sent, stats.deferred, stats.failed, stats.errors) == (1, 1, 1, 0)
    assert row(queue, whole).state == "delivered" and row(queue, whole).body is None
    stored = row(queue, mixed)
    assert stored.state == "deferred" and stored.next_attempt == clock.now + 300
    assert stored.meta["delivered"] == ["ok2@example.org"]
    assert stored.meta["failed_recipients"] == ["gone@example.org"]
    [dead] = queue.messages(("failed",))
    assert dead.toaddrs == ("gone@example.org",) and "550" in dead.last_error
    assert qp.run_once().skipped == 1  # not due yet

    clock.now += 301
    assert qp.run_once().deferred == 1
    stored = row(queue, mixed)
    assert [r["recipient"] for r in stored.meta["history"][-1]["results"]] == [
        "busy@example.org"]  # only the one not yet delivered
    assert stored.attempts == 2
    assert sorted(m.rcpt_tos for m in server.messages) == [["ok2@example.org"],
                                                            ["ok@example.org"]]
    [sent] = [m for m in server.messages if m.rcpt_tos == ["ok@example.org"]]
    assert sent.data.replace(b"\r\n", b"\n") == big.replace(b"\r\n", b"\n")
    assert sorted(states(queue).values()) == ["deferred", "delivered", "failed"]
