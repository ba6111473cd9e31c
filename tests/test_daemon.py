"""``txmail-qp --daemon``: real subprocesses, real signals, a real SMTP server on 127.0.0.1.

Mail is queued the way an application queues it: ``get_mailer(registry)``
inside a committed transaction writes into the spool the daemon watches.
A :class:`GatedHandler` holds the reply to the final dot until the test
opens its gate, so a signal can be sent while a message is *known* to be in
flight.  Waits are generous deadlines, never speed assertions; the 60 s
rescan of the daemon is far beyond every deadline here, so a delivery
within one proves the watcher (or the retry timer) woke it.
"""
from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from email.message import EmailMessage

import pytest
import transaction
from pyramid.config import Configurator

from pyramid_txmail import get_mailer
from pyramid_txmail.queue.maildir.spool import Spool

from .smtpserver_extra import ExtraHandler
from .test_qp import APP_FACTORY

QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
SENDER = "sender@example.org"
RECIPIENTS = ["a@example.org", "b@example.net"]
WAIT = 15.0  # generous: a loaded CI machine, never a speed target
#: The tests that count the messages in flight count one process's workers
#: (mail.processes: tests/test_processes.py has the several processes).
ONE_PROCESS = "mail.processes = 1\n"

LOGGING = '''
[loggers]
keys = root

[handlers]
keys = logfile

[formatters]
keys = plain

[logger_root]
level = INFO
handlers = logfile

[handler_logfile]
class = FileHandler
args = (r'%(here)s/qp.log', 'a')
level = NOTSET
formatter = plain

[formatter_plain]
format = %(levelname)s %(name)s %(message)s
'''


class GatedHandler(ExtraHandler):
    """Holds every reply to the final dot until :attr:`gate` is set.

    :attr:`in_data` is set when a message has been received and waits for
    its reply, i.e. when the client has a message in flight.
    """

    def __init__(self, script=None):
        super().__init__(script)
        self.gate = threading.Event()
        self.in_data = threading.Event()
        self.arrived = 0  # messages that reached the final dot, held or not

    async def handle_DATA(self, server, session, envelope):
        self.arrived += 1  # one event loop thread: no lock needed
        self.in_data.set()
        deadline = time.monotonic() + 60
        while not self.gate.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return await super().handle_DATA(server, session, envelope)


def wait_until(predicate, timeout=WAIT, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _pending_signals(pid):
    """Signals sent to ``pid`` that no thread of it has taken yet (Linux /proc)."""
    pending = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("SigPnd:", "ShdPnd:")):
                        pending |= int(line.split()[1], 16)
        except FileNotFoundError:  # a thread that just ended
            continue
    return pending


def signal_taken(proc, signum):
    """Send ``signum`` and return once the process has taken it.

    The kernel has delivered it when it is no longer pending; the Python
    handler runs in the main thread right after.  The short sleep covers that
    step (and keeps two equal signals from coalescing into one).
    """
    proc.send_signal(signum)
    wait_until(lambda: not _pending_signals(proc.pid) & (1 << (signum - 1)),
               what=f"{signal.Signals(signum).name} to be taken")
    time.sleep(0.2)


def received(server):
    """``{(message_id, recipient): times received}``."""
    counts = collections.Counter()
    for msg in server.messages:
        message_id = next(line.split(b":", 1)[1].strip().decode()
                          for line in msg.data.splitlines()
                          if line.lower().startswith(b"message-id:"))
        for rcpt in msg.rcpt_tos:
            counts[message_id, rcpt] += 1
    return counts


class Setup:
    """An ini, a spool, an app registry to queue mail with, and daemon processes."""

    def __init__(self, tmp_path, server, extra="", logging_ini=False):
        self.tmp_path = tmp_path
        self.server = server
        self.spool_path = tmp_path / "spool"
        self.ini = tmp_path / "app.ini"
        self.ini.write_text(textwrap.dedent(f"""\
            [app:main]
            use = call:txmail_testapp:main
            mail.host = {server.host}
            mail.port = {server.port}
            mail.timeout = 60
            mail.queue_path = {self.spool_path}
            """) + textwrap.dedent(extra) + (LOGGING if logging_ini else ""))
        config = Configurator(settings={"mail.queue_path": str(self.spool_path),
                                        "mail.default_sender": SENDER})
        config.include("pyramid_txmail")
        config.commit()
        self.registry = config.registry
        self.spool = Spool(str(self.spool_path))
        self.procs = []
        self.count = 0

    def queue(self, n=1):
        """Queue ``n`` messages to RECIPIENTS in one committed transaction; their ids."""
        manager = transaction.TransactionManager(explicit=True)
        mailer = get_mailer(self.registry, manager)
        ids = []
        with manager:
            for _ in range(n):
                self.count += 1
                msg = EmailMessage()
                msg["To"] = ", ".join(RECIPIENTS)
                msg["Subject"] = f"message {self.count}"
                msg.set_content(f"body {self.count}\n")
                ids.append(mailer.send(msg))
        return ids

    def start(self, *args, log_name="daemon.log", app=False):
        log_path = self.tmp_path / log_name
        stream = open(log_path, "ab")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(self.tmp_path), os.environ.get("PYTHONPATH")])))
        proc = subprocess.Popen([QP, str(self.ini), *([] if app else ["--no-app"]),
                                 "--daemon", *args],
                                stdout=stream, stderr=subprocess.STDOUT, env=env)
        stream.close()
        proc.log_path = log_path
        self.procs.append(proc)
        return proc

    def stop(self, proc, signum=signal.SIGTERM):
        proc.send_signal(signum)
        return proc.wait(timeout=60)

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def log_of(proc):
    return proc.log_path.read_text()


