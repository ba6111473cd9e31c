"""The SQL outbox in the mailer: the mail row commits exactly when the app's rows do.

A real Pyramid app (pyramid_tm, zope.sqlalchemy, WebTest; tests/sqlmailer_app.py)
on SQLite and on a private PostgreSQL (tests/pg_support.py): one view inserts the
application's row and sends a mail, and each outcome of the README's transaction
table must leave both rows or neither.  Then the session look-up and its errors,
the events, the send log, and a mailer outside a request.
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa
import transaction
import webtest
import zope.sqlalchemy

from pyramid_txmail import (IMailQueued, MessageError, NoSession, SessionNotJoined,
                            get_mailer)
from pyramid_txmail.mailer.sendlog import ENVIRON_KEY

from . import sqlmailer_app
from .sqlmailer_app import OUTCOMES, make_app, recipients_of, rows, welcome

DATABASES = ("sqlite", "postgresql")


@pytest.fixture(params=DATABASES)
def db_url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def events():
    return []


def make(db_url, events=None, **settings):
    """``(webtest app, engine)``; ``events`` collects MailQueued with the rows seen then."""
    subscribers = ()
    if events is not None:
        def record(event):
            # What another connection sees now: the row is there only after the commit.
            engine = event.request.registry["engine"]
            events.append((event.message_id, rows(engine)[1]))

        subscribers = [(IMailQueued, record)]
    wsgi = make_app(db_url, subscribers, **settings)
    engine = wsgi.registry["engine"]
    return webtest.TestApp(wsgi), engine


@pytest.fixture
def app(db_url, events):
    test_app, engine = make(db_url, events)
    yield test_app
    engine.dispose()


def engine_of(test_app):
    return test_app.app.registry["engine"]


def is_sqlite(test_app):
    return engine_of(test_app).dialect.name == "sqlite"


# -- the transaction table ----------------------------------------------------------------
@pytest.mark.parametrize("outcome", OUTCOMES)
def test_each_outcome_leaves_both_rows_or_neither(app, outcome):
    params = {"email": "ann@example.com", "outcome": outcome}
    if outcome == "exception":
        with pytest.raises(RuntimeError, match="failed after sending"):
            app.get("/signup", params)
    elif outcome == "savepoint" and is_sqlite(app):
        # zope.sqlalchemy refuses savepoints on SQLite: the view fails, nothing commits.
        with pytest.raises(TypeError, match="[Ss]avepoints unsupported"):
            app.get("/signup", params)
    else:
        app.get("/signup", params)
    emails, mails = rows(engine_of(app))
    assert emails == recipients_of(mails)  # both or neither, for every message
    expected = {"commit": ["ann@example.com"],
                "savepoint": ["after-ann@example.com", "before-ann@example.com"]}
    if is_sqlite(app):
        expected.pop("savepoint")
    assert emails == expected.get(outcome, [])


def test_commit_returns_the_message_id_of_the_row(app):
    message_id = app.get("/signup", {"email": "ann@example.com"}).text
    assert rows(engine_of(app))[1] == [(message_id, ("ann@example.com",))]


@pytest.mark.parametrize("how", ["send", "send_to_queue"])
def test_a_mail_row_alone_commits(app, how):
    """Raw SQL does not mark a zope.sqlalchemy session changed; the mailer does, or the
    commit would roll the row back without a word."""
    message_id = app.get("/mail-only", {"email": "bob@example.com", "how": how}).text
    assert rows(engine_of(app)) == ([], [(message_id, ("bob@example.com",))])


def test_an_invalid_message_raises_in_the_view_and_leaves_nothing(app):
    with pytest.raises(MessageError, match="not-an-address"):
        app.get("/signup", {"email": "not-an-address"})
    assert rows(engine_of(app)) == ([], [])


# -- events and the send log ---------------------------------------------------------------
def test_mail_queued_is_notified_after_the_commit(app, events):
    message_id = app.get("/signup", {"email": "ann@example.com"}).text
    # The subscriber's own connection already saw the committed row.
    assert events == [(message_id, [(message_id, ("ann@example.com",))])]


@pytest.mark.parametrize("outcome", ["exception", "abort", "doom", "veto"])
def test_no_event_when_the_transaction_does_not_commit(app, events, outcome):
    try:
        app.get("/signup", {"email": "ann@example.com", "outcome": outcome})
    except RuntimeError:
        pass
    assert events == []


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_savepoint_rollback_takes_back_the_row_and_its_event(app, events):
    records = []
    app.get("/signup", {"email": "ann@example.com", "outcome": "savepoint"},
            extra_environ={ENVIRON_KEY: records})
    emails, mails = rows(engine_of(app))
    assert emails == recipients_of(mails) == ["after-ann@example.com",
                                              "before-ann@example.com"]
    assert sorted(m for m, _ in events) == sorted(m for m, _ in mails)
    assert [(r.toaddrs[0], r.state) for r in records] == [
        ("before-ann@example.com", "committed"), ("ann@example.com", "rolled back"),
        ("after-ann@example.com", "committed")]


def test_the_send_log_records_the_send(app):
    records = []
    app.get("/signup", {"email": "ann@example.com"}, extra_environ={ENVIRON_KEY: records})
    assert [(r.toaddrs, r.state) for r in records] == [(("ann@example.com",), "committed")]
    app.get("/signup", {"email": "bob@example.com", "outcome": "doom"},
            extra_environ={ENVIRON_KEY: records})
    assert records[-1].state == "aborted"


# -- finding the session, and refusing one that would not commit ---------------------------
def test_a_request_without_the_session_attribute_is_refused_naming_the_setting(db_url):
    app, engine = make(db_url, **{"mail.queue_session": "nosuch"})
    with pytest.raises(NoSession, match=r"mail\.queue_session = nosuch: request\.nosuch"):
        app.get("/mail-only", {"email": "bob@example.com"})
    assert rows(engine) == ([], [])
    engine.dispose()


def test_a_dotted_name_finds_the_session(db_url):
    app, engine = make(db_url, **{"mail.queue_session":
                                  "tests.sqlmailer_app:find_session"})
    message_id = app.get("/signup", {"email": "ann@example.com"}).text
    assert rows(engine) == (["ann@example.com"], [(message_id, ("ann@example.com",))])
    engine.dispose()


def test_a_dotted_name_that_finds_none_is_refused(db_url):
    app, engine = make(db_url, **{"mail.queue_session":
                                  "tests.sqlmailer_app:find_session"})
    with pytest.raises(NoSession, match="tests.sqlmailer_app:find_session"):
        app.get("/mail-only", {"email": "bob@example.com"},
                extra_environ={"test.session": None, "test.none": True})
    engine.dispose()


def test_a_session_not_registered_with_zope_sqlalchemy_is_refused(db_url):
    app, engine = make(db_url, **{"mail.queue_session":
                                  "tests.sqlmailer_app:find_session"})
    plain = app.app.registry["dbsession_factory"]()
    with pytest.raises(SessionNotJoined, match=r"mail\.queue_session = .*not registered "
                       r"with zope\.sqlalchemy.*zope\.sqlalchemy\.register"):
        app.get("/mail-only", {"email": "bob@example.com"},
                extra_environ={"test.session": plain})
    plain.close()
    assert rows(engine) == ([], [])
    engine.dispose()


def test_a_session_joined_to_another_transaction_manager_is_refused(db_url):
    """Registered on the thread-local manager while pyramid_tm runs an explicit
    request.tm: its row would commit, or not, with another transaction."""
    app, engine = make(db_url, **{"mail.queue_session":
                                  "tests.sqlmailer_app:find_session"})
    other = app.app.registry["dbsession_factory"]()
    zope.sqlalchemy.register(other, transaction_manager=transaction.manager)
    try:
        with pytest.raises(SessionNotJoined, match="another transaction"):
            app.get("/mail-only", {"email": "bob@example.com"},
                    extra_environ={"test.session": other})
    finally:
        transaction.abort()
    assert rows(engine) == ([], [])
    engine.dispose()


def test_a_read_only_session_is_refused(db_url):
    app, engine = make(db_url, **{"mail.queue_session":
                                  "tests.sqlmailer_app:find_session"})
    with pytest.raises(SessionNotJoined, match="read-only"):
        app.get("/mail-only", {"email": "bob@example.com"},
                extra_environ={"test.readonly": True})
    assert rows(engine) == ([], [])
    engine.dispose()


# -- outside a request -----------------------------------------------------------------------
@pytest.fixture
def script(db_url):
    """``(registry, session factory, engine)`` of the app, for a script's mailer."""
    wsgi = make_app(db_url)
    registry = wsgi.registry
    yield registry, registry["dbsession_factory"], registry["engine"]
    registry["engine"].dispose()


