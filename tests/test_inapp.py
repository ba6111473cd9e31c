"""``mail.processor = thread`` under real servers: waitress (pserve), gunicorn with 2
workers, ``pserve --reload``, and scripts that load the app without serving it.

Mail is sent by views through ``request.mailer`` into a spool; the processor
threads of the web processes deliver it to a real aiosmtpd sink on 127.0.0.1,
where each message must arrive exactly once.  Waits are generous deadlines,
never speed assertions: the daemon's 60 s rescan is beyond every deadline, so a
delivery within one proves a thread's watcher woke it.
"""
from __future__ import annotations

import ast
import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest

from pyramid_txmail import parse_settings
from pyramid.exceptions import ConfigurationError

from .smtpserver import SMTPServer, free_port
from .sql_support import db_url  # noqa: F401 (fixture)
from .test_daemon import GatedHandler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
WAIT = 60.0  # generous: 8 helpers on 2 cores; never a speed target
THREAD = "txmail-processor"
STARTED = "processor thread started in pid"


def wait_until(predicate, timeout=WAIT, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def received(server):
    """``{message_id: times received}`` at the sink."""
    counts = collections.Counter()
    for msg in server.messages:
        for line in msg.data.splitlines():
            if line.lower().startswith(b"message-id:"):
                counts[line.split(b":", 1)[1].strip().decode()] += 1
                break
    return counts


class Site:
    """An ini for tests/inapp_app.py, its spool, and the server process serving it."""

    def __init__(self, tmp_path, server, app="main", queue=None):
        self.tmp_path = tmp_path
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_file = tmp_path / "txmail.log"
        self.events_file = tmp_path / "events.txt"
        self.gate_dir = tmp_path / "gate"
        self.gate_dir.mkdir()
        self.spool = tmp_path / "spool"
        self.ini = tmp_path / "app.ini"
        self.ini.write_text(textwrap.dedent(f"""\
            [app:main]
            use = call:tests.inapp_app:{app}
            mail.host = {server.host}
            mail.port = {server.port}
            {queue or f"mail.queue_path = {self.spool}"}
            mail.default_sender = app@example.org
            mail.processor = thread
            mail.workers = 2
            log_file = {self.log_file}
            events_file = {self.events_file}
            gate_dir = {self.gate_dir}

            [server:main]
            use = egg:waitress#main
            listen = 127.0.0.1:{self.port}
            threads = 4
            """))
        self.proc = None
        self.stderr = tmp_path / "server.err"

    def env(self):
        return dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [ROOT, os.environ.get("PYTHONPATH")])))

    def start(self, *argv):
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=self.tmp_path, env=self.env(),
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        wait_until(self.answers, what=f"{argv[0]} to answer on {self.base}")
        return self.proc

    def answers(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited {self.proc.returncode}:\n"
                                 + self.stderr.read_text())
        try:
            self.get("/threads", timeout=2)
            return True
        except OSError:
            return False

    def get(self, path, timeout=WAIT):
        with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
            return json.loads(response.read().decode())

    def started_pids(self):
        text = self.log_file.read_text() if self.log_file.exists() else ""
        return [int(line.split(STARTED, 1)[1].split()[0]) for line in text.splitlines()
                if STARTED in line]

    def sent_events(self):
        if not self.events_file.exists():
            return collections.Counter()
        return collections.Counter(line.split()[1]
                                   for line in self.events_file.read_text().splitlines())

    def terminate(self):
        """SIGTERM to the server; its exit status (the whole group is cleaned up after)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT * 2)
        finally:
            self.kill()

    def kill(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def queue_left(self):
        return sorted(name for state in ("new", "cur", "deferred")
                      if (self.spool / state).is_dir()
                      for name in os.listdir(self.spool / state) if not name.startswith("."))


@pytest.fixture
def sink():
    with SMTPServer() as server:
        yield server


@pytest.fixture
def gated_sink():
    handler = GatedHandler()
    with SMTPServer(handler=handler) as server:
        server.gate = handler
        yield server
        handler.gate.set()


def start_gunicorn(site, *more):
    argv = [os.path.join(BIN, "gunicorn"), "--paste", str(site.ini), "--workers", "2",
            "--bind", f"127.0.0.1:{site.port}", "--graceful-timeout", "60",
            "--no-control-socket"]
    return site.start(*argv, *more)


def both_workers_started(site):
    """A /hold request keeps one sync worker busy, so /threads goes to the other: the
    first request of each starts its thread.  Their pids."""
    held = {}
    holder = threading.Thread(target=lambda: held.update(pid=site.get("/hold")))
    holder.start()
    try:
        wait_until(lambda: any(name.startswith("held-") for name in os.listdir(site.gate_dir)),
                   what="a worker to hold /hold")
        other = site.get("/threads")
        wait_until(lambda: len(set(site.started_pids())) == 2, what="both workers' threads")
    finally:
        (site.gate_dir / "open").touch()
        holder.join(WAIT)
    assert held["pid"] != other["pid"]
    assert sorted(site.started_pids()) == sorted({held["pid"], other["pid"]})
    assert site.proc.pid not in site.started_pids()  # never in gunicorn's master
    return held["pid"], other["pid"]


def assert_clean_exit(site, status):
    err = site.stderr.read_text()
    assert status == 0, err
    assert "Traceback" not in err, err
    assert "Traceback" not in site.log_file.read_text()


def test_waitress_delivers_each_message_once_and_exits_cleanly_on_sigterm(tmp_path, sink):
    site = Site(tmp_path, sink)
    site.start(os.path.join(BIN, "pserve"), str(site.ini))
    try:
        ids = []
        for batch in range(4):
            ids += site.get(f"/send?n=5&tag=w{batch}")
        wait_until(lambda: set(received(sink)) >= set(ids), what="20 messages at the sink")
        wait_until(lambda: set(site.sent_events()) >= set(ids), what="the MailSent events")
        info = site.get("/threads")
        assert THREAD in info["threads"]
        assert site.started_pids() == [info["pid"]]
        status = site.terminate()
    finally:
        site.kill()
    assert received(sink) == collections.Counter({i: 1 for i in ids})
    assert site.sent_events() == collections.Counter({i: 1 for i in ids})
    assert site.queue_left() == []
    assert_clean_exit(site, status)
    assert "processor thread" in site.log_file.read_text()


def test_sigterm_finishes_the_message_in_flight(tmp_path, gated_sink):
    """SIGTERM while the sink holds the reply to the final dot: the message is
    finished and recorded (not left claimed to be sent twice), then exit 0."""
    site = Site(tmp_path, gated_sink)
    site.start(os.path.join(BIN, "pserve"), str(site.ini))
    try:
        [message_id] = site.get("/send?n=1&tag=flight")
        assert gated_sink.gate.in_data.wait(WAIT), "the message never reached DATA"
        site.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping the processor thread" in site.log_file.read_text(),
                   what="the stop at exit to begin")
        gated_sink.gate.gate.set()
        status = site.proc.wait(timeout=WAIT * 2)
    finally:
        site.kill()
    assert_clean_exit(site, status)
    assert received(gated_sink) == {message_id: 1}
    assert site.queue_left() == []  # recorded as sent before the exit
    assert site.sent_events() == {message_id: 1}


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-load", "preload"])
def test_gunicorn_two_workers_deliver_each_message_once(tmp_path, sink, preload):
    site = Site(tmp_path, sink)
    start_gunicorn(site, *(["--preload"] if preload else []))
    try:
        both_workers_started(site)
        ids = []
        for batch in range(6):  # both threads sleep on the spool: they race for claims
            ids += site.get(f"/send?n=10&tag=g{batch}")
        wait_until(lambda: set(received(sink)) >= set(ids), what="60 messages at the sink")
        wait_until(lambda: set(site.sent_events()) >= set(ids), what="the MailSent events")
        status = site.terminate()
    finally:
        (site.gate_dir / "open").touch()
        site.kill()
    assert received(sink) == collections.Counter({i: 1 for i in ids})
    assert site.sent_events() == collections.Counter({i: 1 for i in ids})
    assert site.queue_left() == []
    assert_clean_exit(site, status)


def test_pserve_reload_runs_the_thread_in_its_worker_only(tmp_path, sink):
    site = Site(tmp_path, sink)
    site.start(os.path.join(BIN, "pserve"), "--reload", str(site.ini))
    try:
        info = site.get("/threads")
        assert info["pid"] != site.proc.pid  # served by hupper's worker process
        assert THREAD in info["threads"]
        ids = site.get("/send?n=3&tag=r")
        wait_until(lambda: set(received(sink)) >= set(ids), what="3 messages at the sink")
        assert site.started_pids() == [info["pid"]]  # one thread, in the worker
    finally:
        site.kill()
    assert received(sink) == collections.Counter({i: 1 for i in ids})


BOOTSTRAP_SCRIPT = """
import json, sys, threading
import transaction
from pyramid.paster import bootstrap
from pyramid_txmail import Mail, get_mailer

