"""The real ``txmail-qp`` console script, run as a subprocess against aiosmtpd."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from pyramid_txmail.queue.maildir.spool import Spool

QP = os.path.join(os.path.dirname(sys.executable), "txmail-qp")
FROM = "sender@example.org"

APP_FACTORY = '''
from pyramid.config import Configurator
from pyramid_txmail.interfaces import IMailDeferred, IMailSent


def main(global_config, **settings):
    """A tiny app whose subscribers write the events they see to a file."""
    path = settings["events_file"]

    def record(event):
        with open(path, "a") as f:
            f.write(f"{type(event).__name__} {event.message_id} {','.join(event.toaddrs)}\\n")

    config = Configurator(settings=settings)
    config.add_subscriber(record, IMailSent)
    config.add_subscriber(record, IMailDeferred)
    return config.make_wsgi_app()
'''

LOGGING = '''
[loggers]
keys = root, txmail

[handlers]
keys = logfile

[formatters]
keys = plain

[logger_root]
level = WARNING
handlers = logfile

[logger_txmail]
level = INFO
handlers =
qualname = pyramid_txmail

[handler_logfile]
class = FileHandler
args = (r'%(here)s/qp.log', 'a')
level = NOTSET
formatter = plain

[formatter_plain]
format = FROMINI %(levelname)s %(name)s %(message)s
'''


def write_ini(tmp_path, server=None, extra="", spool=True, tail=""):
    lines = ["[app:main]", "use = call:txmail_testapp:main"]
    if server is not None:
        lines += [f"mail.host = {server.host}", f"mail.port = {server.port}",
                  "mail.timeout = 10"]
    if spool:
        lines.append(f"mail.queue_path = {tmp_path / 'spool'}")
    path = tmp_path / "app.ini"
    path.write_text("\n".join(lines) + "\n" + textwrap.dedent(extra) + "\n" + tail)
    return str(path)


def run_qp(*args, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath,
                                                         env.get("PYTHONPATH")]))
    return subprocess.run([QP, *args], capture_output=True, text=True, env=env, timeout=60)


def queue(tmp_path, toaddrs, msgid="<qp1@example.org>"):
    spool = Spool(str(tmp_path / "spool"))
    data = (f"From: {FROM}\nTo: {toaddrs[0]}\nSubject: hi\nMessage-ID: {msgid}\n\n"
            "body\n").encode()
    name = spool.write_tmp(FROM, toaddrs, data)
    spool.commit_tmp([name])
    return spool, name


def assert_config_error(proc, *words):
    assert proc.returncode == 78, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("txmail-qp: error: ")
    for word in words:
        assert word in lines[0]


def test_one_pass_delivers_and_exits_0(tmp_path, smtp_server):
    ini = write_ini(tmp_path, smtp_server)
    spool, name = queue(tmp_path, ["a@example.org", "b@example.net"])
    proc = run_qp(ini, "--no-app")
    assert proc.returncode == 0, proc.stderr
    [got] = smtp_server.messages
    assert got.mail_from == FROM
    assert got.rcpt_tos == ["a@example.org", "b@example.net"]
    assert b"X-Actually" not in got.data
    assert spool.names("new") == spool.names("cur") == []
    assert "sent=1 deferred=0 failed=0" in proc.stderr
    assert "<qp1@example.org>" in proc.stderr


def test_deferred_message_still_exits_0_and_stays(tmp_path, make_smtp_server):
    server = make_smtp_server({"rcpt": "451 4.3.0 try later"})
    ini = write_ini(tmp_path, server)
    spool, name = queue(tmp_path, ["a@example.org"])
    proc = run_qp(ini, "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert spool.names("deferred") == [name]
    assert spool.read_meta(name)["attempts"] == 1
    assert "deferred=1" in proc.stderr


def test_quiet_keeps_only_problems(tmp_path, smtp_server):
    ini = write_ini(tmp_path, smtp_server)
    queue(tmp_path, ["a@example.org"])
    proc = run_qp(ini, "--no-app", "-q")
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert len(smtp_server.messages) == 1


def test_unknown_mail_key_is_a_warning_naming_it(tmp_path, smtp_server):
    """An app may own mail.* keys (issue 12): a warning, and the pass runs."""
    ini = write_ini(tmp_path, smtp_server, extra="mail.prot = 25")
    Spool(str(tmp_path / "spool"))  # txmail-qp never creates it (the app does)
    proc = run_qp(ini, "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" in proc.stderr and "mail.prot is not a pyramid_txmail setting" in \
        proc.stderr and "did you mean mail.port?" in proc.stderr


def test_bad_mail_value_is_a_config_error(tmp_path, smtp_server):
    ini = write_ini(tmp_path, smtp_server, extra="mail.retry_max = soon")
    assert_config_error(run_qp(ini, "--no-app"), "mail.retry_max", "soon")


def test_missing_ini_file_is_a_config_error(tmp_path):
    missing = str(tmp_path / "nowhere.ini")
    assert_config_error(run_qp(missing), missing)


def test_missing_app_section_is_a_config_error(tmp_path, smtp_server):
    ini = write_ini(tmp_path, smtp_server)
    assert_config_error(run_qp(ini, "--app-name", "other", "--no-app"), "[app:other]")


def test_missing_queue_path_is_a_config_error(tmp_path, smtp_server):
    ini = write_ini(tmp_path, smtp_server, spool=False)
    assert_config_error(run_qp(ini, "--no-app"), "mail.queue_path")


def test_unusable_spool_is_a_config_error(tmp_path, smtp_server):
    (tmp_path / "spool").write_text("a file, not a directory")
    ini = write_ini(tmp_path, smtp_server)
    assert_config_error(run_qp(ini, "--no-app"), "mail.queue_path", "spool")


def test_usage_error_exits_2():
    proc = run_qp()
    assert proc.returncode == 2
    assert "usage: txmail-qp" in proc.stderr


def test_help_explains_settings_exit_codes_and_cron():
    proc = run_qp("--help")
    assert proc.returncode == 0
    for text in ("CONFIG_URI", "--app-name", "--no-app", "mail.queue_path",
                 "mail.retry_initial", "mail.max_queue_time", "exit status", "78",
                 "crontab", "* * * * *"):
        assert text in proc.stdout


def test_logging_configuration_from_the_ini_is_used(tmp_path, smtp_server):
    ini = write_ini(tmp_path, smtp_server, tail=LOGGING)
    queue(tmp_path, ["a@example.org"])
    proc = run_qp(ini, "--no-app")
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "qp.log").read_text()
    assert "FROMINI INFO pyramid_txmail.processor sent <qp1@example.org>" in log
    assert "sent=1" in log
    assert proc.stderr == ""


def test_the_app_is_loaded_so_its_subscribers_see_events(tmp_path, make_smtp_server):
    server = make_smtp_server({"rcpt": {"later@example.org": "451 4.3.0 busy"}})
    (tmp_path / "txmail_testapp.py").write_text(APP_FACTORY)
    events = tmp_path / "events.txt"
    ini = write_ini(tmp_path, server, extra=f"events_file = {events}")
    queue(tmp_path, ["a@example.org"], "<app1@example.org>")
    queue(tmp_path, ["later@example.org"], "<app2@example.org>")
    proc = run_qp(ini, pythonpath=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    # Workers send in parallel: the two events may come in either order.
    assert sorted(events.read_text().splitlines()) == [
        "MailDeferred <app2@example.org> later@example.org",
        "MailSent <app1@example.org> a@example.org",
    ]


def test_an_app_that_cannot_load_is_a_one_line_configuration_error(tmp_path, smtp_server):
    ini = write_ini(tmp_path, smtp_server)  # txmail_testapp is not importable here
    queue(tmp_path, ["a@example.org"])
    proc = run_qp(ini)
    assert proc.returncode == 78
    assert "cannot load the application [app:main]" in proc.stderr
    assert "txmail_testapp" in proc.stderr and "--no-app" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert smtp_server.messages == []  # nothing is sent by a half-configured processor


@pytest.mark.parametrize("uri_suffix", ["#main", ""])
def test_config_uri_may_name_the_app(tmp_path, smtp_server, uri_suffix):
    ini = write_ini(tmp_path, smtp_server)
    queue(tmp_path, ["a@example.org"])
    proc = run_qp(ini + uri_suffix, "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert len(smtp_server.messages) == 1


def test_an_ini_syntax_error_never_shows_the_password(tmp_path):
    ini = write_ini(tmp_path, extra="mail.password = ab%cdSecret\n")
    result = run_qp(ini)
    assert result.returncode == 78
    assert "Secret" not in result.stderr + result.stdout
    assert "mail.password" in result.stderr and "%%" in result.stderr
    assert "Traceback" not in result.stderr