def joined_session(factory, tm):
    session = factory()
    zope.sqlalchemy.register(session, transaction_manager=tm)
    return session


def test_get_mailer_with_a_session_writes_through_it(script):
    registry, factory, engine = script
    tm = transaction.TransactionManager(explicit=True)
    session = joined_session(factory, tm)
    with tm:
        session.execute(sqlmailer_app.signups.insert().values(email="ann@example.com"))
        message_id = get_mailer(registry, tm, session=session).send(
            welcome("ann@example.com"))
    assert rows(engine) == (["ann@example.com"], [(message_id, ("ann@example.com",))])


def test_get_mailer_with_a_session_aborted_leaves_nothing(script):
    registry, factory, engine = script
    tm = transaction.TransactionManager(explicit=True)
    session = joined_session(factory, tm)
    with pytest.raises(RuntimeError):
        with tm:
            session.execute(sqlmailer_app.signups.insert().values(email="ann@example.com"))
            get_mailer(registry, tm, session=session).send(welcome("ann@example.com"))
            raise RuntimeError("the script failed")
    assert rows(engine) == ([], [])


def test_get_mailer_without_a_session_is_refused(script):
    registry, factory, engine = script
    tm = transaction.TransactionManager(explicit=True)
    with tm:
        with pytest.raises(NoSession, match=r"session=session"):
            get_mailer(registry, tm).send(welcome("ann@example.com"))
    assert rows(engine) == ([], [])


