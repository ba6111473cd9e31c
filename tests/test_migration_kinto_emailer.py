"""kinto-emailer 4.0.0 (PyPI) switched from pyramid_mailer by its include and imports.

Its own suite (37 tests, which mock the mailer) must pass as it does on pyramid_mailer,
and its real mail path must put mail at a real SMTP sink: the notification a new record
triggers (sent from kinto-emailer's after-commit subscriber with ``send_immediately``),
the ``kinto-send-email`` console script, and its ``mail.debug_mailer`` switch, which
includes ``pyramid_txmail.debug`` after the switch.  See tests/migration_support.py.
"""
from __future__ import annotations

import email
import email.policy
import json

import pytest

from .migration_support import (KINTO_EMAILER as PROJECT, RUN_TIMEOUT, assert_suite_passes,
                                drive, guard_call_names, guard_calls, project_fixtures,
                                run_console_script)

SENDER = "kinto@example.com"
KINTO_INI = """\
[app:main]
use = egg:kinto
kinto.storage_backend = kinto.core.storage.memory
kinto.cache_backend = kinto.core.cache.memory
kinto.permission_backend = kinto.core.permission.memory
kinto.userid_hmac_secret = 4007422f41789c553cfcf31806ae6312d4316d1f15f8b10619d82c762101fb96
multiauth.policies = basicauth
kinto.bucket_create_principals = system.Everyone
kinto.includes = kinto_emailer
mail.default_sender = {sender}
"""


pristine, switched, harness = project_fixtures(PROJECT)


def write_ini(path, *lines):
    path.write_text(KINTO_INI.format(sender=SENDER) + "".join(f"{line}\n" for line in lines))
    return path


def sink_lines(server):
    return [f"mail.host = {server.host}", f"mail.port = {server.port}"]


def parsed(received):
    return email.message_from_bytes(received.data, policy=email.policy.default)


def assert_notification(server, record_id):
    [got] = server.messages
    assert got.mail_from == SENDER
    assert sorted(got.rcpt_tos) == ["plain@example.org", "reviewer@example.org"]
    msg = parsed(got)
    assert msg["Subject"] == f"Record {record_id} created"
    assert "Reviewer <reviewer@example.org>" in str(msg["To"])
    assert f"Record {record_id} was created in b/c." in msg.get_content()


@pytest.mark.timeout(RUN_TIMEOUT)
def test_before_the_switch_its_suite_passes_on_pyramid_mailer(pristine, tmp_path):
    assert_suite_passes(PROJECT, pristine, tmp_path / "junit.xml")


def test_before_the_switch_a_new_record_is_mailed_by_pyramid_mailer(pristine, tmp_path,
                                                                     smtp_server, harness):
    """The driver's path does send on pyramid_mailer (so the comparison is fair), and
    the guard sees it (so its empty record after the switch means something)."""
    ini = write_ini(tmp_path / "kinto.ini", *sink_lines(smtp_server))
    proc = drive("drive_kinto.py", PROJECT, pristine, *harness, str(ini))
    assert proc.returncode == 0, proc.stderr
    assert_notification(smtp_server, json.loads(proc.stdout)["record"])
    calls = guard_call_names(harness[1])
    assert calls == {"config.include('pyramid_mailer')", "pyramid_mailer.get_mailer",
                     "pyramid_mailer.mailer.Mailer.send_immediately"}


def test_the_switch_changes_only_the_include_and_the_imports(switched):
    root, changed = switched
    assert changed == PROJECT.switched_lines


@pytest.mark.timeout(RUN_TIMEOUT)
def test_after_the_switch_its_suite_passes_on_pyramid_txmail(switched, tmp_path, harness):
    root, _ = switched
    assert_suite_passes(PROJECT, root, tmp_path / "junit.xml", harness)


def test_after_the_switch_a_new_record_is_mailed_to_the_smtp_sink(switched, tmp_path,
                                                                  smtp_server, harness):
    """kinto-emailer's after-commit subscriber calls ``send_immediately``; kinto's own
    ``mail.debug_mailer`` key is in the configuration, as in its test ini files."""
    root, _ = switched
    ini = write_ini(tmp_path / "kinto.ini", *sink_lines(smtp_server),
                    "mail.debug_mailer = false")
    proc = drive("drive_kinto.py", PROJECT, root, *harness, str(ini))
    assert proc.returncode == 0, proc.stderr
    assert "Could not send notifications" not in proc.stderr, proc.stderr
    assert_notification(smtp_server, json.loads(proc.stdout)["record"])
    assert guard_calls(harness[1]) == []


def test_after_the_switch_kinto_send_email_reaches_the_smtp_sink(switched, tmp_path,
                                                                 smtp_server, harness):
    """The console script: bootstrap the ini, ``get_mailer(registry).send_immediately``."""
    root, _ = switched
    ini = write_ini(tmp_path / "kinto.ini", *sink_lines(smtp_server))
    proc = run_console_script("kinto-send-email", [str(ini), "Admin <admin@example.org>"],
                              PROJECT, root, *harness, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Done." in proc.stdout
    [got] = smtp_server.messages
    assert (got.mail_from, got.rcpt_tos) == (SENDER, ["admin@example.org"])
    assert parsed(got)["Subject"] == "[kinto-emailer] Test"
    assert guard_calls(harness[1]) == []


def test_after_the_switch_debug_mailer_writes_the_notification_as_eml(switched, tmp_path,
                                                                      harness):
    """``mail.debug_mailer = true`` makes kinto-emailer include ``pyramid_txmail.debug``
    (``pyramid_mailer.debug`` before): the mail lands in ./mail as a file."""
    root, _ = switched
    ini = write_ini(tmp_path / "kinto.ini", "mail.debug_mailer = true")
    proc = drive("drive_kinto.py", PROJECT, root, *harness, str(ini), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Could not send notifications" not in proc.stderr, proc.stderr
    record_id = json.loads(proc.stdout)["record"]
    files = sorted((tmp_path / "mail").glob("*.eml"))
    assert len(files) == 1, (files, proc.stderr)
    msg = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == f"Record {record_id} created"
    assert guard_calls(harness[1]) == []


def test_after_the_switch_queue_mode_loses_nothing_without_a_word(switched, tmp_path,
                                                                  smtp_server, harness):
    """With ``mail.queue_path`` kinto-emailer calls ``send_to_queue`` from its
    after-commit subscriber.  On pyramid_mailer that mail is lost: transaction's raw
    "expected txn status 'Active' or 'Doomed', but it's 'Committed'" is logged and
    swallowed.  After the switch either the notification is spooled (and txmail-qp
    delivers it to the sink), or the log says why not and what to do instead."""
    root, _ = switched
    spool = tmp_path / "spool"
    ini = write_ini(tmp_path / "kinto.ini", *sink_lines(smtp_server),
                    f"mail.queue_path = {spool}")
    proc = drive("drive_kinto.py", PROJECT, root, *harness, str(ini))
    assert proc.returncode == 0, proc.stderr
    assert guard_calls(harness[1]) == []
    queued = [p for p in (spool / "new").glob("*") if not p.name.startswith(".")]
    if not queued:
        assert "Could not send notifications" in proc.stderr
        assert "expected txn status" not in proc.stderr
        assert "AttributeError" not in proc.stderr
        assert "send_immediately" in proc.stderr and "request.tm" in proc.stderr, \
            proc.stderr
        return
    qp = run_console_script("txmail-qp", [str(ini), "--no-app"], PROJECT, root,
                            *harness, cwd=tmp_path)
    assert qp.returncode == 0, qp.stderr
    assert_notification(smtp_server, json.loads(proc.stdout)["record"])
