"""A Pyramid app with rows of its own and the SQL outbox, for tests/test_sqlmailer*.py.

Built as an application built from Pyramid's cookiecutter is: pyramid_tm with an
explicit ``request.tm``, ``request.dbsession`` registered on it with
zope.sqlalchemy.  Its one view, ``/signup``, adds a ``signups`` row and sends a
welcome mail in the same request, then ends the request as ``outcome`` says
(the rows of the README's transaction table), so that a test can check that
after each outcome both rows exist or neither does.
"""
from __future__ import annotations

from email.message import EmailMessage

import sqlalchemy as sa
import zope.sqlalchemy
from pyramid.config import Configurator
from pyramid.response import Response
from sqlalchemy.orm import sessionmaker

from pyramid_txmail.queue.sql import init_db, outbox

app_metadata = sa.MetaData()
signups = sa.Table(
    "signups", app_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
)

OUTCOMES = ("commit", "exception", "abort", "doom", "veto", "savepoint")


def create_tables(engine):
    app_metadata.create_all(engine)
    init_db(engine)


def welcome(email):
    msg = EmailMessage()
    msg["To"] = email
    msg["Subject"] = f"Welcome {email}"
    msg.set_content("Thanks for signing up.\n")
    return msg


def add_and_send(request, email):
    """The application's row and its mail, in the request's transaction."""
    request.dbsession.execute(signups.insert().values(email=email))
    return request.mailer.send(welcome(email))


def signup(request):
    email = request.params["email"]
    outcome = request.params.get("outcome", "commit")
    if outcome == "savepoint":
        # before: kept; middle: rolled back with its savepoint; after: kept.
        add_and_send(request, "before-" + email)
        point = request.tm.savepoint()
        add_and_send(request, email)
        point.rollback()
        add_and_send(request, "after-" + email)
        return Response("savepoint")
    message_id = add_and_send(request, email)
    after_send = request.environ.get("test.after_send")  # the crash app's kill points
    if after_send is not None:
        after_send(request)
    if outcome == "exception":
        raise RuntimeError("the view failed after sending")
    if outcome == "abort":
        request.tm.abort()
        request.tm.begin()
    elif outcome == "doom":
        request.tm.doom()
    return Response(message_id, headers={"x-tm": "abort"} if outcome == "veto" else {})


def mail_only(request):
    """Only the mail row: no ORM write tells zope.sqlalchemy the session changed."""
    how = request.params.get("how", "send")
    message = welcome(request.params["email"])
    return Response(getattr(request.mailer, how)(message))


def veto(request, response):
    return response.headers.get("x-tm") == "abort"


def find_session(request):
    """A ``mail.queue_session`` dotted name: ``request.dbsession``, or what the test
    put in the environ (``test.session``; ``test.none``: none; ``test.readonly``: a
    session registered read-only on ``request.tm``)."""
    environ = request.environ
    if environ.get("test.none"):
        return None
    if environ.get("test.readonly"):
        session = request.registry["dbsession_factory"]()
        zope.sqlalchemy.register(session, initial_state="readonly",
                                 transaction_manager=request.tm)
        return session
    return environ.get("test.session") or request.dbsession


def make_app(db_url, subscribers=(), **settings):
    """The WSGI app on ``db_url`` (its tables created); ``settings`` override ours."""
    engine = sa.create_engine(db_url)
    create_tables(engine)
    factory = sessionmaker(bind=engine)
    config = Configurator(settings={
        "mail.queue_url": db_url, "mail.delivery": "queue",
        "mail.default_sender": "Shop <shop@example.com>",
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        "tm.commit_veto": "tests.sqlmailer_app.veto", **settings})
    config.include("pyramid_txmail")
    config.registry["dbsession_factory"] = factory
    config.registry["engine"] = engine

    def dbsession(request):
        session = factory()
        zope.sqlalchemy.register(session, transaction_manager=request.tm)
        return session

    config.add_request_method(dbsession, reify=True)
    config.add_route("signup", "/signup")
    config.add_view(signup, route_name="signup")
    config.add_route("mail_only", "/mail-only")
    config.add_view(mail_only, route_name="mail_only")
    for iface, handler in subscribers:
        config.add_subscriber(handler, iface)
    return config.make_wsgi_app()


def rows(engine):
    """``(app emails, [(message_id, recipients)] of the mail rows)``, both sorted.

    Both tables are read in one snapshot (REPEATABLE READ; SQLite's one transaction is one
    anyway): a killed client's last COMMIT may still be landing on the server, and under
    READ COMMITTED the two SELECTs could straddle it -- the app row missed by the first,
    its mail row seen by the second -- which looks like a mail row without its app row
    (seen once in 80 rounds of ``make reliability``)."""
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="REPEATABLE READ")
    with engine.connect() as connection:
        emails = sorted(connection.execute(sa.select(signups.c.email)).scalars())
        mails = sorted((m, tuple(r)) for m, r in connection.execute(
            sa.select(outbox.c.message_id, outbox.c.recipients)))
    return emails, mails


def recipients_of(mails):
    return sorted(r for _, recipients in mails for r in recipients)
