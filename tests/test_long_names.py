"""A message whose name the spool cannot derive its other names from is poison.

The spool gives a message file ``NAME`` other names as it goes:
``deferred/DUE~NAME``, ``meta/NAME.json``, the state file's temporary
``meta/.NAME.PID.tmp``.  Our names are ~60 bytes, but another writer's
(repoze.sendmail, a person) may be as long as the file system allows
(NAME_MAX, 255 bytes): each derived name was then refused with ENAMETOOLONG
after the message had gone out, the file stayed in ``cur/``, came back
after every ``mail.claim_timeout`` and was sent again, for ever (probe
finding: ``"y" * 245`` in ``new/``, sent 3 times in 3 passes).

Now such a message is dead-lettered before it is sent, under a name the
spool can keep its state under, with a reason naming the limit and the
original name; a real ``txmail-qp`` sends it to nobody, however many passes
run, and ``txmail-queue show`` shows it.  A name at the limit goes the whole
way (deferred, state file, dead letter) under its own name.
"""
from __future__ import annotations

import errno
import json
import os

import pytest

from pyramid_txmail.queue.maildir import namelimits
from pyramid_txmail.queue.maildir.deadletters import bury
from pyramid_txmail.queue.maildir.recovery import recover

from .claims_support import QP, QUEUE, copies, make_spool, queue, run, write_ini

OK, TEMPFAIL = "ok@example.org", "tf@example.org"
SCRIPT = {"rcpt": {TEMPFAIL: "451 4.3.0 try again later"}}


def _rename(spool, name, new_name, state="new"):
    os.rename(os.path.join(spool.path, state, name),
              os.path.join(spool.path, state, new_name))
    return new_name


def _past_claim_timeout(spool):
    """What waiting out ``mail.claim_timeout`` did to every claim (their mtime),
    without the wait: the pass that claimed them has exited."""
    cur = os.path.join(spool.path, "cur")
    for name in os.listdir(cur):
        os.utime(os.path.join(cur, name), (1, 1))


def _longest_name(spool):
    return namelimits.longest_name(spool.name_max)


def _passes(tmp_path, server, spool, count=3):
    ini = write_ini(tmp_path, server, ["mail.claim_timeout = 2s"])
    for _ in range(count):
        done = run(QP, ini, "--no-app", "--processes", "1")
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == 0, done.stdout + done.stderr
        _past_claim_timeout(spool)
    return ini


# -- the probe, byte for byte, and the lengths around it --------------------------------

@pytest.mark.parametrize("extra", [1, 11, 17, 21])
def test_a_name_too_long_to_derive_from_is_dead_lettered_before_it_is_sent(
        tmp_path, make_smtp_server, extra):
    """Lengths from one byte over the limit to NAME_MAX: every derived name
    fails somewhere in there (DUE~NAME first, then .NAME.PID.tmp, NAME.json)."""
    server = make_smtp_server(SCRIPT)
    spool = make_spool(tmp_path)
    length = min(_longest_name(spool) + extra, spool.name_max)
    name = _rename(spool, queue(spool, "<long@example.org>", (OK, TEMPFAIL)), "y" * length)
    ini = _passes(tmp_path, server, spool)
    assert copies(server, "<long@example.org>") == 0
    assert spool.names("new") == spool.names("cur") == spool.names("deferred") == []
    failed = spool.names("failed")
    assert len(failed) == 1 and failed[0] != name
    meta = spool.read_meta(failed[0])
    assert meta["dead_letter_of"] == name
    assert meta["reason"].startswith("poison: ")
    assert f"{length} bytes" in meta["reason"] and "NAME_MAX" in meta["reason"]
    assert f"dead-lettered as failed/{failed[0]}" in meta["reason"]
    assert [n for n in os.listdir(os.path.join(spool.path, "meta"))
            if n != failed[0] + ".json"] == []
    shown = run(QUEUE, ini, "show", failed[0])
    assert shown.returncode == 0, shown.stderr
    assert "NAME_MAX" in shown.stdout and name in shown.stdout
    # the dead letter's new name takes every derived form: `retry` sends it
    retried = run(QUEUE, ini, "retry", failed[0])
    assert retried.returncode == 0, retried.stderr
    run(QP, ini, "--no-app", "--processes", "1")
    assert copies(server, "<long@example.org>") == 1
    assert [n for n in os.listdir(os.path.join(spool.path, "deferred"))
            if n.endswith("~" + failed[0])]


def test_a_name_at_the_limit_takes_every_derived_form(tmp_path, make_smtp_server):
    """The longest name the spool accepts is deferred, has its state file
    written, and is sent to the recipient that accepted once only."""
    server = make_smtp_server(SCRIPT)
    spool = make_spool(tmp_path)
    name = _rename(spool, queue(spool, "<limit@example.org>", (OK, TEMPFAIL)),
                   "z" * _longest_name(spool))
    _passes(tmp_path, server, spool)
    assert copies(server, "<limit@example.org>") == 1
    deferred = os.listdir(os.path.join(spool.path, "deferred"))
    assert len(deferred) == 1 and deferred[0].endswith("~" + name)
    assert len(os.fsencode(deferred[0])) == spool.name_max
    assert spool.read_meta(name)["delivered"] == [OK]


def test_the_limit_counts_bytes_not_characters(tmp_path, make_smtp_server):
    """A name of few characters but many bytes (UTF-8, or undecodable bytes
    as os.listdir gives them) is measured as the file system measures it."""
    server = make_smtp_server(SCRIPT)
    spool = make_spool(tmp_path)
    chars = _longest_name(spool) // 2 + 1  # two bytes each: over the limit
    name = _rename(spool, queue(spool, "<utf8@example.org>", (OK, TEMPFAIL)), "é" * chars)
    assert len(name) < _longest_name(spool) < len(os.fsencode(name))
    _passes(tmp_path, server, spool, count=2)
    assert copies(server, "<utf8@example.org>") == 0
    assert spool.read_meta(spool.names("failed")[0])["dead_letter_of"] == name


