"""pluserable 0.10.0 (PyPI) switched from pyramid_mailer by its include and imports.

pluserable (user registration for Pyramid, horus' maintained fork) sends its activation
and password-reset mail with ``get_mailer(request).send(message)``; its tests register
pyramid_mailer's ``DummyMailer`` as the ``IMailer`` utility.  Its own suite (70 tests)
must pass as it does on pyramid_mailer, and a sign-up and a reset through its real forms
must put both messages at a real SMTP sink.  See tests/migration_support.py.
"""
from __future__ import annotations

import email
import email.policy
import json

import pytest

from .migration_support import (PLUSERABLE as PROJECT, RUN_TIMEOUT, assert_suite_passes,
                                drive, guard_call_names, guard_calls, project_fixtures,
                                run_console_script)

SENDER = "site@example.com"
SUBJECTS = ["Please activate your account!", "Reset your password"]


pristine, switched, harness = project_fixtures(PROJECT)


def sink_settings(server):
    return [f"mail.host={server.host}", f"mail.port={server.port}",
            f"mail.default_sender={SENDER}"]


def assert_signup_and_reset_mail(server, proc):
    assert json.loads(proc.stdout) == {"register": 302, "forgot_password": 302}, proc.stderr
    got = server.messages
    assert [(m.mail_from, m.rcpt_tos) for m in got] == [(SENDER, ["carl@example.org"])] * 2
    msgs = [email.message_from_bytes(m.data, policy=email.policy.default) for m in got]
    by_subject = {m["Subject"]: m for m in msgs}  # a queue pass may send in any order
    assert sorted(by_subject) == sorted(SUBJECTS)
    assert "http://localhost/activate/" in by_subject[SUBJECTS[0]].get_content()
    assert "http://localhost/reset_password/" in by_subject[SUBJECTS[1]].get_content()


@pytest.mark.timeout(RUN_TIMEOUT)
def test_before_the_switch_its_suite_passes_on_pyramid_mailer(pristine, tmp_path):
    assert_suite_passes(PROJECT, pristine, tmp_path / "junit.xml")


def test_before_the_switch_signup_and_reset_are_mailed_by_pyramid_mailer(
        pristine, smtp_server, harness):
    """The driver's path does send on pyramid_mailer (so the comparison is fair), and
    the guard sees it (so its empty record after the switch means something)."""
    proc = drive("drive_pluserable.py", PROJECT, pristine, *harness,
                 "pyramid_mailer", *sink_settings(smtp_server))
    assert proc.returncode == 0, proc.stderr
    assert_signup_and_reset_mail(smtp_server, proc)
    calls = guard_call_names(harness[1])
    assert calls == {"config.include('pyramid_mailer')", "pyramid_mailer.get_mailer",
                     "pyramid_mailer.mailer.Mailer.send"}


def test_the_switch_changes_only_the_include_and_the_imports(switched):
    root, changed = switched
    assert changed == PROJECT.switched_lines


@pytest.mark.timeout(RUN_TIMEOUT)
def test_after_the_switch_its_suite_passes_on_pyramid_txmail(switched, tmp_path, harness):
    root, _ = switched
    assert_suite_passes(PROJECT, root, tmp_path / "junit.xml", harness)


def test_after_the_switch_signup_and_reset_are_mailed_to_the_smtp_sink(
        switched, smtp_server, harness):
    """The app includes ``pyramid_txmail`` (direct delivery); both messages go out
    when each request's transaction commits."""
    root, _ = switched
    proc = drive("drive_pluserable.py", PROJECT, root, *harness,
                 "pyramid_txmail", *sink_settings(smtp_server))
    assert proc.returncode == 0, proc.stderr
    assert_signup_and_reset_mail(smtp_server, proc)
    assert guard_calls(harness[1]) == []


def test_after_the_switch_queued_signup_and_reset_mail_is_delivered_by_txmail_qp(
        switched, tmp_path, smtp_server, harness):
    """With ``mail.queue_path`` the same two messages are spooled at each commit, and
    one pass of ``txmail-qp`` delivers them to the sink."""
    root, _ = switched
    spool = tmp_path / "spool"
    proc = drive("drive_pluserable.py", PROJECT, root, *harness, "pyramid_txmail",
                 *sink_settings(smtp_server), f"mail.queue_path={spool}")
    assert proc.returncode == 0, proc.stderr
    assert smtp_server.messages == []
    ini = tmp_path / "qp.ini"
    ini.write_text("[app:main]\n" + "".join(
        line.replace("=", " = ", 1) + "\n"
        for line in [*sink_settings(smtp_server), f"mail.queue_path={spool}"]))
    qp = run_console_script("txmail-qp", [str(ini), "--no-app"], PROJECT, root, *harness,
                            cwd=tmp_path)
    assert qp.returncode == 0, qp.stderr
    assert "sent=2 deferred=0 failed=0" in qp.stderr
    assert_signup_and_reset_mail(smtp_server, proc)
    assert guard_calls(harness[1]) == []
