"""Path settings mean the same directory to every process (issue 11, finding 5).

``mail.queue_path = var/spool`` was resolved against each process's working
directory: ``txmail-qp`` started elsewhere created a second, empty spool and
reported ``sent=0``.  The application never sees its ini's directory
(PasteDeploy gives ``here`` to the app factory's ``global_config`` only), so
a relative path cannot mean one directory everywhere: it is refused, with
``%(here)s`` as the fix.  And ``txmail-qp`` no longer creates a missing
spool, which ``txmail-queue`` never did.
"""
from __future__ import annotations

import os

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_txmail.settings import parse_settings

from .claims_support import QP, QUEUE, make_spool, queue, run, write_ini
from .reliability import record

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("key", ["queue_path", "file_path", "tls_cafile", "keyfile",
                                 "certfile", "preview_dirs"])
@pytest.mark.parametrize("value", ["var/spool", "./spool", "~/spool", "spool"])
def test_a_relative_path_setting_is_refused(key, value):
    raw = {"mail.queue_path": "/srv/spool", "mail." + key: value}
    if key == "keyfile":
        raw["mail.certfile"] = "/nonexistent/cert.pem"
    with pytest.raises(ConfigurationError) as info:
        parse_settings(raw)
    text = str(info.value)
    assert f"mail.{key} = {value!r}" in text
    assert "%(here)s" in text and "absolute" in text


def test_txmail_qp_refuses_a_relative_queue_path_wherever_it_starts(tmp_path, smtp_server):
    app_dir, elsewhere = tmp_path / "app", tmp_path / "elsewhere"
    app_dir.mkdir()
    elsewhere.mkdir()
    ini = write_ini(app_dir, smtp_server, spool="var/spool")
    proc = run(QP, ini, "--no-app", cwd=str(elsewhere))
    assert proc.returncode == 78, proc.stderr
    assert "mail.queue_path" in proc.stderr and "%(here)s" in proc.stderr
    assert os.listdir(elsewhere) == []  # no second spool
    record("disk", "relative mail.queue_path, txmail-qp started in another directory",
           detail="refused (exit 78, naming the key and %(here)s); no second spool created")


def test_here_in_the_ini_names_the_spool_for_every_process(tmp_path, smtp_server):
    app_dir, elsewhere = tmp_path / "app", tmp_path / "elsewhere"
    app_dir.mkdir()
    elsewhere.mkdir()
    ini = write_ini(app_dir, smtp_server, spool="%(here)s/var/spool")
    queue(make_spool(app_dir / "var"), "<here@example.org>")
    proc = run(QP, ini, "--no-app", cwd=str(elsewhere))
    assert proc.returncode == 0, proc.stderr
    assert "sent=1" in proc.stderr
    assert len(smtp_server.messages) == 1


@pytest.mark.parametrize("script", [QP, QUEUE])
def test_no_script_creates_a_missing_spool(tmp_path, smtp_server, script):
    missing = tmp_path / "nowhere" / "spool"
    ini = write_ini(tmp_path, smtp_server, spool=missing)
    args = ["--no-app"] if script == QP else ["status"]
    proc = run(script, ini, *args)
    assert proc.returncode == 78, proc.stderr
    assert str(missing) in proc.stderr and "no spool directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "nowhere").exists()


def test_txmail_qp_completes_an_existing_spool_from_an_older_layout(tmp_path, smtp_server):
    """A spool with only tmp/ new/ cur/ (repoze.sendmail's Maildir) is used, not refused."""
    spool_dir = tmp_path / "spool"
    for state in ("tmp", "new", "cur"):
        (spool_dir / state).mkdir(parents=True, mode=0o700)
    spool_dir.chmod(0o700)
    ini = write_ini(tmp_path, smtp_server)
    proc = run(QP, ini, "--no-app")
    assert proc.returncode == 0, proc.stderr
    assert (spool_dir / "failed").is_dir()