def test_bind_keeps_the_session(script):
    registry, factory, engine = script
    tm = transaction.TransactionManager(explicit=True)
    session = joined_session(factory, tm)
    mailer = get_mailer(registry, session=session).bind(transaction_manager=tm)
    with tm:
        message_id = mailer.send(welcome("ann@example.com"))
    assert rows(engine)[1] == [(message_id, ("ann@example.com",))]


def test_the_session_is_not_needed_by_other_deliveries(sqlite_url):
    """mail.queue_url does not change direct or development delivery: no session asked."""
    app, engine = make(sqlite_url, **{"mail.delivery": "memory"})
    app.get("/mail-only", {"email": "bob@example.com"})
    assert rows(engine) == ([], [])
    engine.dispose()


def test_the_setting_is_parsed_at_startup():
    from pyramid.exceptions import ConfigurationError

    from pyramid_txmail.settings import parse_settings

    assert parse_settings({}).queue_session == "dbsession"
    assert parse_settings({"mail.queue_session": "db"}).queue_session == "db"
    found = parse_settings({"mail.queue_session": "tests.sqlmailer_app:find_session"})
    assert found.queue_session is sqlmailer_app.find_session
    with pytest.raises(ConfigurationError, match="mail.queue_session = 'tests.nosuch:f'"):
        parse_settings({"mail.queue_session": "tests.nosuch:f"})
    with pytest.raises(ConfigurationError, match="mail.queue_session"):
        parse_settings({"mail.queue_session": " "})


def test_the_sql_outbox_is_a_queue_without_a_spool(tmp_path):
    """mail.queue_url alone makes queue delivery the default; direct delivery's fallback
    (after the commit, outside the app's session) still needs the spool."""
    from pyramid.exceptions import ConfigurationError

    from pyramid_txmail.settings import parse_settings

    url = f"sqlite:///{tmp_path}/app.sqlite"
    parsed = parse_settings({"mail.queue_url": url})
    assert (parsed.delivery, parsed.direct_fallback) == ("queue", "none")
    with pytest.raises(ConfigurationError, match="mail.queue_path: required with "
                       "mail.direct_fallback = queue"):
        parse_settings({"mail.queue_url": url, "mail.delivery": "direct",
                        "mail.direct_fallback": "queue"})


def test_a_session_on_another_database_than_the_queue_url_is_named_in_a_warning(
        sqlite_url, tmp_path, caplog):
    """txmail-qp drains mail.queue_url; a row written through a session on another
    database would wait there for ever.  The URLs may legitimately differ in form (a
    pooler's host), so it is a WARNING once per database, naming both, not a refusal."""
    import logging

    other = f"sqlite:///{tmp_path}/other.sqlite"
    sqlmailer_app.create_tables(sa.create_engine(other))
    app, engine = make(other, **{"mail.queue_url": sqlite_url})
    caplog.set_level(logging.WARNING, "pyramid_txmail")
    app.get("/mail-only", {"email": "bob@example.com"})
    app.get("/mail-only", {"email": "carol@example.com"})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "other.sqlite" in warnings[0] and sqlite_url in warnings[0]
    assert "mail.queue_url" in warnings[0]
    engine.dispose()


def test_the_same_database_is_not_warned_about(app, caplog):
    import logging

    caplog.set_level(logging.WARNING, "pyramid_txmail")
    app.get("/mail-only", {"email": "bob@example.com"})
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