def wait_for_log(proc, text, timeout=WAIT):
    wait_until(lambda: text in log_of(proc), timeout, f"{text!r} in the log:\n"
               + (log_of(proc) if proc.log_path.exists() else ""))


@pytest.fixture
def gated(make_smtp_server):
    return make_smtp_server(handler=GatedHandler())


@pytest.fixture
def setup_for(tmp_path):
    made = []

    def make(server, extra="", **kwargs):
        made.append(Setup(tmp_path, server, extra, **kwargs))
        return made[-1]

    yield make
    for setup in made:
        setup.close()


WATCHERS = [("inotify", "with inotify"), ("poll", "polling")]


@pytest.mark.parametrize("watch, described", WATCHERS)
def test_daemon_notices_new_mail_and_stops_on_sigterm(setup_for, smtp_server, watch,
                                                      described):
    s = setup_for(smtp_server)
    proc = s.start("--watch", watch)
    wait_for_log(proc, f"daemon started on {s.spool.path}")
    assert described in log_of(proc)
    [message_id] = s.queue()
    wait_until(lambda: len(smtp_server.messages) == 1, what="the queued mail at the server")
    assert received(smtp_server) == {(message_id, r): 1 for r in RECIPIENTS}
    assert s.stop(proc) == 0
    log = log_of(proc)
    assert "stopped on SIGTERM" in log and "sent=1" in log
    assert "Traceback" not in log
    assert s.spool.names("new") == s.spool.names("cur") == []


@pytest.mark.parametrize("watch, described", WATCHERS)
def test_mail_queued_during_a_pass_gets_the_next_pass(setup_for, gated, watch, described):
    s = setup_for(gated)
    proc = s.start("--watch", watch, "--workers", "1")
    wait_for_log(proc, "daemon started")
    assert described in log_of(proc)
    first = s.queue()
    assert gated.handler.in_data.wait(WAIT), log_of(proc)
    second = s.queue()  # the pass in progress listed new/ before this existed
    gated.handler.gate.set()
    wait_until(lambda: len(gated.messages) == 2, what="the mail queued during the pass")
    assert set(received(gated)) == {(m, r) for m in first + second for r in RECIPIENTS}
    assert s.stop(proc) == 0


def _spool_files(spool, state):
    return {name: open(os.path.join(spool.path, state, name), "rb").read()
            for name in spool.names(state)}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_the_message_in_flight_and_leaves_the_rest(
        setup_for, gated, signum):
    s = setup_for(gated, ONE_PROCESS)
    ids = s.queue(3)
    waiting = _spool_files(s.spool, "new")
    proc = s.start("--workers", "1")
    assert gated.handler.in_data.wait(WAIT), log_of(proc)
    signal_taken(proc, signum)
    signal_taken(proc, signum)  # a second one changes nothing
    gated.handler.gate.set()
    assert proc.wait(timeout=60) == 0, log_of(proc)
    log = log_of(proc)
    assert f"stopped on {signal.Signals(signum).name}" in log
    assert "asked 2 times" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    # the one in flight was delivered once and recorded; the others were not touched
    assert received(gated) == {(ids[0], r): 1 for r in RECIPIENTS}
    left = _spool_files(s.spool, "new")
    assert len(left) == 2 and all(waiting[name] == data for name, data in left.items())
    assert s.spool.names("cur") == s.spool.names("deferred") == []
    assert os.listdir(os.path.join(s.spool.path, "meta")) == []
    assert "QUIT" in gated.handler.commands  # the connection was closed properly

    again = s.start("--workers", "1", log_name="again.log")
    wait_until(lambda: len(gated.messages) == 3, what="the rest after a restart")
    assert s.stop(again) == 0
    assert received(gated) == {(m, r): 1 for m in ids for r in RECIPIENTS}
    assert s.spool.names("new") == s.spool.names("cur") == []


