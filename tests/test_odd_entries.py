"""Odd entries anywhere in the spool never stop a pass (issue 11, round 2, findings 1 and 2).

A directory (empty or not, dated in the past or the future) in ``tmp/``,
``done/`` or as a dot-entry in ``meta/``, or a directory where a state file
``meta/NAME.json`` belongs: a real ``txmail-qp`` pass still delivers what is
queued, exits 0, says once what it left, and a message whose state cannot
be recorded reaches ``failed/`` with its reason instead of looping.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.relay.smtp import SMTPTransport

from .claims_support import QP, QUEUE, copies, make_spool, queue, run, write_ini

HOURS = 3600


def _date(path, offset):
    when = time.time() + offset
    os.utime(path, (when, when), follow_symlinks=False)


def _odd(spool, where, name, offset=0, full=False):
    path = os.path.join(spool.path, where, name)
    os.mkdir(path)
    if full:
        with open(os.path.join(path, "inside"), "w") as f:
            f.write("somebody's file\n")
    _date(path, offset)
    return path


def _past_claim_timeout(spool, timeout):
    """Date every claim in ``cur/`` ``timeout`` + 1 s back: what waiting that long
    did (a claim is stale by its mtime, claims.is_stale; the pass that made it has
    exited, so no lock holds it), without the wait."""
    cur = os.path.join(spool.path, "cur")
    for name in os.listdir(cur):
        _date(os.path.join(cur, name), -(timeout + 1))


CASES = {
    "tmp-dir-old": ("tmp", "x", -3 * HOURS, False),
    "tmp-dir-future": ("tmp", "x", 3 * HOURS, False),
    "tmp-dir-full-old": ("tmp", "x", -3 * HOURS, True),
    "done-dir": ("done", "x", 0, False),
    "done-dir-full": ("done", "x", 0, True),
    "meta-dotdir-old": ("meta", ".x", -3 * HOURS, False),
    "meta-dotdir-full-old": ("meta", ".x", -3 * HOURS, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_directory_in_a_housekeeping_state_does_not_stop_the_pass(tmp_path, smtp_server,
                                                                      case):
    where, name, offset, full = CASES[case]
    spool = make_spool(tmp_path)
    msgid = f"<{case}@example.org>"
    queue(spool, msgid)
    path = _odd(spool, where, name, offset, full)
    ini = write_ini(tmp_path, smtp_server, ["mail.commit_grace = 1h"])
    for _ in range(2):  # the second pass says nothing more about what it left
        done = run(QP, ini, "--no-app")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    assert copies(smtp_server, msgid) == 1
    assert spool.names("new") == []
    if full:  # somebody's files are never deleted: left, and said once per process
        assert os.path.isdir(path)
        assert name in done.stderr and "left" in done.stderr
    elif offset == 0:
        assert not os.path.exists(path)


def test_a_directory_as_a_state_file_dead_letters_the_message(tmp_path, smtp_server):
    """Finding 2: meta/NAME.json is a directory: the message ends in failed/ with
    its reason (under a new name whose state file can be written), once; no
    temporary state file is left behind, and the pass exits 0."""
    spool = make_spool(tmp_path)
    name = queue(spool, "<metadir@example.org>")
    os.mkdir(os.path.join(spool.path, "meta", name + ".json"))
    ini = write_ini(tmp_path, smtp_server, ["mail.claim_timeout = 1s"])
    for _ in range(3):
        done = run(QP, ini, "--no-app")
        assert done.returncode == 0, done.stdout + done.stderr
        _past_claim_timeout(spool, 1.0)  # a message left in cur/ would come back
    assert spool.names("new") == [] and spool.names("cur") == []
    failed = spool.names("failed")
    assert len(failed) == 1
    meta = spool.read_meta(failed[0])
    assert "meta/" + name + ".json" in meta["reason"] and "directory" in meta["reason"]
    assert meta["dead_letter_of"] == name
    assert [n for n in os.listdir(os.path.join(spool.path, "meta")) if n.startswith(".")] == []
    assert copies(smtp_server, "<metadir@example.org>") == 0
    shown = run(QUEUE, ini, "show", failed[0])
    assert shown.returncode == 0 and "directory" in shown.stdout


def test_write_meta_leaves_no_temporary_file_when_the_rename_fails(tmp_path):
    spool = make_spool(tmp_path)
    os.mkdir(os.path.join(spool.path, "meta", "m.json"))
    with pytest.raises(OSError) as caught:
        spool.write_meta("m", {"a": 1})
    assert "m.json" in str(caught.value)
    assert os.listdir(os.path.join(spool.path, "meta")) == ["m.json"]


def test_a_full_directory_in_done_is_reported_once_per_processor(tmp_path, smtp_server,
                                                                   caplog):
    spool = make_spool(tmp_path)
    _odd(spool, "done", "keep", 0, True)
    settings = parse_settings({"mail.host": smtp_server.host,
                               "mail.port": str(smtp_server.port),
                               "mail.queue_path": spool.path})
    with SMTPTransport.from_settings(settings) as transport:
        processor = Processor(spool, transport, settings)
        for _ in range(3):
            queue(spool, "<again@example.org>")
            assert processor.run_once().sent == 1
    said = [r for r in caplog.records if "done/keep" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert os.path.isdir(os.path.join(spool.path, "done", "keep"))
