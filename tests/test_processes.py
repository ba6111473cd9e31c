"""``mail.processes``: txmail-qp as a parent of several processes over one queue.

Real ``txmail-qp`` subprocesses, real signals, aiosmtpd servers on 127.0.0.1, a
spool and an SQL outbox (SQLite here; the PostgreSQL outbox is claimed the same
way, tested with several processes in tests/test_sql_qp.py).  The children are
found as the parent's children in /proc.  Waits are generous deadlines, never
speed assertions.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from pyramid_txmail.processor import child, supervisor
from pyramid_txmail.settings import parse_settings, usable_cores

from .smtpserver import free_port
from .test_daemon import GatedHandler, log_of, received, wait_for_log, wait_until
from .test_daemon import setup_for  # noqa: F401 (fixture)
from .test_sql_qp import QP, QUEUE, put, run, write_ini

WAIT = 30.0


def children_of(pid):
    """The pids of ``pid``'s live children (Linux /proc)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            continue
    return sorted(found)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def spool_state_counts(spool):
    return {state: len([n for n in os.listdir(os.path.join(spool.path, state))
                        if not n.startswith(".")])
            for state in ("new", "cur", "deferred", "failed")}


# -- the setting -------------------------------------------------------------------------

def test_the_default_is_the_usable_cores_and_bounds_name_the_key():
    assert parse_settings({}).processes == min(usable_cores(), 64)
    assert parse_settings({"mail.processes": "3"}).processes == 3
    for bad, why in (("0", ">= 1"), ("65", "<= 64"), ("two", "whole number")):
        with pytest.raises(Exception, match=f"mail.processes = '{bad}': .*{why}"):
            parse_settings({"mail.processes": bad})


def test_a_child_gets_its_share_of_the_rate_and_no_port_of_its_own(monkeypatch):
    settings = parse_settings({"mail.rate_limit": "30", "mail.metrics_port": "9999",
                               "mail.queue_path": "/tmp/x"})
    assert supervisor.for_this_process(settings) is settings  # the parent, or one process
    monkeypatch.setattr(child, "CHILD", child.ChildLink(0, 3, -1, os.getpid()))
    share = supervisor.for_this_process(settings)
    assert (share.processes, share.rate_limit, share.metrics_port) == (1, 10.0, None)


# -- one pass ----------------------------------------------------------------------------