with bootstrap(sys.argv[1]) as env:
    with transaction.manager:
        get_mailer(env["registry"]).send(Mail(subject="s", to=["s@example.net"], text="s"))
    print(json.dumps(sorted(t.name for t in threading.enumerate())))
"""


def test_scripts_that_load_the_app_do_not_start_the_thread(tmp_path, sink):
    """A pshell-like bootstrap() script, prequest, and txmail-queue load the app
    without serving it: none starts a processor thread (the mail stays queued)."""
    site = Site(tmp_path, sink)
    script = tmp_path / "script.py"
    script.write_text(BOOTSTRAP_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(site.ini)], env=site.env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=WAIT * 2)
    assert done.returncode == 0, done.stderr
    assert THREAD not in json.loads(done.stdout)
    prequest = subprocess.run([os.path.join(BIN, "prequest"), str(site.ini), "/threads"],
                              env=site.env(), cwd=tmp_path, capture_output=True, text=True,
                              timeout=WAIT * 2)
    assert prequest.returncode == 0, prequest.stderr
    body = prequest.stdout.strip()  # pyramid 2.1's prequest prints the body's repr
    body = ast.literal_eval(body).decode() if body.startswith("b'") else body
    assert json.loads(body)["threads"] == ["MainThread"]
    assert site.started_pids() == []
    assert len(os.listdir(site.spool / "new")) == 1  # queued, not delivered by a script
    assert sink.messages == []


def test_thread_without_a_queue_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="mail.processor: thread needs a queue"):
        parse_settings({"mail.processor": "thread"})
    with pytest.raises(ConfigurationError, match="mail.processor"):
        parse_settings({"mail.processor": "threads", "mail.queue_path": "/tmp"})
    assert parse_settings({}).processor == "external"


def test_gunicorn_two_workers_on_the_sql_outbox_deliver_each_message_once(tmp_path, sink,
                                                                          db_url):
    """The same on the SQL outbox: SKIP LOCKED leases on PostgreSQL (woken by
    LISTEN/NOTIFY), polling on SQLite; each request's mail row commits with it."""
    import sqlalchemy as sa

    from pyramid_txmail.queue.sql import init_db

    engine = sa.create_engine(db_url)
    init_db(engine)
    engine.dispose()
    site = Site(tmp_path, sink, app="sql_main", queue=f"mail.queue_url = {db_url}")
    start_gunicorn(site)
    try:
        both_workers_started(site)
        ids = []
        for batch in range(4):
            ids += site.get(f"/send?n=10&tag=s{batch}")
        wait_until(lambda: set(received(sink)) >= set(ids), what="40 messages at the sink")
        wait_until(lambda: set(site.sent_events()) >= set(ids), what="the MailSent events")
        status = site.terminate()
    finally:
        site.kill()
    assert received(sink) == collections.Counter({i: 1 for i in ids})
    assert site.sent_events() == collections.Counter({i: 1 for i in ids})
    assert_clean_exit(site, status)


