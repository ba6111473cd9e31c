"""What a process killed mid-commit leaves in the spool: prepared/ and tmp/ (recovery.py).

The crash itself is tests/test_crash.py (kill -9 of real processes); here
each leftover is made directly, to check every branch of the resolution.
"""
from __future__ import annotations

import logging
import os
import time
from email.message import EmailMessage

import pytest
import transaction
from zope.interface import implementer
from transaction.interfaces import IDataManager

from pyramid_txmail import get_mailer
from pyramid_txmail.processor.processor import Processor
from pyramid_txmail.queue.maildir.recovery import recover
from pyramid_txmail.settings import parse_settings
from pyramid_txmail.queue.maildir.spool import Spool, split_envelope
from pyramid_txmail.queue.maildir.spool_admin import find, retry

HOUR = 3600.0


def message(msgid="<doubt@example.org>"):
    return email_message(msgid).as_bytes()


def email_message(msgid="<doubt@example.org>"):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.org", "Hi"
    msg["Message-ID"] = msgid
    msg.set_content("Hello.\n")
    return msg


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path / "spool"))


def age(spool, state, name, seconds):
    path = os.path.join(spool.path, state, name)
    then = time.time() - seconds
    os.utime(path, (then, then))


def names(spool, state):
    return spool.names(state)


def test_a_young_leftover_is_left_alone(spool):
    tmp = spool.write_tmp("a@example.org", ["b@example.org"], message())
    prepared = spool.prepare("a@example.org", ["b@example.org"], message())
    assert recover(spool, HOUR) == 0
    assert names(spool, "tmp") == [tmp] and names(spool, "prepared") == [prepared]


def test_an_old_tmp_file_is_deleted_it_never_voted(spool, caplog):
    tmp = spool.write_tmp("a@example.org", ["b@example.org"], message())
    age(spool, "tmp", tmp, HOUR + 1)
    with caplog.at_level(logging.WARNING, "pyramid_txmail.recovery"):
        assert recover(spool, HOUR) == 1
    assert names(spool, "tmp") == [] and names(spool, "failed") == []
    assert f"removed tmp/{tmp}" in caplog.text and "never committed" in caplog.text


def test_an_old_half_written_state_file_is_deleted(spool):
    path = os.path.join(spool.path, "meta", ".x.123.tmp")
    with open(path, "w") as f:
        f.write("{")
    os.utime(path, (time.time() - 2 * HOUR,) * 2)
    assert recover(spool, HOUR) == 1
    assert not os.path.exists(path)


def test_in_doubt_without_a_check_is_dead_lettered_with_its_reason(spool, caplog):
    name = spool.prepare("a@example.org", ["b@example.org", "c@example.org"], message())
    age(spool, "prepared", name, HOUR + 1)
    with caplog.at_level(logging.ERROR, "pyramid_txmail.recovery"):
        assert recover(spool, HOUR) == 1
    assert names(spool, "prepared") == [] and names(spool, "failed") == [name]
    meta = spool.read_meta(name)
    assert meta["in_doubt"] is True and meta["message_id"] == "<doubt@example.org>"
    assert "whether its transaction committed is unknown" in meta["reason"]
    assert "no mail.commit_check is set" in meta["reason"]
    assert [r["recipient"] for r in meta["recipients"]] == ["b@example.org", "c@example.org"]
    assert f"in doubt {name} (<doubt@example.org>) dead-lettered" in caplog.text
    # a person who knows it committed sends it: back to new/, with its whole envelope
    msg = find(spool, name)
    retry(spool, msg)
    assert names(spool, "new") == [name]
    with open(os.path.join(spool.path, "new", name), "rb") as f:
        assert split_envelope(f.read())[1] == ("b@example.org", "c@example.org")


@pytest.mark.parametrize("verdict, state", [(True, "new"), (False, None), (None, "failed")])
def test_commit_check_decides(spool, verdict, state):
    asked = []

    def check(message_id, registry):
        asked.append((message_id, registry))
        return verdict

    name = spool.prepare("a@example.org", ["b@example.org"], message())
    age(spool, "prepared", name, HOUR + 1)
    assert recover(spool, HOUR, check, registry="REG") == 1
    assert asked == [("<doubt@example.org>", "REG")]
    for where in ("prepared", "new", "failed"):
        assert names(spool, where) == ([name] if where == state else [])
    if state == "failed":
        assert "mail.commit_check could not tell" in spool.read_meta(name)["reason"]


def test_a_check_that_raises_dead_letters(spool, caplog):
    def check(message_id, registry):
        raise RuntimeError("database down")

    name = spool.prepare("a@example.org", ["b@example.org"], message())
    age(spool, "prepared", name, HOUR + 1)
    with caplog.at_level(logging.ERROR, "pyramid_txmail.recovery"):
        recover(spool, HOUR, check)
    assert names(spool, "failed") == [name]
    assert "mail.commit_check raised" in caplog.text and "database down" in caplog.text


def test_the_processor_resolves_leftovers_at_the_start_of_a_pass(spool, smtp_server):
    settings = parse_settings({"mail.queue_path": spool.path, "mail.host": "127.0.0.1",
                               "mail.port": str(smtp_server.port), "mail.commit_grace": "10m",
                               "mail.commit_check": "tests.test_recovery:says_committed"})
    name = spool.prepare("a@example.org", ["b@example.org"], message())
    age(spool, "prepared", name, 601)
    stats = Processor(spool, None, settings).run_once()
    assert stats.recovered == 1 and stats.sent == 1
    assert [m.rcpt_tos for m in smtp_server.messages] == [["b@example.org"]]


def says_committed(message_id, registry):
    return True


def test_commit_check_must_be_importable_and_callable():
    from pyramid.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"mail.commit_check = 'nowhere:check': "
                                                 r"cannot import it"):
        parse_settings({"mail.commit_check": "nowhere:check"})
    with pytest.raises(ConfigurationError, match="it is not callable"):
        parse_settings({"mail.commit_check": "tests.test_recovery:HOUR"})


@implementer(IDataManager)
class Watcher:
    """Votes after the mail spool (sorts after it) and looks at the spool then."""

    def __init__(self, spool, fail=False):
        self.spool, self.fail, self.seen = spool, fail, {}
        self.transaction_manager = transaction.manager

    def sortKey(self):
        return "~~watcher"

    def tpc_vote(self, txn):
        self.seen = {s: self.spool.names(s) for s in ("tmp", "prepared", "new")}
        if self.fail:
            raise RuntimeError("the database refused the commit")

    abort = tpc_begin = commit = tpc_finish = tpc_abort = lambda self, txn: None


@pytest.mark.parametrize("fail", [False, True])
def test_during_the_commit_the_message_waits_in_prepared(tmp_path, fail):
    from pyramid.config import Configurator

    config = Configurator(settings={"mail.queue_path": str(tmp_path / "spool")})
    config.include("pyramid_txmail")
    spool = Spool(str(tmp_path / "spool"))
    watcher = Watcher(spool, fail)
    try:
        with transaction.manager as txn:
            get_mailer(config.registry).send(email_message())
            txn.join(watcher)
    except RuntimeError:
        assert fail
    assert watcher.seen["tmp"] == [] and watcher.seen["new"] == []
    assert len(watcher.seen["prepared"]) == 1
    assert names(spool, "prepared") == [] and names(spool, "tmp") == []
    assert names(spool, "new") == ([] if fail else watcher.seen["prepared"])