def test_one_pass_with_three_processes_delivers_each_message_once(setup_for, smtp_server):
    s = setup_for(smtp_server, "mail.processes = 3\n")
    ids = s.queue(60)
    proc = run(QP, str(s.ini), "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert "3 processes (pids" in proc.stderr
    assert "pass by 3 processes: sent=60 deferred=0 failed=0" in proc.stderr
    assert received(smtp_server) == {(i, r): 1 for i in ids
                                     for r in ("a@example.org", "b@example.net")}
    assert spool_state_counts(s.spool) == {"new": 0, "cur": 0, "deferred": 0, "failed": 0}


def test_processes_on_the_command_line_override_the_setting(setup_for, smtp_server):
    s = setup_for(smtp_server, "mail.processes = 3\n")
    s.queue(2)
    proc = run(QP, str(s.ini), "--no-app", "--processes", "1")
    assert proc.returncode == 0, proc.stderr
    assert "processes (pids" not in proc.stderr and "sent=2" in proc.stderr
    bad = run(QP, str(s.ini), "--processes", "0")
    assert bad.returncode == 2 and "--processes: '0': expected a whole number from 1 to 64" \
        in bad.stderr


@pytest.mark.parametrize("processes", ["1", "2"])
def test_an_unknown_key_is_warned_about_once(setup_for, smtp_server, processes):
    s = setup_for(smtp_server, f"mail.processes = {processes}\nmail.bogus = 1\n")
    proc = run(QP, str(s.ini), "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("mail.bogus is not a pyramid_txmail setting") == 1


def test_an_sql_outbox_is_drained_by_several_processes_once(tmp_path, sqlite_url, smtp_server):
    ini = write_ini(tmp_path, sqlite_url, smtp_server, "mail.processes = 3\n")
    assert run(QUEUE, ini, "init-db").returncode == 0
    ids = put(sqlite_url, ["a@example.org"], n=40)
    proc = run(QP, ini, "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert "pass by 3 processes: sent=40 deferred=0 failed=0" in proc.stderr
    assert len(ids) == 40 and len(smtp_server.messages) == 40
    assert all(n == 1 for n in received(smtp_server).values())


def test_a_configuration_error_in_the_children_is_said_once_with_status_78(tmp_path,
                                                                           smtp_server):
    ini = tmp_path / "app.ini"
    ini.write_text(f"[app:main]\nuse = call:no_such_module:main\nmail.processes = 2\n"
                   f"mail.queue_path = {tmp_path}\nmail.host = {smtp_server.host}\n")
    (tmp_path / "new").mkdir()
    proc = run(QP, str(ini))
    assert proc.returncode == 78, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("txmail-qp: error: ")
    assert "cannot load the application" in errors[0]
    assert "Traceback" not in proc.stderr


def test_a_child_killed_during_a_one_pass_run_makes_the_exit_status_1(setup_for,
                                                                     make_smtp_server):
    gated = make_smtp_server(handler=GatedHandler())
    s = setup_for(gated, "mail.processes = 2\n")
    s.queue(1)
    proc = subprocess.Popen([QP, str(s.ini), "--no-app"], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: gated.handler.in_data.is_set(), WAIT, "a message in flight")
        for pid in children_of(proc.pid):
            os.kill(pid, signal.SIGKILL)
        gated.handler.gate.set()
        assert proc.wait(timeout=60) == 1
        err = proc.stderr.read()
        assert "was killed by SIGKILL during the pass" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_process_with_threads_running_is_not_forked(tmp_path):
    ini = tmp_path / "app.ini"
    ini.write_text(f"[app:main]\nmail.processes = 2\nmail.queue_path = {tmp_path}\n")
    code = ("import threading, time, sys\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "from pyramid_txmail.scripts import qp\n"
            f"sys.exit(qp.main([{str(ini)!r}, '--no-app']))\n")
    proc = run(sys.executable, "-c", code)
    assert proc.returncode == 78, proc.stderr
    assert proc.stderr.startswith("txmail-qp: error: mail.processes = 2: txmail-qp cannot "
                                  "fork its worker processes here")


# -- the daemon --------------------------------------------------------------------------

def start(s, *args):
    proc = s.start(*args)
    wait_until(lambda: log_of(proc).count("daemon started on") >= 2, WAIT,
               "both processes started:\n" + log_of(proc))
    return proc


def test_sigterm_to_the_parent_stops_every_child(setup_for, smtp_server):
    s = setup_for(smtp_server, "mail.processes = 2\n")
    proc = start(s)
    kids = children_of(proc.pid)
    assert len(kids) == 2
    ids = s.queue(10)
    wait_until(lambda: len(smtp_server.messages) == 10, WAIT, "the mail at the server")
    assert s.stop(proc) == 0
    assert not any(alive(pid) for pid in kids)
    assert log_of(proc).count("daemon stopped on SIGTERM") == 2
    assert "txmail-qp stopped on SIGTERM: 2 processes ended (exit status 0)" in log_of(proc)
    assert received(smtp_server) == {(i, r): 1 for i in ids
                                     for r in ("a@example.org", "b@example.net")}


def test_a_killed_child_is_restarted_and_nothing_is_lost(setup_for, make_smtp_server):
    gated = make_smtp_server(handler=GatedHandler())
    s = setup_for(gated, "mail.processes = 2\nmail.claim_timeout = 2\n")
    proc = start(s)
    [first] = s.queue(1)
    wait_until(lambda: gated.handler.in_data.is_set(), WAIT, "a message in flight")
    kids = children_of(proc.pid)
    for pid in kids:  # whichever holds it: both die with it in flight
        os.kill(pid, signal.SIGKILL)
    wait_for_log(proc, "restarting it")
    gated.handler.gate.set()
    wait_until(lambda: len(set(children_of(proc.pid)) - set(kids)) == 2, WAIT,
               "two new children")
    later = s.queue(5)
    wait_until(lambda: all((i, "a@example.org") in received(gated) for i in [first] + later),
               WAIT, "every message at the server")
    counts = received(gated)
    assert all(counts[i, r] == 1 for i in later for r in ("a@example.org", "b@example.net"))
    assert counts[first, "a@example.org"] >= 1  # in flight when killed: at least once
    assert "was killed by SIGKILL; restarting it" in log_of(proc)
    assert s.stop(proc) == 0


def test_children_end_when_the_parent_is_killed(setup_for, smtp_server):
    s = setup_for(smtp_server, "mail.processes = 2\n")
    proc = start(s)
    kids = children_of(proc.pid)
    proc.kill()
    proc.wait()
    wait_until(lambda: not any(alive(pid) for pid in kids), WAIT, "the orphans to exit")


def test_children_that_keep_dying_at_once_make_the_parent_give_up(setup_for, smtp_server,
                                                                 monkeypatch):
    s = setup_for(smtp_server, "mail.processes = 2\n")
    (s.tmp_path / "dying_app.py").write_text("import os\n\ndef main(g, **kw):\n    os._exit(3)\n")
    s.ini.write_text(s.ini.read_text().replace("txmail_testapp", "dying_app"))
    proc = s.start(app=True)
    assert proc.wait(timeout=120) == 1
    log = log_of(proc)
    assert "exited with status 3; restarting it" in log
    assert "keep dying at once" in log and "giving up" in log


def test_the_parent_serves_the_summed_metrics_and_health(setup_for, smtp_server):
    pytest.importorskip("prometheus_client")
    port = free_port()
    s = setup_for(smtp_server, f"mail.processes = 2\nmail.metrics_port = {port}\n")
    proc = start(s)
    s.queue(30)
    wait_until(lambda: len(smtp_server.messages) == 30, WAIT, "the mail at the server")

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()

    wait_until(lambda: "txmail_delivery_attempts_total 30.0" in scrape(), WAIT,
               "the children's attempts summed")
    text = scrape()
    assert 'txmail_messages_total{code_class="2xx",outcome="sent",' in text
    assert 'txmail_queue_messages{state="queued"} 0.0' in text
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"
    assert s.stop(proc) == 0


def test_only_the_parent_talks_to_systemd(setup_for, smtp_server, tmp_path):
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(WAIT)
    s = setup_for(smtp_server, "mail.processes = 2\n")
    os.environ["NOTIFY_SOCKET"] = address
    try:
        proc = start(s)
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        got = []
        while not any(m.startswith("READY=1") for m in got):  # a STATUS may come first
            got.append(sock.recv(4096).decode())
        s.queue(1)
        wait_until(lambda: len(smtp_server.messages) == 1, WAIT, "the mail")
        assert s.stop(proc) == 0
        sock.settimeout(2)
        rest = []
        while True:
            try:
                rest.append(sock.recv(4096).decode())
            except socket.timeout:
                break
        assert not any("READY=1" in line for line in rest)  # one READY, from the parent
        assert "STOPPING=1" in rest
    finally:
        sock.close()


def test_a_storm_of_sigterm_at_the_parent_ends_everything_with_0(setup_for,
                                                                  make_smtp_server):
    gated = make_smtp_server(handler=GatedHandler())
    s = setup_for(gated, "mail.processes = 2\n")
    proc = start(s, "--workers", "1", "-v")  # -v: each child says when it takes the stop
    ids = s.queue(6)
    wait_until(lambda: gated.handler.arrived >= 2, WAIT, "one message in flight per child")
    for _ in range(2000):  # as fast as kill(2) goes: the parent's handler does nothing
        os.kill(proc.pid, signal.SIGTERM)
    # the parent forwards the stop; opened before both children took it, the gate would
    # let a child's worker claim its next message first (seen once at load ~3)
    wait_until(lambda: log_of(proc).count("SIGTERM taken") >= 2, WAIT,
               "both children to take the forwarded SIGTERM:\n" + log_of(proc))
    gated.handler.gate.set()
    assert proc.wait(timeout=120) == 0, log_of(proc)
    counts = received(gated)
    assert all(n == 1 for n in counts.values())  # the two in flight, once each
    assert len({i for i, _ in counts}) == 2
    left = spool_state_counts(s.spool)
    assert left == {"new": 4, "cur": 0, "deferred": 0, "failed": 0}  # the rest, untouched
    assert len(ids) == 6 and "Traceback" not in log_of(proc)


# -- what a restarted child inherits -------------------------------------------------------

def _socket_inodes(pid):
    """The inodes of the sockets ``pid`` holds open (/proc/<pid>/fd)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:["):-1])
    return found


def _tcp_inodes_to(port):
    """The inodes of the TCP sockets connected to ``port`` (/proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found


def test_a_restarted_child_shares_no_database_connection_with_the_parent(tmp_path, pg_url,
                                                                          smtp_server):
    """The parent opens its own view of the queue (for /metrics and /healthz) once the
    first children are up; a child restarted later is forked from it.  Whatever the
    parent's pool holds then -- a PostgreSQL connection, its socket -- must be neither
    used nor closed by the child: two processes on one session interleave their
    protocol messages, and the child's close would end the parent's session."""
    pytest.importorskip("prometheus_client")
    from sqlalchemy.engine import make_url

    from .test_sql_qp import log_of as sql_log_of
    from .test_sql_qp import start_daemon
    port = free_port()
    ini = write_ini(tmp_path, pg_url, smtp_server,
                    f"mail.processes = 2\nmail.metrics_port = {port}\n")
    assert run(QUEUE, ini, "init-db").returncode == 0
    proc = start_daemon(ini, tmp_path)
    try:
        wait_until(lambda: sql_log_of(proc).count("daemon started on") >= 2, WAIT,
                   "both processes started")

        def health():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                return json.loads(r.read())["status"]

        wait_until(lambda: health() == "ok", WAIT, "the parent's /healthz")
        pg_port = make_url(pg_url).port
        parents = _socket_inodes(proc.pid) & _tcp_inodes_to(pg_port)
        assert parents, "the parent holds no PostgreSQL connection: nothing is tested"
        kids = children_of(proc.pid)
        os.kill(kids[0], signal.SIGKILL)
        wait_until(lambda: len(set(children_of(proc.pid)) - set(kids)) == 1, WAIT,
                   "the child restarted")
        wait_until(lambda: sql_log_of(proc).count("daemon started on") >= 3, WAIT,
                   "the restarted child running")
        [new] = set(children_of(proc.pid)) - set(kids)
        assert _socket_inodes(new) & parents == set()
        # nor any other socket of the parent's (its /metrics listener, above all)
        assert _socket_inodes(new) & _socket_inodes(proc.pid) == set()
        assert health() == "ok"  # the parent's own connection still works
        assert _socket_inodes(proc.pid) & _tcp_inodes_to(pg_port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
