"""``txmail-queue`` for people (issue 15, item 3): list filters and pages, bulk retry and
purge with a progress bar on a TTY and a summary line otherwise, the status table, watch.

Real ``txmail-queue`` subprocesses (a pty for the terminal cases) over a spool filled by
real processor passes through an aiosmtpd relay; the SQL outbox's filters through
SQLite (the same code path: :func:`pyramid_txmail.scripts.queue_ops.select`).
"""
from __future__ import annotations

import argparse
import json
import os
import pty
import select as selectmod
import signal
import subprocess
import time

import pytest

from pyramid_txmail.scripts import queue_ops

from .claims_support import PROC_TIMEOUT, QUEUE
from .sql_support import make_queue, message, put
from .test_queue_cli import enqueue, filled, refusing, send_pass, spool, write_ini  # noqa: F401

DAY = 86400.0


def run_queue(ini, *args, env=None):
    return subprocess.run([QUEUE, ini, *args], capture_output=True, text=True,
                          timeout=PROC_TIMEOUT, env=env)


def run_on_tty(ini, *args, env=None):
    """``txmail-queue`` with stdout and stderr on a pseudo-terminal: (exit, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([QUEUE, ini, *args], stdout=slave, stderr=slave,
                            env=dict(os.environ, **(env or {})))
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = selectmod.select([master], [], [], PROC_TIMEOUT)
        if not ready:
            proc.kill()
            raise AssertionError("txmail-queue on a pty did not finish")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the pty
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(PROC_TIMEOUT), b"".join(chunks).decode()


def ids(out):
    return [line.split()[0] for line in out.splitlines()[1:] if line and line[0].isdigit()]


# -- list: filters and pages ---------------------------------------------------------

def test_list_filters_by_recipient_message_id_reason_and_age(tmp_path, spool, filled):
    ini = write_ini(tmp_path)
    got = run_queue(ini, "list", "--to", "GONE@Example.ORG")  # the domain in any case...
    assert got.returncode == 0, got.stderr
    assert set(ids(got.stdout)) == set()  # ...but a local part is case-sensitive
    got = run_queue(ini, "list", "--to", "gone@EXAMPLE.org")
    assert set(ids(got.stdout)) == {filled["gone"], filled["split-copy"]}
    got = run_queue(ini, "list", "--message-id", "later@example.org", "--json")
    assert [m["id"] for m in json.loads(got.stdout)] == [filled["later"]]
    got = run_queue(ini, "list", "--reason", "NO SUCH USER", "--to", "gone@example.org",
                    "--json")  # ANDed
    assert {m["id"] for m in json.loads(got.stdout)} == {filled["gone"], filled["split-copy"]}
    got = run_queue(ini, "list", "--reason", "mailbox busy", "--json")
    assert [m["id"] for m in json.loads(got.stdout)] == [filled["later"]]
    got = run_queue(ini, "list", "--older-than", "1d", "--json")
    assert json.loads(got.stdout) == []
    got = run_queue(ini, "list", "--newer-than", "1h", "--state", "failed", "--json")
    assert len(json.loads(got.stdout)) == 2
    got = run_queue(ini, "list", "--reason", "nothing like it")
    assert got.stdout.startswith("no messages in")


def test_list_pages_with_limit_offset_and_page(tmp_path, spool):
    names = [enqueue(spool, [f"r{i}@example.org"], f"<m{i}@example.org>") for i in range(7)]
    ini = write_ini(tmp_path)
    got = run_queue(ini, "list", "--limit", "3")
    assert ids(got.stdout) == names[:3]
    assert "showing 1-3 of 7; the next page: --offset 3" in got.stdout
    got = run_queue(ini, "list", "--limit", "3", "--offset", "6")
    assert ids(got.stdout) == names[6:] and "showing 7-7 of 7" in got.stdout
    got = run_queue(ini, "list", "--page", "2", "--limit", "3", "--json")
    assert [m["id"] for m in json.loads(got.stdout)] == names[3:6]
    got = run_queue(ini, "list")  # a pipe gets everything, no footer
    assert ids(got.stdout) == names and "showing" not in got.stdout
    got = run_queue(ini, "list", "--offset", "9")
    assert "no messages past --offset 9 (7 matched)" in got.stdout
    assert run_queue(ini, "list", "--limit", "0").returncode == 2


def test_list_on_a_terminal_shows_one_page_and_how_to_see_more(tmp_path, spool):
    for i in range(queue_ops.PAGE_SIZE + 2):
        enqueue(spool, [f"r{i}@example.org"], f"<m{i}@example.org>")
    code, out = run_on_tty(write_ini(tmp_path), "list")
    assert code == 0
    assert len(ids(out)) == queue_ops.PAGE_SIZE
    assert f"showing 1-{queue_ops.PAGE_SIZE} of {queue_ops.PAGE_SIZE + 2}" in out


def test_sql_outbox_list_filters_alike(sqlite_url):
    queue = make_queue(sqlite_url)
    try:
        a = put(queue, toaddrs=["Bob@example.com"])
        put(queue, toaddrs=["other@example.com"])
        args = argparse.Namespace(to="Bob@EXAMPLE.COM", message_id=None, older_than=None,
                                  newer_than=3600.0, reason=None, limit=None, offset=0,
                                  page=None, json=True)
        page, total, _ = queue_ops.select(queue, ("new",), args, time.time(), tty=False)
        assert ([m.name for m in page], total) == ([str(a)], 1)
        c = put(queue, message(message_id="<pick-me@example.com>"))
        args.to, args.message_id = None, "pick-me@example.com"  # narrowed in the query
        page, total, _ = queue_ops.select(queue, ("new",), args, time.time(), tty=False)
        assert [m.name for m in page] == [str(c)]
        args.message_id, args.newer_than, args.older_than = None, None, DAY
        assert queue_ops.select(queue, ("new",), args, time.time(), tty=False)[1] == 0
        assert queue_ops.select(queue, ("new",), args, time.time() + 2 * DAY,
                                tty=False)[1] == 3
    finally:
        queue.close()


# -- bulk retry and purge ------------------------------------------------------------

def test_retry_all_failed_and_purge_print_one_summary_line_in_a_pipe(tmp_path, spool,
                                                                      filled):
    ini = write_ini(tmp_path)
    got = run_queue(ini, "retry", "--all-failed")
    assert got.returncode == 0, got.stderr
    assert got.stdout == "retried 2 of 2; 0 vanished\n" and got.stderr == ""
    assert spool.names("failed") == []
    got = run_queue(ini, "purge", "--state", "deferred", "--all")
    assert got.stdout == "removed 1 message from deferred/; 0 vanished\n"
    assert spool.names("deferred") == []


def test_retry_all_failed_on_a_terminal_draws_a_progress_bar(tmp_path, spool, filled):
    code, out = run_on_tty(write_ini(tmp_path), "retry", "--all-failed")
    assert code == 0
    assert "\rretry [" in out and "] 2/2" in out
    assert "retried 2 of 2; 0 vanished" in out


# -- status, watch -------------------------------------------------------------------

def test_status_on_a_terminal_is_a_table_and_honours_no_color(tmp_path, spool, filled):
    ini = write_ini(tmp_path)
    code, out = run_on_tty(ini, "status")
    assert code == 0
    assert "STATE" in out and "COUNT" in out and "\x1b[1m" in out
    code, out = run_on_tty(ini, "status", env={"NO_COLOR": "1"})
    assert "STATE" in out and "\x1b[" not in out
    piped = run_queue(ini, "status")
    assert piped.stdout.startswith("spool: ") and "\x1b" not in piped.stdout
    assert json.loads(run_queue(ini, "status", "--json").stdout)["failed"] == 2


def test_watch_refreshes_until_ctrl_c_and_exits_0(tmp_path, spool, filled):
    proc = subprocess.Popen([QUEUE, write_ini(tmp_path), "watch", "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    while seen.count(b"txmail-queue watch") < 2:  # refreshed at least once
        ready, _, _ = selectmod.select([proc.stdout], [], [], PROC_TIMEOUT)
        assert ready, "watch printed nothing"
        seen += os.read(proc.stdout.fileno(), 65536)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=PROC_TIMEOUT)
    assert proc.returncode == 0
    assert b"Traceback" not in err and err == b""
    assert b"failed/" in seen
