"""A deferred backlog costs a pass O(due), not O(deferred) (issue 11, finding 8).

With 5,000 deferred messages due in an hour and 16 new ones a second, the
daemon used 92% of a core: every pass, and the daemon's timer, read every
state file in ``meta/``.  The due times now live in the names of the files
in ``deferred/`` (:mod:`pyramid_txmail.queue.maildir.schedule`).  These tests count the
state files a pass opens, by wrapping ``open`` and ``os.open``; the sending
is real (aiosmtpd on 127.0.0.1), the clock injected.
"""
from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pyramid_txmail.queue.maildir import schedule
from pyramid_txmail.queue.maildir import spool_admin as admin
from pyramid_txmail.processor.daemon import Daemon
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings

from .test_processor import FROM, clock, message, queue, spool  # noqa: F401 -- fixtures

BACKLOG = 5000
QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")


class MetaOpens:
    """Counts the state files (``meta/*.json``) opened for reading, in any thread."""

    def __init__(self, monkeypatch):
        self.count = 0
        self.lock = threading.Lock()
        real_open, real_os_open = builtins.open, os.open

        def counting_open(file, mode="r", *args, **kwargs):
            if "r" in mode and "+" not in mode:
                self._seen(file)
            return real_open(file, mode, *args, **kwargs)

        def counting_os_open(path, flags, *args, **kwargs):
            if not flags & (os.O_WRONLY | os.O_RDWR):
                self._seen(path)
            return real_os_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(os, "open", counting_os_open)

    def _seen(self, path):
        path = os.fspath(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
        if isinstance(path, str) and f"{os.sep}meta{os.sep}" in path and path.endswith(".json"):
            with self.lock:
                self.count += 1

    def take(self):
        with self.lock:
            count, self.count = self.count, 0
        return count


def park_deferred(spool, count, first_due, step=1.0, to="later@example.org"):
    """``count`` messages in deferred/ as an older txmail left them (plain names, the
    due time only in the state file), due ``step`` seconds apart from ``first_due``.

    Written directly (no fsync): this is the set-up, not the code under test.
    """
    names = []
    data = message(subject="backlog")
    for i in range(count):
        name = spool.write_tmp(FROM, [to], data) if i == 0 else f"{names[0]}-{i}"
        if i == 0:
            os.rename(os.path.join(spool.path, "tmp", name),
                      os.path.join(spool.path, "deferred", name))
        else:
            with open(os.path.join(spool.path, "deferred", names[0]), "rb") as f:
                body = f.read()
            with open(os.path.join(spool.path, "deferred", name), "wb") as f:
                f.write(body)
        due, tried = first_due + i * step, first_due - 7200
        with open(os.path.join(spool.path, "meta", name + ".json"), "w") as f:
            json.dump({"attempts": 1, "first_attempt": tried, "last_attempt": tried,
                       "next_attempt": due, "queued_at": tried, "delivered": [],
                       "failed_recipients": [], "history": []}, f)
        names.append(name)
    return names


def settings_for(server, spool, **extra):
    # The backlog's due times reach hours ahead: a retry_max that long keeps them
    # within the horizon (a due time beyond any retry delay is due at once).
    raw = {"mail.host": server.host, "mail.port": str(server.port),
           "mail.queue_path": spool.path, "mail.timeout": "10", "mail.retry_max": "6h"}
    raw.update({"mail." + k: str(v) for k, v in extra.items()})
    return parse_settings(raw)


def processor(server, spool, clock, **extra):
    return Processor(spool, None, settings_for(server, spool, **extra), clock=clock,
                     rand=lambda: 0.5, workers=1)


def test_a_pass_over_a_deferred_backlog_reads_only_the_due_state_files(
        spool, clock, smtp_server, monkeypatch):
    """5,000 deferred, not due, and 3 new: the pass opens the 3 new ones' state
    files (which do not exist), not the 5,000.  Then 10 come due: 10 more."""
    backlog = park_deferred(spool, BACKLOG, clock.now + 3600)
    qp = processor(smtp_server, spool, clock)
    opens = MetaOpens(monkeypatch)
    first = qp.run_once()  # an older version's backlog: read once, and indexed
    assert (first.sent, first.skipped) == (0, BACKLOG)
    opens.take()

    for n in range(3):
        queue(spool, ["new@example.org"], message(msgid=f"<new{n}@example.org>"))
    stats = qp.run_once()
    assert opens.take() <= 3  # was 5,003: every deferred state file, every pass
    assert (stats.sent, stats.deferred, stats.skipped) == (3, 0, BACKLOG)

    clock.advance(3600 + 9.5)  # the first 10 are due
    stats = qp.run_once()
    assert opens.take() <= 2 * 10  # each due one: its state file, read to send, again to retire
    assert (stats.sent, stats.skipped) == (10, BACKLOG - 10)
    assert len(smtp_server.messages) == 13
    assert sorted(spool.names("deferred")) == sorted(backlog[10:])


def test_the_daemon_timer_and_status_read_the_names_not_the_state_files(
        spool, clock, smtp_server, monkeypatch):
    park_deferred(spool, BACKLOG, clock.now + 3600)
    qp = processor(smtp_server, spool, clock)
    qp.run_once()  # indexes the older version's files
    daemon = Daemon(spool, qp.settings, qp.run_once, None, None, None, rescan=7200,
                    clock=clock)
    opens = MetaOpens(monkeypatch)
    wait = daemon.next_wake_in()
    assert opens.take() == 0
    assert 3600 <= wait <= 3600 + 0.1  # the earliest due (rounded up to the ms, plus slack)

    info = admin.status(spool, now=clock.now)
    assert opens.take() <= 1  # the earliest one, for its exact time
    assert info["deferred"] == BACKLOG and info["deferred_due"] == 0
    assert info["next_retry"] == pytest.approx(clock.now + 3600)


def test_a_deferral_renames_into_the_schedule_and_every_tool_finds_it(
        spool, clock, make_smtp_server, tmp_path):
    """The processor defers to deferred/DUE~NAME; the message keeps its name for
    names(), its state file, and txmail-queue show/retry/purge (also given the
    file name that ``ls deferred/`` shows)."""
    server = make_smtp_server({"rcpt": "451 4.3.0 try later"})
    qp = processor(server, spool, clock)
    name = queue(spool, ["a@example.org"])
    other = queue(spool, ["b@example.org"], message(msgid="<m2@example.org>"))
    assert qp.run_once().deferred == 2
    listed = os.listdir(os.path.join(spool.path, "deferred"))
    [filename] = [f for f in listed if f.endswith("~" + name)]
    due_text = filename.split("~")[0]  # e.g. 20261201T214152.250Z
    due = spool.read_meta(name)["next_attempt"]
    assert due_text.startswith(time.strftime("%Y%m%dT%H%M%S", time.gmtime(due)))
    assert due <= schedule.parse_stamp(due_text) < due + 0.001
    assert sorted(spool.names("deferred")) == sorted([name, other])

    [msg] = [m for m in admin.messages(spool) if m.name == name]
    assert msg.state == "deferred" and msg.attempts == 1 and os.path.exists(msg.path)
    assert os.path.basename(msg.path) == filename
    assert admin.find(spool, f"deferred/{filename}").name == name
    assert admin.find(spool, name).name == name
    assert "moved from deferred/ to new/" in admin.retry(spool, admin.find(spool, name))
    assert spool.names("new") == [name] and spool.read_meta(name)["attempts"] == 1

    [doomed] = admin.purge_candidates(spool, "deferred")
    admin.purge(spool, doomed)
    assert spool.names("deferred") == [] and spool.read_meta(other) == {}


def test_older_versions_deferred_files_are_still_sent(spool, clock, smtp_server):
    """A deferred/ file without the due time in its name: sent when its state file
    says it is due (or says nothing), else renamed to its indexed name and sent then."""
    [later] = park_deferred(spool, 1, clock.now + 600)
    [due] = park_deferred(spool, 1, clock.now - 5, to="due@example.org")
    bare = queue(spool, ["bare@example.org"], message(msgid="<bare@example.org>"))
    os.rename(os.path.join(spool.path, "new", bare), os.path.join(spool.path, "deferred", bare))
    qp = processor(smtp_server, spool, clock)

    stats = qp.run_once()
    assert (stats.sent, stats.skipped) == (2, 1)
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == [
        "bare@example.org", "due@example.org"]
    [indexed] = os.listdir(os.path.join(spool.path, "deferred"))
    assert indexed.endswith("~" + later) and spool.names("deferred") == [later]

    clock.advance(601)
    assert qp.run_once().sent == 1
    assert spool.names("deferred") == [] and len(smtp_server.messages) == 3


def test_two_processors_on_one_spool_send_each_due_message_once(spool, clock, smtp_server):
    park_deferred(spool, 200, clock.now + 60, step=0.01)
    first, second = processor(smtp_server, spool, clock), processor(smtp_server, spool, clock)
    assert first.run_once().skipped == 200  # indexed
    clock.advance(120)
    results = []
    threads = [threading.Thread(target=lambda p=p: results.append(p.run_once()))
               for p in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(s.sent for s in results) == 200
    assert len(smtp_server.messages) == 200
    assert not any(spool.names(state) for state in ("new", "cur", "deferred"))


def test_a_killed_migration_leaves_every_message_due_on_time(spool, tmp_path, smtp_server):
    """txmail-qp SIGKILLed while it indexes an older version's backlog: every file
    is in deferred/ under its plain name or its indexed one, never lost, and an
    indexed name never says later than the state file (nor earlier)."""
    now = time.time()
    names = park_deferred(spool, 2000, now + 3600)
    ini = tmp_path / "qp.ini"
    ini.write_text(f"[app:main]\nmail.host = {smtp_server.host}\nmail.port = "
                   f"{smtp_server.port}\nmail.queue_path = {spool.path}\n"
                   "mail.processes = 1\n")  # killed: the process that indexes
    proc = subprocess.Popen([QP, str(ini), "--no-app"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deferred = os.path.join(spool.path, "deferred")
    while proc.poll() is None and not any("~" in n for n in os.listdir(deferred)):
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    files = os.listdir(deferred)
    assert sorted(spool.names("deferred")) == sorted(names) and len(files) == len(names)
    for item in spool.scheduled():
        if item.stamp is not None:
            due = spool.read_meta(item.name)["next_attempt"]
            assert due <= item.due_at() < due + 0.001
    assert smtp_server.messages == []