def test_a_forked_child_starts_its_own_thread(tmp_path, sink):
    """A thread does not survive fork (gunicorn --preload after a request in the
    master, multiprocessing): the child forgets the parent's and starts its own."""
    from pyramid.config import Configurator

    from pyramid_txmail.processor.inapp import InAppProcessor
    from pyramid_txmail.settings import parse_settings as parse

    (tmp_path / "spool").mkdir()
    settings = parse({"mail.queue_path": str(tmp_path / "spool"), "mail.processor": "thread",
                      "mail.host": sink.host, "mail.port": str(sink.port)})
    config = Configurator()
    inapp = InAppProcessor(settings, config.registry)
    try:
        parent_thread = inapp.ensure_started()
        assert parent_thread is not None and inapp.running
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status, never return into pytest
            code = 1
            try:
                if not inapp.running and inapp.thread is None:
                    code = 2
                    child_thread = inapp.ensure_started()
                    if child_thread is not parent_thread and inapp.running:
                        code = 3
                        if inapp.stop("test", timeout=WAIT):
                            code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert inapp.running  # the parent's thread is untouched
    finally:
        assert inapp.stop("test", timeout=WAIT)


SIGTERM_SCRIPT = """
import os, signal, sys
from pyramid.paster import bootstrap

env = bootstrap(sys.argv[1])
print("loaded", flush=True)
os.kill(os.getpid(), signal.SIGTERM)
print("survived", flush=True)
"""


def test_a_script_still_dies_of_sigterm(tmp_path, sink):
    """The SIGTERM handler the include installs changes nothing in a process that
    runs no processor thread: it dies of the signal, as it did without us."""
    site = Site(tmp_path, sink)
    script = tmp_path / "sigterm.py"
    script.write_text(SIGTERM_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(site.ini)], env=site.env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=WAIT * 2)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert done.stdout == "loaded\n"
    assert "Traceback" not in done.stderr