# -- every state a long name can be found in --------------------------------------

def test_an_unindexed_long_name_in_deferred_is_dead_lettered_not_left(tmp_path,
                                                                       make_smtp_server):
    """Put into deferred/ by hand, with a state file saying "later": it can
    never be renamed DUE~NAME, so it is due now (and poison), never logged
    as an error every pass and left."""
    server = make_smtp_server(SCRIPT)
    spool = make_spool(tmp_path)
    name = "d" * (_longest_name(spool) + 5)  # NAME.json still fits
    queued = queue(spool, "<deferred@example.org>", (OK,))
    os.rename(os.path.join(spool.path, "new", queued),
              os.path.join(spool.path, "deferred", name))
    with open(os.path.join(spool.path, "meta", name + ".json"), "w") as f:
        json.dump({"next_attempt": 4e9, "attempts": 1}, f)
    assert spool.earliest_retry(1000.0) == 1000.0
    _passes(tmp_path, server, spool, count=2)
    assert copies(server, "<deferred@example.org>") == 0
    assert spool.names("deferred") == []
    [failed] = spool.names("failed")
    assert spool.read_meta(failed)["dead_letter_of"] == name
    assert not os.path.exists(os.path.join(spool.path, "meta", name + ".json"))


def test_an_in_doubt_long_name_in_prepared_is_dead_lettered(tmp_path):
    """Recovery's dead letter needs a state file too: a new name carries it."""
    spool = make_spool(tmp_path)
    name = "p" * spool.name_max
    queued = queue(spool, "<prepared@example.org>")
    os.rename(os.path.join(spool.path, "new", queued),
              os.path.join(spool.path, "prepared", name))
    os.utime(os.path.join(spool.path, "prepared", name), (1, 1))
    assert recover(spool, grace=60) == 1
    assert spool.names("prepared") == []
    [failed] = spool.names("failed")
    meta = spool.read_meta(failed)
    assert meta["dead_letter_of"] == name and meta["in_doubt"] is True
    assert "NAME_MAX" in meta["reason"]


def test_state_files_of_a_name_too_long_for_them_read_as_none(tmp_path, caplog):
    """No state file can exist under such a name: reading finds none,
    deleting has nothing to do (and says nothing), neither raises."""
    spool = make_spool(tmp_path)
    name = "m" * spool.name_max
    assert spool.read_meta(name) == {}
    spool.drop_meta(name)
    assert caplog.records == []


def test_bury_of_a_long_name_needs_no_long_derived_name(tmp_path):
    spool = make_spool(tmp_path)
    name = _rename(spool, queue(spool, "<bury@example.org>"), "b" * spool.name_max)
    entry = spool.claim("new", name)
    assert entry.problem and "NAME_MAX" in entry.problem
    where = bury(spool, entry, {"reason": "poison: test"})
    entry.release()
    assert where.state == "failed" and where.name != name
    meta = spool.read_meta(where.name)
    assert meta["dead_letter_of"] == name and where.name in meta["reason"]


def test_a_name_of_ours_is_no_problem(tmp_path):
    spool = make_spool(tmp_path)
    name = queue(spool, "<ours@example.org>")
    assert spool.name_problem(name) is None
    entry = spool.claim("new", name)
    assert entry.problem is None
    entry.release()


def test_every_derived_name_is_counted(tmp_path):
    """The limit is the longest derived name: each form, made for a name at the
    limit, can be created in the directory it belongs in; one byte more, the
    longest cannot."""
    spool = make_spool(tmp_path)
    name = "n" * _longest_name(spool)
    for state, derived in namelimits.derived_names(name):
        path = os.path.join(spool.path, state, derived)
        with open(path, "w"):
            pass
        os.unlink(path)
    longer = name + "n"
    assert spool.name_problem(longer)
    state, longest = max(namelimits.derived_names(longer),
                         key=lambda pair: len(os.fsencode(pair[1])))
    with pytest.raises(OSError) as caught:
        open(os.path.join(spool.path, state, longest), "w")
    assert caught.value.errno == errno.ENAMETOOLONG


def test_processes_racing_to_bury_in_doubt_long_names_leave_no_orphan_state(tmp_path):
    """Each txmail-qp child runs recovery: all of them reach for the same long-named
    files in prepared/, and each writes the dead letter's state file under its fresh
    name before it moves the message.  The children that lose the move must remove
    theirs: every state file in meta/ belongs to a dead letter."""
    spool = make_spool(tmp_path)
    for number in range(20):
        queued = queue(spool, f"<doubt{number}@example.org>")
        name = f"{number:02d}" + "p" * (spool.name_max - 17)  # too long for DUE~NAME
        os.rename(os.path.join(spool.path, "new", queued),
                  os.path.join(spool.path, "prepared", name))
        os.utime(os.path.join(spool.path, "prepared", name), (1, 1))
    ini = write_ini(tmp_path, extra=["mail.commit_grace = 1m"])
    done = run(QP, ini, "--no-app", "--processes", "3")
    assert done.returncode == 0, done.stderr
    failed = spool.names("failed")
    assert len(failed) == 20 and spool.names("prepared") == []
    metas = sorted(n[:-len(".json")] for n in os.listdir(os.path.join(spool.path, "meta"))
                   if n.endswith(".json"))
    assert metas == sorted(failed)