def test_with_two_workers_both_messages_in_flight_are_finished(setup_for, gated):
    s = setup_for(gated, ONE_PROCESS)
    ids = s.queue(5)
    proc = s.start("--workers", "2")
    wait_until(lambda: gated.handler.arrived == 2, what="two messages in flight")
    signal_taken(proc, signal.SIGTERM)
    gated.handler.gate.set()
    assert proc.wait(timeout=60) == 0, log_of(proc)
    got = received(gated)
    assert len(got) == 4 and all(n == 1 for n in got.values())  # 2 messages x 2 rcpts
    assert len(s.spool.names("new")) == 3 and s.spool.names("cur") == []
    again = s.start("--workers", "2", log_name="again.log")
    wait_until(lambda: len(gated.messages) == 5, what="the rest after a restart")
    assert s.stop(again) == 0
    assert received(gated) == {(m, r): 1 for m in ids for r in RECIPIENTS}


def test_a_message_waiting_for_the_rate_limit_is_not_started_after_sigterm(setup_for,
                                                                           smtp_server):
    s = setup_for(smtp_server, ONE_PROCESS + "mail.rate_limit = 0.2")  # one message per 5 s
    ids = s.queue(3)
    proc = s.start("--workers", "1")
    wait_until(lambda: len(smtp_server.messages) == 1, what="the first message")
    assert s.stop(proc) == 0  # the second is waiting for its slot, not in flight
    assert received(smtp_server) == {(ids[0], r): 1 for r in RECIPIENTS}
    assert len(s.spool.names("new")) == 2


def test_kill_9_mid_drain_then_restart_delivers_everything(setup_for, gated):
    s = setup_for(gated, ONE_PROCESS + "mail.claim_timeout = 2s")
    ids = s.queue(3)
    proc = s.start("--workers", "1")
    assert gated.handler.in_data.wait(WAIT), log_of(proc)
    proc.kill()
    proc.wait(timeout=30)
    [claimed] = s.spool.names("cur")  # the one in flight, left claimed
    assert len(s.spool.names("new")) == 2
    gated.handler.gate.set()

    again = s.start("--workers", "1", log_name="again.log")
    wait_until(lambda: set(received(gated)) == {(m, r) for m in ids for r in RECIPIENTS},
               what="every message after the restart")
    wait_for_log(again, "recovered=1")  # the stale claim came back through the timer
    assert s.stop(again) == 0
    counts = received(gated)
    for message_id in ids[1:]:
        assert all(counts[message_id, r] == 1 for r in RECIPIENTS)
    assert all(1 <= counts[ids[0], r] <= 2 for r in RECIPIENTS)  # at least once
    assert not any(s.spool.names(state) for state in ("new", "cur", "deferred", "failed"))


def test_a_deferred_message_is_retried_when_due(setup_for, make_smtp_server):
    server = make_smtp_server({"rcpt": ["451 4.3.0 try later", "451 4.3.0 try later",
                                        "250 OK"]})
    s = setup_for(server, """\
        mail.retry_initial = 1s
        mail.retry_max = 2s
        """)
    proc = s.start()
    wait_for_log(proc, "daemon started")
    [message_id] = s.queue()
    wait_until(lambda: received(server) == {(message_id, r): 1 for r in RECIPIENTS},
               what="the deferred message at the server")
    wait_until(lambda: not s.spool.names("deferred"), what="the deferred/ folder to empty")
    assert s.stop(proc) == 0
    log = log_of(proc)
    assert "deferred=1" in log and "sent=1" in log
    assert not any(s.spool.names(state) for state in ("new", "cur", "deferred", "failed"))


def test_sighup_reopens_the_log_file_and_makes_a_pass(setup_for, smtp_server, tmp_path):
    s = setup_for(smtp_server, logging_ini=True)
    proc = s.start()
    log_file = tmp_path / "qp.log"
    wait_until(lambda: log_file.exists() and "daemon started" in log_file.read_text(),
               what="the daemon's first line in qp.log")
    log_file.rename(tmp_path / "qp.log.1")  # what logrotate does
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: log_file.exists() and f"re-opened {log_file}" in log_file.read_text(),
               what="a new qp.log after SIGHUP")
    [message_id] = s.queue()
    wait_until(lambda: message_id in log_file.read_text(), what="the send logged in qp.log")
    assert s.stop(proc) == 0
    assert "stopped on SIGTERM" in log_file.read_text()
    assert message_id not in (tmp_path / "qp.log.1").read_text()
    assert log_of(proc) == ""  # nothing on stderr


