"""The processor, the daemon and the scripts know a queue only by its interface.

* the spool is one backend (:class:`MaildirQueue`) that provides IQueue and
  IQueueAdmin, and ``open_queue`` picks it from ``mail.queue_path`` without
  importing SQLAlchemy;
* a second backend that is not a spool at all -- a queue held in a dict,
  written here in a few lines -- is drained by the real Processor through a
  real SMTP server, with the same policy: delivered recipients never asked
  again, retries deferred with backoff, refusals dead-lettered with a reason;
* the processor's modules import nothing that knows files or spools;
* ``txmail-queue INI init-db`` says what is missing without ``mail.queue_url``.
"""
from __future__ import annotations

import ast
import itertools
import time
import os
import subprocess
import sys
import textwrap

import pytest
from zope.interface import implementer
from zope.interface.verify import verifyObject

import pyramid_txmail
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.queue import open_queue
from pyramid_txmail.queue.interface import (IClaimed, IQueue, IQueueAdmin, PoisonMessage,
                                            QueueUnavailable)
from pyramid_txmail.queue.maildir.backend import MaildirQueue
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir import spool as spool_module
from pyramid_txmail.queue.maildir.spool import Spool

BIN = os.path.dirname(sys.executable)
PACKAGE = os.path.dirname(pyramid_txmail.__file__)
MESSAGE = b"From: a@example.org\r\nSubject: hi\r\nMessage-ID: <m1@example.org>\r\n\r\nbody\r\n"


def settings_for(server=None, **extra):
    raw = {"mail.queue_path": "/nonexistent", "mail.timeout": "10",
           "mail.retry_initial": "5m"}
    if server is not None:
        raw.update({"mail.host": server.host, "mail.port": str(server.port)})
    raw.update({f"mail.{k}": v for k, v in extra.items()})
    return parse_settings(raw)


# -- the spool backend ------------------------------------------------------------------

def test_the_spool_backend_provides_both_interfaces(tmp_path):
    queue = MaildirQueue(Spool(str(tmp_path / "spool")))
    assert verifyObject(IQueue, queue) and verifyObject(IQueueAdmin, queue)
    assert queue.where == str(tmp_path / "spool")


def test_spool_poison_is_the_interface_s_poison():
    assert spool_module.PoisonMessage is PoisonMessage


