"""The demo's database: a table of users and the mail outbox, joined to the request's transaction.

The set-up is the standard Pyramid cookiecutter one: a session factory built
once from the ``sqlalchemy.*`` settings, and ``request.dbsession`` -- a
session registered with zope.sqlalchemy on ``request.tm``.  The mail queue is
pyramid_txmail's SQL outbox in the same database (``mail.queue_url``): the
welcome mail's row is written through ``request.dbsession``, so a user and
their mail commit or abort together, in one database transaction.  SQLite by
default; ``python -m demo_app.run --db postgresql+psycopg://...`` runs both on
PostgreSQL.

``email`` is UNIQUE case-insensitively (a unique index on ``lower(email)``;
SQLite's NOCASE column too): a second sign-up with the same address fails with
an ``IntegrityError`` when the session is flushed, which is what the demo uses
to show that a failed request sends no mail.
"""
from __future__ import annotations

import datetime
import logging
import os

import zope.sqlalchemy
from pyramid.exceptions import ConfigurationError
from sqlalchemy import Index, String, engine_from_config, func
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.schema import CreateIndex, CreateTable

from pyramid_txmail.queue.sql import metadata as outbox_metadata

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


class User(Base):
    """Someone who signed up.  ``welcome_message_id`` is the Message-ID of their welcome mail."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(
        String(320).with_variant(String(320, collation="NOCASE"), "sqlite"), unique=True)
    welcome_message_id: Mapped[str] = mapped_column(String(250), default="")
    created: Mapped[datetime.datetime] = mapped_column(default=_utcnow)

    __table_args__ = (Index("uq_users_email_lower", func.lower(email), unique=True),)


def get_engine(settings, prefix="sqlalchemy."):
    """The engine for ``sqlalchemy.url``; the directory of an SQLite file is created (0700)."""
    url = settings.get(prefix + "url")
    if not url:
        raise ConfigurationError(f"{prefix}url is not set: the demo needs a database, "
                                 "e.g. sqlite:///%(here)s/../var/demo/demo.sqlite")
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError and friends
        raise ConfigurationError(f"{prefix}url = {url!r}: {exc}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        directory = os.path.dirname(os.path.abspath(parsed.database))
        os.makedirs(directory, mode=0o700, exist_ok=True)
    return engine_from_config(settings, prefix)


def create_tables(engine):
    """Create what is missing -- the users table and the mail outbox's tables -- with
    ``IF NOT EXISTS``: the web app and each ``txmail-qp`` pass load the app, and may
    start at the same moment.  (An app with Alembic would migrate instead; one without
    runs ``txmail-queue INI init-db`` for the outbox.)"""
    tables = Base.metadata.sorted_tables + outbox_metadata.sorted_tables
    with engine.begin() as connection:
        for table in tables:
            connection.execute(CreateTable(table, if_not_exists=True))
            for index in table.indexes:
                connection.execute(CreateIndex(index, if_not_exists=True))


def get_session_factory(engine):
    return sessionmaker(bind=engine)


def get_tm_session(session_factory, transaction_manager, request=None):
    """A session joined to ``transaction_manager``: it commits and aborts with it."""
    dbsession = session_factory(info={"request": request})
    zope.sqlalchemy.register(dbsession, transaction_manager=transaction_manager)
    return dbsession


def includeme(config):
    """Create the tables if needed and add ``request.dbsession``."""
    settings = config.get_settings()
    settings["tm.manager_hook"] = "pyramid_tm.explicit_manager"
    config.include("pyramid_tm")

    engine = get_engine(settings)
    create_tables(engine)
    log.debug("database ready at %s", engine.url.render_as_string(hide_password=True))
    session_factory = get_session_factory(engine)
    config.registry["dbsession_factory"] = session_factory

    def dbsession(request):
        # A test (or a script) may hand in its own session through the environ.
        session = request.environ.get("app.dbsession")
        if session is None:
            session = get_tm_session(session_factory, request.tm, request=request)
        return session

    config.add_request_method(dbsession, reify=True)
