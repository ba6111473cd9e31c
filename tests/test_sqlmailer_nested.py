"""The SQL outbox and SQLAlchemy's own savepoints (``session.begin_nested()``).

A nested transaction rolled back takes the mail row with it -- SQL does that.
The mailer must then not report the mail either: no ``MailQueued`` after the
commit, and the debug toolbar's send log says "rolled back".  (Savepoints of
the transaction manager are covered in tests/test_sqlmailer.py.)
"""
from __future__ import annotations

import pytest
import transaction
import zope.sqlalchemy
from pyramid.testing import DummyRequest

from pyramid_txmail import IMailDelivery, IMailQueued
from pyramid_txmail.mailer.sqloutbox import WATCHED
from pyramid_txmail.mailer.sendlog import COMMITTED, ROLLED_BACK, start_recording

from .sqlmailer_app import make_app, rows, signups, welcome

DATABASES = ("sqlite", "postgresql")


@pytest.fixture(params=DATABASES)
def db_url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def script(db_url):
    """``(registry, session, tm, events)``: a script's session joined to ``tm``."""
    events = []
    wsgi = make_app(db_url, [(IMailQueued, lambda e: events.append(e.message_id))])
    registry = wsgi.registry
    tm = transaction.TransactionManager(explicit=True)
    session = registry["dbsession_factory"]()
    zope.sqlalchemy.register(session, transaction_manager=tm)
    yield registry, session, tm, events
    registry["engine"].dispose()


def send(registry, session, tm, email, request=None):
    session.execute(signups.insert().values(email=email))
    mailer = registry.getUtility(IMailDelivery).bind(tm, request, session=session)
    return mailer.send(welcome(email))


def test_a_rolled_back_nested_transaction_takes_back_the_event(script):
    registry, session, tm, events = script
    with tm:
        kept = send(registry, session, tm, "before@example.com")
        nested = session.begin_nested()
        send(registry, session, tm, "dropped@example.com")
        nested.rollback()
        after = send(registry, session, tm, "after@example.com")
    committed = rows(registry["engine"])[1]
    assert sorted(m for m, _ in committed) == sorted([kept, after])
    assert sorted(events) == sorted([kept, after])
    # Nothing of the committed transaction is held on to by a long-lived session.
    assert session.info.get(WATCHED) == []


def test_nested_inside_nested_and_a_released_one(script):
    registry, session, tm, events = script
    with tm:
        outer = session.begin_nested()
        inner = session.begin_nested()
        send(registry, session, tm, "inner@example.com")
        inner.commit()  # RELEASE: the row now belongs to the outer savepoint
        send(registry, session, tm, "outer@example.com")
        outer.rollback()  # both go
        released = session.begin_nested()
        kept = send(registry, session, tm, "released@example.com")
        released.commit()
    assert [m for m, _ in rows(registry["engine"])[1]] == [kept]
    assert events == [kept]


def test_a_context_manager_nested_block_left_by_an_exception(script):
    registry, session, tm, events = script
    with tm:
        with pytest.raises(ValueError):
            with session.begin_nested():
                send(registry, session, tm, "dropped@example.com")
                raise ValueError("the block failed")
        kept = send(registry, session, tm, "kept@example.com")
    assert [m for m, _ in rows(registry["engine"])[1]] == [kept]
    assert events == [kept]


def test_the_send_log_says_rolled_back(script):
    registry, session, tm, events = script
    request = DummyRequest()
    request.registry = registry
    records = start_recording(request)
    with tm:
        nested = session.begin_nested()
        send(registry, session, tm, "dropped@example.com", request)
        nested.rollback()
        send(registry, session, tm, "kept@example.com", request)
    assert [(r.toaddrs, r.state) for r in records] == [
        (("dropped@example.com",), ROLLED_BACK), (("kept@example.com",), COMMITTED)]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # zope.sqlalchemy
def test_a_transaction_savepoint_taken_before_the_first_send(script):  # refuses SQLite's
    """The transaction manager's savepoint older than the data manager (see
    tests/test_savepoint_matrix.py): the next send goes to a fresh, joined one."""
    registry, session, tm, events = script
    with tm:
        session.connection()  # the session joins first, so the savepoint covers it
        point = tm.savepoint()
        send(registry, session, tm, "dropped@example.com")
        point.rollback()
        kept = send(registry, session, tm, "kept@example.com")
    assert [m for m, _ in rows(registry["engine"])[1]] == [kept]
    assert events == [kept]