def test_open_queue_never_creates_a_missing_spool_unless_asked(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(QueueUnavailable, match="no spool directory there"):
        open_queue(settings_for(queue_path=str(missing)))
    assert not missing.exists()
    queue = open_queue(settings_for(queue_path=str(missing)), create=True)
    assert isinstance(queue, MaildirQueue) and os.path.isdir(missing / "new")


def test_a_processor_made_from_a_spool_drains_it_through_the_spool_backend(
        tmp_path, smtp_server):
    spool = Spool(str(tmp_path / "spool"))
    spool.commit_tmp([spool.write_tmp("a@example.org", ["b@example.org"], MESSAGE)])
    qp = Processor(spool, None, settings_for(smtp_server, queue_path=spool.path))
    assert isinstance(qp.queue, MaildirQueue) and qp.spool is spool
    assert qp.run_once().sent == 1
    assert [m.rcpt_tos for m in smtp_server.messages] == [["b@example.org"]]


def test_a_spool_user_never_imports_sqlalchemy(tmp_path, smtp_server):
    """txmail-qp and txmail-queue on a spool: SQLAlchemy stays out of the process."""
    spool = Spool(str(tmp_path / "spool"))
    spool.commit_tmp([spool.write_tmp("a@example.org", ["b@example.org"], MESSAGE)])
    ini = tmp_path / "app.ini"
    ini.write_text(f"[app:main]\nmail.queue_path = {spool.path}\nmail.host = "
                   f"{smtp_server.host}\nmail.port = {smtp_server.port}\n")
    script = textwrap.dedent(f"""
        import sys
        from pyramid_txmail.scripts import qp, queue
        assert qp.main([{str(ini)!r}, "--no-app", "-q"]) == 0
        assert queue.main([{str(ini)!r}, "status", "--json"]) == 0
        print("sqlalchemy loaded:", any(m.split(".")[0] == "sqlalchemy" for m in sys.modules))
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "sqlalchemy loaded: False" in proc.stdout
    assert len(smtp_server.messages) == 1


# -- the processor knows nothing of files -------------------------------------------------

FILE_KNOWLEDGE = {"os", "os.path", "shutil", "spool", "spoolfile", "spoolscan", "claims",
                  "schedule", "recovery", "deadletters", "leftovers", "watch",
                  "spool_admin", "maildir"}


def _imported(path):
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update((node.module or "").split("."))
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("module", ["processor", "outcomes", "daemon"])
def test_the_processor_s_modules_import_nothing_that_knows_files(module):
    found = [os.path.join(PACKAGE, *parts) for parts in
             ((f"{module}.py",), ("processor", f"{module}.py"))]
    [path] = [p for p in found if os.path.exists(p)]
    assert not _imported(path) & FILE_KNOWLEDGE


# -- a queue that is not a spool ---------------------------------------------------------

@implementer(IClaimed)
class Held:
    def __init__(self, name):
        self.name, self.queued_at, self.problem = name, None, None
        self.state_record = f"the state of {name}"


class Scope:
    def __init__(self, queue):
        self.queue = queue

    def add(self, claimed):
        self.queue.alive.add(claimed.name)

    def discard(self, claimed):
        self.queue.alive.discard(claimed.name)


@implementer(IQueue)
class DictQueue:
    """Messages in a dict: {name: [state, fromaddr, toaddrs, data, meta, due]}."""

    where = "memory"

    def __init__(self):
        self.rows, self.alive, self.dead = {}, set(), {}
        self._ids = itertools.count(1)

    def put(self, toaddrs, data=MESSAGE):
        name = f"m{next(self._ids)}"
        self.rows[name] = ["queued", "a@example.org", tuple(toaddrs), data, {}, 0.0]
        return name

    def housekeep(self, settings, registry, now):
        return 0

    def pass_scope(self, settings):
        import contextlib
        return contextlib.nullcontext(Scope(self))

    def candidates(self, now, horizon, stats):
        for name, row in list(self.rows.items()):
            if row[0] == "queued" or (row[0] == "deferred" and row[5] <= now):
                yield name
            elif row[0] == "deferred":
                stats.skipped += 1

    def claim(self, ticket):
        row = self.rows.get(ticket)
        if row is None or row[0] == "in_progress":
            return None
        row[0] = "in_progress"
        return Held(ticket)

    def read(self, claimed, stream_over):
        _, fromaddr, toaddrs, data, _, _ = self.rows[claimed.name]
        return fromaddr, toaddrs, data

    def load_state(self, claimed):
        return dict(self.rows[claimed.name][4])

    def holds(self, claimed):
        return claimed.name in self.alive

    def record(self, claimed, state):
        self.rows[claimed.name][4] = dict(state)

    def retire(self, claimed, had_state):
        del self.rows[claimed.name]

    def defer(self, claimed, next_attempt):
        self.rows[claimed.name][0], self.rows[claimed.name][5] = "deferred", next_attempt

    def bury(self, claimed, state):
        self.dead[claimed.name] = (self.rows.pop(claimed.name)[2], state)
        return claimed.name

    def bury_copy(self, fromaddr, recipients, data, state):
        name = f"copy{next(self._ids)}"
        self.dead[name] = (tuple(recipients), state)
        return name

    def release(self, claimed):
        pass

    def next_due(self, settings, now, horizon=None):
        return min((r[5] for r in self.rows.values() if r[0] == "deferred"), default=None)

    def watcher(self, settings, how="auto"):
        raise NotImplementedError

    def clock(self):
        return time.time()


class Clock:
    now = 1_000_000.0

    def __call__(self):
        return self.now


def test_the_processor_drains_a_queue_that_is_not_a_spool(make_smtp_server):
    server = make_smtp_server({"rcpt": {"busy@example.org": "451 4.3.0 try later",
                                        "gone@example.org": "550 5.1.1 no such user"}})
    queue, clock = DictQueue(), Clock()
    assert verifyObject(IQueue, queue)
    whole = queue.put(["ok@example.org"])
    mixed = queue.put(["ok2@example.org", "busy@example.org", "gone@example.org"])
    qp = Processor(queue, None, settings_for(server), clock=clock, rand=lambda: 0.5)
    stats = qp.run_once()
    assert (stats.sent, stats.deferred, stats.failed) == (1, 1, 1)
    assert whole not in queue.rows
    state, _, toaddrs, _, meta, due = queue.rows[mixed]
    assert state == "deferred" and due == meta["next_attempt"] == clock.now + 300
    assert meta["delivered"] == ["ok2@example.org"]
    assert meta["failed_recipients"] == ["gone@example.org"]
    [(copy_to, dead)] = queue.dead.values()
    assert copy_to == ("gone@example.org",) and "550" in dead["reason"]
    assert qp.run_once().skipped == 1  # not due yet

    clock.now += 301
    assert qp.run_once().deferred == 1
    last = queue.rows[mixed][4]["history"][-1]
    assert [r["recipient"] for r in last["results"]] == ["busy@example.org"]  # only it
    assert queue.rows[mixed][4]["attempts"] == 2
    # two workers send the two messages at once: in either order
    assert sorted(m.rcpt_tos for m in server.messages) == [["ok2@example.org"], ["ok@example.org"]]


def test_a_claim_lost_mid_send_is_left_to_its_new_holder(smtp_server, caplog):
    queue = DictQueue()
    name = queue.put(["ok@example.org"])

    class Losing:
        def deliver(self, fromaddr, toaddrs, data, message_id=None):
            queue.alive.discard(name)  # an operator's release --force, mid-send
            return transport.deliver(fromaddr, toaddrs, data, message_id=message_id)

    from pyramid_txmail.relay.smtp import SMTPTransport
    settings = settings_for(smtp_server)
    with SMTPTransport.from_settings(settings) as transport:
        stats = Processor(queue, Losing(), settings).run_once()
    assert (stats.sent, stats.taken, stats.errors) == (0, 1, 0)
    assert queue.rows[name][0] == "in_progress" and queue.rows[name][4] == {}
    assert "lost its claim" in caplog.text


def test_a_corrupt_state_is_dead_lettered_naming_the_backend_s_record(smtp_server):
    queue = DictQueue()
    name = queue.put(["ok@example.org"])
    queue.rows[name][4] = {"corrupt_meta": True}
    stats = Processor(queue, None, settings_for(smtp_server)).run_once()
    assert stats.failed == 1 and smtp_server.messages == []
    assert queue.dead[name][1]["reason"].startswith(f"the state of {name} is corrupt")


# -- txmail-queue init-db -----------------------------------------------------------------

def test_init_db_without_a_queue_url_says_what_is_missing(tmp_path):
    ini = tmp_path / "app.ini"
    ini.write_text(f"[app:main]\nmail.queue_path = {tmp_path}\n")
    proc = subprocess.run([os.path.join(BIN, "txmail-queue"), str(ini), "init-db"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert proc.stderr.strip() == (
        f"txmail-queue: error: {ini} [app:main]: mail.queue_url is not set; init-db "
        "creates the SQL outbox's tables in the database it names (a spool in "
        "mail.queue_path needs no set-up)")


def test_init_db_has_its_help(tmp_path):
    proc = subprocess.run([os.path.join(BIN, "txmail-queue"), "app.ini", "init-db", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "mail.queue_url" in proc.stdout and "Alembic" in proc.stdout
