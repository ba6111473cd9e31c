"""The spool's vote is durable before any other resource commits.

A database on another host or file system flushes nothing of ours when it
commits.  If a power loss came after its commit and before our finish's fsync
of ``new/``, a message renamed into ``prepared/`` but not fsynced there could
come back in ``tmp/`` -- which reads as a vote that never finished, deleted
after ``mail.commit_grace``: a committed mail lost.  So the vote fsyncs
``prepared/`` after its renames, and this test watches the real calls: the
directory fsync of ``prepared/`` happens after the rename into it and before a
second resource (sorted after us, as zope.sqlalchemy's is) votes or commits.
"""
from __future__ import annotations

import os
import stat
from email.message import EmailMessage

import pytest
import transaction
from pyramid.config import Configurator

from pyramid_txmail import get_mailer


class Recorder:
    """A second resource of the transaction, sorted after the spool's."""

    def __init__(self, events):
        self.events = events
        self.transaction_manager = None

    def sortKey(self):
        return "zzz-database"

    def abort(self, txn):
        pass

    def tpc_begin(self, txn):
        pass

    def commit(self, txn):
        pass

    def tpc_vote(self, txn):
        self.events.append(("database", "vote"))

    def tpc_finish(self, txn):
        self.events.append(("database", "commit"))

    def tpc_abort(self, txn):
        pass


@pytest.fixture
def watched(monkeypatch):
    """Every fsync and rename of this process, in order, with the path it touched."""
    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("fsync-dir", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", os.path.basename(os.path.dirname(os.fspath(dst)))))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    return events


@pytest.mark.parametrize("count", [1, 3])
def test_prepared_is_fsynced_after_its_renames_and_before_the_database_votes(
        tmp_path, watched, count):
    config = Configurator(settings={"mail.delivery": "queue",
                                    "mail.queue_path": str(tmp_path / "spool"),
                                    "mail.default_sender": "site@example.com"})
    config.include("pyramid_txmail")
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(config.registry, manager)
    with manager as txn:
        txn.join(Recorder(watched))
        for number in range(count):
            msg = EmailMessage()
            msg["To"] = f"user{number}@example.com"
            msg.set_content("hello")
            mailer.send(msg)
        del watched[:]  # what the commit does, from here
    renames = [i for i, e in enumerate(watched) if e == ("rename", "prepared")]
    settle = watched.index(("fsync-dir", "prepared"))
    vote = watched.index(("database", "vote"))
    assert len(renames) == count
    assert max(renames) < settle < vote, watched
    assert watched.count(("fsync-dir", "prepared")) == 1  # one for the whole vote
    # and the finish still publishes into new/ and fsyncs it
    assert watched.index(("database", "vote")) < watched.index(("fsync-dir", "new"))
    assert sorted(os.listdir(tmp_path / "spool" / "new")).__len__() == count


@pytest.mark.parametrize("where", ["second message", "settle"])
@pytest.mark.parametrize("exception", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_during_the_vote_leaves_nothing_in_the_spool(tmp_path, monkeypatch,
                                                                  where, exception):
    """KeyboardInterrupt (Ctrl-C) or SystemExit (a gunicorn sync worker told to stop)
    inside the vote: the transaction aborts, and no file is left in prepared/ or tmp/
    -- one left there would later be dead-lettered as 'in doubt: the process died
    during the commit', for a transaction that aborted in a live process."""
    from pyramid_txmail.queue.maildir.spool import Spool

    real_prepare, real_settle = Spool.prepare, Spool.settle_prepared
    calls = []

    def prepare(self, *args):
        calls.append(args)
        if where == "second message" and len(calls) == 2:
            raise exception()
        return real_prepare(self, *args)

    def settle(self):
        if where == "settle":
            raise exception()
        return real_settle(self)

    monkeypatch.setattr(Spool, "prepare", prepare)
    monkeypatch.setattr(Spool, "settle_prepared", settle)
    _commit_three_expecting(tmp_path, exception)


@pytest.mark.parametrize("message", [1, 3])
def test_an_interrupt_right_after_the_rename_into_prepared_leaves_nothing(tmp_path, monkeypatch,
                                                                          message):
    """The rename has happened, the interrupt comes before the name is handed back (a
    SIGINT handled at the next bytecode): the file is in prepared/, not tmp/, and the
    vote's clean-up must find it there (an outside probe left one this way)."""
    from pyramid_txmail.queue.maildir import spool as spool_module

    real_rename, renames = os.rename, []

    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        if "/prepared/" in os.fspath(dst):
            renames.append(dst)
            if len(renames) == message:
                raise KeyboardInterrupt()

    monkeypatch.setattr(spool_module.os, "rename", rename)
    _commit_three_expecting(tmp_path, KeyboardInterrupt)
    assert len(renames) == message


def _commit_three_expecting(tmp_path, exception):
    """Send three mails in one transaction, whose commit raises ``exception``; then
    nothing may be left in the spool's tmp/, prepared/ or new/."""
    spool = tmp_path / "spool"
    config = Configurator(settings={"mail.delivery": "queue", "mail.queue_path": str(spool),
                                    "mail.default_sender": "site@example.com"})
    config.include("pyramid_txmail")
    manager = transaction.TransactionManager(explicit=True)
    mailer = get_mailer(config.registry, manager)
    with pytest.raises(exception):
        with manager:
            for number in range(3):
                msg = EmailMessage()
                msg["To"] = f"user{number}@example.com"
                msg.set_content("hello")
                mailer.send(msg)
    for state in ("tmp", "prepared", "new"):
        assert os.listdir(spool / state) == [], state
