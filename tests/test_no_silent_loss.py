"""Nothing handed to the mailer is lost without a word (issue 12, point 3).

- send with no transaction to join raises NoTransaction, in a script (real subprocess)
  or a request, saying what to do; repoze-style scripts that begin a transaction work;
- a transaction holding mail that is never committed or aborted logs an ERROR naming
  the Message-IDs (at exit: real subprocess; when dropped: in process);
- sending after the commit (an after-commit hook) raises TransactionEnded naming
  send_immediately and `with request.tm:`, instead of transaction's raw ValueError.
"""
from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import transaction
import webtest
from pyramid.config import Configurator
from pyramid.response import Response

from pyramid_txmail import NoTransaction, TransactionEnded, get_mailer

from .app import make_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT_HEAD = """\
import sys
import transaction
from pyramid.config import Configurator
from pyramid_mailer.message import Message
from pyramid_txmail import get_mailer

config = Configurator(settings={{"mail.queue_path": {spool!r}, "mail.delivery": "queue",
                                 "mail.default_sender": "app@example.com"}})
config.include("pyramid_txmail")
mailer = get_mailer(config.registry)
msg = Message(subject="Report", recipients=["bob@example.com"], body="Hello\\n")
"""


def run_script(tmp_path, body):
    spool = str(tmp_path / "spool")
    code = SCRIPT_HEAD.format(spool=spool) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    new = os.path.join(spool, "new")
    return proc, (sorted(os.listdir(new)) if os.path.isdir(new) else [])


def test_a_script_sending_without_a_transaction_gets_an_exception(tmp_path):
    # The reproduction: include with a queue_path, send, exit.
    proc, queued = run_script(tmp_path, """\
        print(mailer.send(msg))
    """)
    assert proc.returncode == 1, proc.stdout
    assert "NoTransaction" in proc.stderr
    assert "transaction.begin()" in proc.stderr and "send_immediately" in proc.stderr
    assert queued == []


def test_a_repoze_style_script_with_begin_and_commit_queues(tmp_path):
    proc, queued = run_script(tmp_path, """\
        transaction.begin()
        mailer.send(msg)
        transaction.commit()
    """)
    assert proc.returncode == 0, proc.stderr
    assert len(queued) == 1 and "ERROR" not in proc.stderr


def test_a_script_with_the_transaction_manager_queues(tmp_path):
    proc, queued = run_script(tmp_path, """\
        with transaction.manager:
            mailer.send(msg)
    """)
    assert proc.returncode == 0, proc.stderr
    assert len(queued) == 1


def test_a_transaction_never_committed_is_reported_at_exit(tmp_path):
    proc, queued = run_script(tmp_path, """\
        transaction.begin()
        print(mailer.send(msg))
        print(mailer.send(msg))
    """)
    ids = proc.stdout.split()
    assert proc.returncode == 0 and len(ids) == 2
    assert "never sent" in proc.stderr
    assert all(i in proc.stderr for i in ids), proc.stderr
    assert queued == []


def test_a_committed_or_aborted_transaction_is_not_reported(tmp_path):
    proc, _ = run_script(tmp_path, """\
        transaction.begin()
        mailer.send(msg)
        transaction.abort()
        with transaction.manager:
            mailer.send(msg)
    """)
    assert proc.returncode == 0 and proc.stderr == ""


def registry_with_spool(tmp_path):
    config = Configurator(settings={"mail.queue_path": str(tmp_path / "spool"),
                                    "mail.default_sender": "app@example.com"})
    config.include("pyramid_txmail")
    return config.registry


def test_a_dropped_transaction_holding_mail_is_reported(tmp_path, caplog):
    registry = registry_with_spool(tmp_path)
    manager = transaction.TransactionManager(explicit=True)
    manager.begin()
    msgid = get_mailer(registry, manager).send(make_message({}))
    with caplog.at_level(logging.ERROR):
        del manager
        gc.collect()
    assert any(msgid in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records), caplog.text


def test_the_thread_local_manager_is_never_begun_quietly(tmp_path):
    registry = registry_with_spool(tmp_path)
    transaction.abort()  # whatever another test left behind (abort ends it)
    with pytest.raises(NoTransaction, match="with transaction.manager:"):
        get_mailer(registry).send(make_message({}))
    assert transaction.manager.manager._txn is None  # none begun behind the caller's back


# -- after the commit ---------------------------------------------------------------------

def app_sending_after_commit(tmp_path, errors):
    """An app whose view sends from an after-commit hook, as plugins do on their events."""
    def hook(status, request):
        try:
            request.mailer.send(make_message({"subject": "from the hook"}))
        except Exception as exc:  # after-commit hooks' exceptions are only logged
            errors.append(exc)

    def view(request):
        request.tm.get().addAfterCommitHook(hook, (request,))
        return Response("ok")

    def finished(request):
        def send_late(request):
            try:
                request.mailer.send(make_message({"subject": "too late"}))
            except Exception as exc:
                errors.append(exc)
            with request.tm:
                request.mailer.send(make_message({"subject": "in a new transaction"}))
        request.add_finished_callback(send_late)
        return Response("ok")

    config = Configurator(settings={"mail.queue_path": str(tmp_path / "spool"),
                                    "mail.default_sender": "app@example.com"})
    config.include("pyramid_txmail")
    config.add_route("hook", "/hook")
    config.add_view(view, route_name="hook")
    config.add_route("finished", "/finished")
    config.add_view(finished, route_name="finished")
    return webtest.TestApp(config.make_wsgi_app())


def test_sending_from_an_after_commit_hook_is_a_clear_error(tmp_path):
    errors = []
    app_sending_after_commit(tmp_path, errors).get("/hook")
    [error] = errors
    assert isinstance(error, TransactionEnded) and isinstance(error, NoTransaction)
    text = str(error)
    assert "send_immediately" in text and "with request.tm:" in text
    assert "already committed" in text and "expected txn status" not in text
    assert not os.listdir(tmp_path / "spool" / "new")


def test_sending_after_pyramid_tm_finished_names_request_tm_which_then_works(tmp_path):
    errors = []
    app_sending_after_commit(tmp_path, errors).get("/finished")
    [error] = errors
    assert isinstance(error, NoTransaction) and "with request.tm:" in str(error)
    assert len(os.listdir(tmp_path / "spool" / "new")) == 1