def test_one_pass_mode_stops_after_the_message_in_flight(setup_for, gated):
    s = setup_for(gated, ONE_PROCESS)
    ids = s.queue(2)
    log_path = s.tmp_path / "once.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([QP, str(s.ini), "--no-app", "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT)
    s.procs.append(proc)
    assert gated.handler.in_data.wait(WAIT)
    signal_taken(proc, signal.SIGINT)
    gated.handler.gate.set()
    assert proc.wait(timeout=60) == 0
    log = log_path.read_text()
    assert "ended early on SIGINT" in log and "Traceback" not in log
    assert received(gated) == {(ids[0], r): 1 for r in RECIPIENTS}
    assert len(s.spool.names("new")) == 1


def test_the_idle_daemon_holds_no_smtp_connection(setup_for, gated):
    s = setup_for(gated)
    gated.handler.gate.set()
    proc = s.start()
    wait_for_log(proc, "daemon started")
    s.queue()
    wait_until(lambda: "QUIT" in gated.handler.commands, what="QUIT after the pass")
    assert len(gated.messages) == 1
    assert proc.poll() is None  # still running, connection closed
    assert s.stop(proc) == 0


def test_the_daemon_loads_the_app_so_its_subscribers_see_events(setup_for, smtp_server,
                                                                tmp_path):
    (tmp_path / "txmail_testapp.py").write_text(APP_FACTORY)
    events = tmp_path / "events.txt"
    s = setup_for(smtp_server, f"events_file = {events}")
    proc = s.start(app=True)
    wait_for_log(proc, "daemon started")
    lines = lambda: events.read_text().splitlines() if events.exists() else []  # noqa: E731
    first = s.queue()
    wait_until(lambda: len(lines()) == 1, what="the first MailSent event")
    second = s.queue()  # a second pass, with the same registry
    wait_until(lambda: len(lines()) == 2, what="the second MailSent event")
    assert s.stop(proc) == 0
    assert events.read_text().splitlines() == [
        f"MailSent {m} {','.join(RECIPIENTS)}" for m in first + second]


def test_watch_needs_daemon_and_workers_are_checked(tmp_path, smtp_server):
    s = Setup(tmp_path, smtp_server)
    for args, words in [(["--watch", "poll"], "--watch only applies with --daemon"),
                        (["--workers", "0"], "from 1 to 64"),
                        (["--daemon", "--watch", "sometimes"], "invalid choice")]:
        proc = subprocess.run([QP, str(s.ini), "--no-app", *args], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert words in proc.stderr


def test_help_tells_how_to_run_the_daemon():
    proc = subprocess.run([QP, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for text in ("--daemon", "--workers", "--watch", "SIGTERM", "SIGHUP", "systemd",
                 "ExecStart=", "mail.poll_interval", "crontab"):
        assert text in proc.stdout


def test_readme_documents_operating_the_queue():
    readme = open(os.path.join(os.path.dirname(__file__), os.pardir, "docs",
                               "operating.rst")).read()
    for text in ("* * * * *  /srv/app/.venv/bin/txmail-qp", "--daemon", "--watch", "--workers",
                 "SIGHUP", "Type=simple", "ExecStart=/srv/app/.venv/bin/txmail-qp",
                 "Restart=on-failure", "KillSignal=SIGTERM", "TimeoutStopSec=",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths="):
        assert text in readme, text


def test_watch_inotify_where_it_is_unavailable_is_a_config_error(tmp_path, smtp_server,
                                                                  monkeypatch, capsys):
    from pyramid_txmail.queue.maildir import watch
    from pyramid_txmail.scripts import qp

    def unavailable():
        raise watch.WatchUnavailable("inotify_init1: Too many open files")

    monkeypatch.setattr(watch, "_libc", unavailable)
    s = Setup(tmp_path, smtp_server, "mail.processes = 1\n")  # in this process: no fork
    assert qp.main([str(s.ini), "--no-app", "--daemon", "--watch", "inotify"]) == 78
    err = capsys.readouterr().err
    assert err.strip() == ("txmail-qp: error: --watch inotify: inotify_init1: Too many open "
                           "files; use --watch poll")
    assert smtp_server.messages == []


def test_sighup_during_a_long_pass_reopens_the_log_file_at_once(setup_for, gated, tmp_path):
    # probe 11b finding 7: the re-open waited for the pass to end
    s = setup_for(gated, logging_ini=True)
    [message_id] = s.queue()
    proc = s.start("--workers", "1")
    assert gated.handler.in_data.wait(WAIT)  # the pass is held at the final dot
    log_file = tmp_path / "qp.log"
    log_file.rename(tmp_path / "qp.log.1")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: log_file.exists() and f"re-opened {log_file}" in log_file.read_text(),
               what="a new qp.log while the pass still waits for the relay")
    assert not gated.handler.gate.is_set() and proc.poll() is None
    gated.handler.gate.set()
    wait_until(lambda: message_id in log_file.read_text(), what="the send logged in qp.log")
    assert s.stop(proc) == 0
    assert "Traceback" not in log_file.read_text()
