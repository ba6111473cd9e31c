"""Reliability suite, disk: read-only and foreign-owned spools, and modes under umask 000.

As root (where permission bits do not stop us) the read-only spool is a real
read-only tmpfs and the foreign-owned one is ``chown``-ed to ``nobody``; as
another user the read-only spool is a directory without write permission and
the foreign-owned one is a directory root owns.  Either way it must be a
clear startup error naming the path: ``ConfigurationError`` at
``config.include``, exit 78 with one line and no traceback from ``txmail-qp``
and ``txmail-queue``.
"""
from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from email.message import EmailMessage

import pytest
import transaction
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_txmail import get_mailer
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir.spool import Spool

from .diskfull import ROOT, mount_tmpfs, remount_read_only, unmount
from .reliability import record

pytestmark = pytest.mark.reliability

BIN = os.path.dirname(sys.executable)
SENDER = "sender@example.org"


def startup_errors(tmp_path, queue_path):
    """What config.include, txmail-qp and txmail-queue say about ``queue_path``."""
    config = Configurator(settings={"mail.queue_path": str(queue_path)})
    with pytest.raises(ConfigurationError) as raised:
        config.include("pyramid_txmail")
    said = {"config.include": str(raised.value)}
    ini = tmp_path / "app.ini"
    ini.write_text(f"[app:main]\nuse = egg:pyramid_txmail\nmail.queue_path = {queue_path}\n")
    for script, argv in (("txmail-qp", ["--no-app"]), ("txmail-queue", ["status"])):
        proc = subprocess.run([os.path.join(BIN, script), str(ini), *argv],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 78, (script, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), proc.stderr
        said[script] = lines[0]
    return said


@pytest.fixture
def read_only_dir(tmp_path):
    """``(path, make_read_only)``: a directory that becomes read-only when asked."""
    path = tmp_path / "ro"
    if ROOT and mount_tmpfs(path):
        yield path, lambda: remount_read_only(path), ("read-only file system",)
        unmount(path)
        return
    path.mkdir()
    yield path, lambda: os.chmod(path, 0o500), ("not writable", "permission denied")
    os.chmod(path, 0o700)


@pytest.mark.parametrize("existing", [True, False], ids=["existing spool", "missing spool"])
def test_read_only_spool_is_a_clear_startup_error(existing, read_only_dir, tmp_path):
    directory, make_read_only, whys = read_only_dir
    queue_path = directory / "spool"
    if existing:
        Spool(str(queue_path))
        if not ROOT:  # without root, the spool directory itself is made read-only
            directory = queue_path
            make_read_only = lambda: os.chmod(queue_path, 0o500)  # noqa: E731
    make_read_only()
    said = startup_errors(tmp_path, queue_path)
    for where, text in said.items():
        if where in ("txmail-queue", "txmail-qp") and not existing:  # they never create
            assert f"{str(queue_path)!r}: no spool directory there" in text
            continue
        assert str(queue_path if existing else directory) in text, (where, text)
        assert any(why in text.lower() for why in whys), (where, text)
    record("disk", f"read-only spool, {'existing' if existing else 'to be created'} "
           f"({'tmpfs ro' if ROOT else 'chmod 0500'})", runs=3, bad_inputs=3,
           detail="config.include: ConfigurationError; txmail-qp, txmail-queue: exit 78")


def test_foreign_owned_spool_is_a_clear_startup_error(tmp_path):
    if ROOT:
        queue_path = tmp_path / "spool"
        Spool(str(queue_path))
        nobody = pwd.getpwnam("nobody")
        for dirpath, _, _ in os.walk(queue_path):
            os.chown(dirpath, nobody.pw_uid, nobody.pw_gid)
        owner = f"uid {nobody.pw_uid} (nobody)"
    else:  # a directory another user owns: root's
        queue_path = next(p for p in ("/var/tmp", "/tmp", "/") if os.stat(p).st_uid == 0)
        owner = "uid 0 (root)"
    said = startup_errors(tmp_path, queue_path)
    for where, text in said.items():
        assert str(queue_path) in text and owner in text, (where, text)
        assert "owned by" in text, (where, text)
    if ROOT:  # one foreign state directory is enough to refuse
        for dirpath, _, _ in os.walk(queue_path):
            os.chown(dirpath, 0, 0)
        os.chown(queue_path / "deferred", nobody.pw_uid, nobody.pw_gid)
        with pytest.raises(ConfigurationError, match=f"{queue_path / 'deferred'}.*owned by"):
            Configurator(settings={"mail.queue_path": str(queue_path)}).include(
                "pyramid_txmail")
    record("disk", f"foreign-owned spool ({'chown nobody' if ROOT else 'root-owned dir'})",
           runs=3, bad_inputs=3,
           detail="config.include: ConfigurationError; txmail-qp, txmail-queue: exit 78")


# -- modes under umask 000 ------------------------------------------------------------------

def test_every_file_0600_and_directory_0700_with_umask_000(tmp_path, make_smtp_server):
    """Spool (with parents it had to create), queue files, state files, dead letters,
    deferred mail, done/, and file delivery's output directory and .eml files."""
    server = make_smtp_server({"rcpt": {"later@example.org": "451 4.3.0 later",
                                        "gone@example.org": "550 5.1.1 gone"}})
    spool_path = tmp_path / "made" / "by" / "us" / "spool"
    files_path = tmp_path / "made-too" / "eml"
    old = os.umask(0)
    try:
        settings = {"mail.queue_path": str(spool_path), "mail.default_sender": SENDER,
                    "mail.host": server.host, "mail.port": str(server.port),
                    "mail.timeout": "5"}
        for delivery, path, rcpts in (
                ("queue", spool_path, ["ok@example.org"]),
                ("queue", spool_path, ["later@example.org"]),
                ("queue", spool_path, ["ok@example.org", "gone@example.org"]),
                ("direct", spool_path, ["later@example.org"]),
                ("file", files_path, ["ok@example.org"])):
            config = Configurator(settings=dict(settings, **{
                "mail.delivery": delivery, "mail.file_path": str(files_path)}))
            config.include("pyramid_txmail")
            manager = transaction.TransactionManager(explicit=True)
            msg = EmailMessage()
            msg["To"] = ", ".join(rcpts)
            msg["Subject"] = "modes"
            msg.set_content("body\n")
            with manager:
                get_mailer(config.registry, manager).send(msg)
        spool = Spool(str(spool_path))
        parsed = parse_settings(settings)
        processor = Processor(spool, None, parsed, workers=1)
        spool.reap = lambda: 0  # keep done/ files to look at them
        spool.reap_path = lambda path: None
        processor.run_once()
    finally:
        os.umask(old)
    assert spool.names("deferred") and spool.names("failed") and spool.names("done")
    assert os.listdir(files_path)
    wrong = []
    for top in (tmp_path / "made", tmp_path / "made-too"):
        for dirpath, dirnames, filenames in os.walk(top):
            if stat.S_IMODE(os.stat(dirpath).st_mode) != 0o700:
                wrong.append(f"{dirpath}: {oct(stat.S_IMODE(os.stat(dirpath).st_mode))}")
            for name in filenames:
                mode = stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode)
                if mode != 0o600:
                    wrong.append(f"{os.path.join(dirpath, name)}: {oct(mode)}")
    assert wrong == []
    record("disk", "umask 000: files 0600, directories 0700", runs=1,
           detail="spool and the parents it created, queue, state and dead-letter files, "
           "deferred/, done/, mail.file_path and its parents, .eml files")
