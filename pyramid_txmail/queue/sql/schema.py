"""The outbox tables, as SQLAlchemy Core metadata the application can adopt.

``txmail_outbox`` has one row per message: its envelope (a record of its own,
never parsed out of the message), its state, its retry state dict (JSON, the
keys of :mod:`pyramid_txmail.queue.queue_state`), its claim and its body when the
body is small.  A body over :data:`CHUNK` octets lives in
``txmail_outbox_chunk`` rows of at most :data:`CHUNK` octets each, written and
read one at a time, so no leg ever holds more than one chunk beyond what the
caller already has (a 50 MiB attachment costs 1 MiB of buffer, not 50).

Times are epoch seconds (double precision).  Lease times come from the
database's clock (:class:`db_epoch`), never the processors': processors on
many machines then agree on when a lease ran out however their clocks differ.

The indexes are partial, one per claimable state (PostgreSQL, and SQLite
since 3.8), so that taking the oldest queued row, the earliest due deferred
row, or the expired leases is an index range scan whose cost does not grow
with the delivered and failed rows kept beside them.
"""
from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

#: Message states, in pipeline order.
STATES = ("queued", "in_progress", "deferred", "failed", "delivered")

#: Bodies up to this many octets are stored in the row; larger ones in chunks of it.
CHUNK = 1 << 20

#: Where the Alembic migration lives: add it to ``version_locations`` (as this
#: path, or as ``pyramid_txmail.queue.sql:migrations/versions``).
MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations", "versions")
#: The ``script_location`` that runs the migration alone (its own env.py).
SCRIPT_LOCATION = os.path.join(os.path.dirname(__file__), "migrations")

metadata = sa.MetaData()

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER only
#: The largest id the column holds (BIGINT; SQLite's INTEGER is 64-bit as well).
MAX_ID = 2 ** 63 - 1


def parse_id(text):
    """The outbox id ``text`` spells (ASCII digits, 1..MAX_ID), else None.

    The one place ids from people are parsed: ``str.isdigit`` accepts
    full-width and superscript digits (``"０１"`` would be row 1) and ``int``
    any length, which PostgreSQL refuses as a parameter (DataError) instead
    of finding nothing.
    """
    if not isinstance(text, str) or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if 0 < value <= MAX_ID else None


#: The settled rows' index's WHERE (a query that may use that index repeats it: SQLite's
#: planner does not infer it from ``state = 'delivered'``).
SETTLED_WHERE = "state IN ('failed', 'delivered')"


def _partial(name, *columns, where):
    return sa.Index(name, *columns, postgresql_where=sa.text(where),
                    sqlite_where=sa.text(where))


outbox = sa.Table(
    "txmail_outbox", metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(998), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("sender", sa.Text(), nullable=False),
    sa.Column("recipients", sa.JSON(), nullable=False),
    sa.Column("queued_at", sa.Double(), nullable=False),
    sa.Column("next_attempt", sa.Double(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("meta", sa.JSON(), nullable=True),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("chunks", sa.Integer(), nullable=False),
    sa.Column("body", sa.LargeBinary(), nullable=True),
    sa.Column("eightbit", sa.Boolean(), nullable=False),
    sa.Column("head_8bit", sa.Boolean(), nullable=False),
    sa.Column("wire_ready", sa.Boolean(), nullable=False),
    sa.Column("claim_token", sa.String(32), nullable=True),
    sa.Column("claimed_by", sa.String(255), nullable=True),
    sa.Column("lease_until", sa.Double(), nullable=True),
    sa.Column("settled_at", sa.Double(), nullable=True),
    sa.CheckConstraint("state IN ('queued', 'in_progress', 'deferred', 'failed', "
                       "'delivered')", name="ck_txmail_outbox_state"),
    _partial("ix_txmail_outbox_queued", "queued_at", "id", where="state = 'queued'"),
    _partial("ix_txmail_outbox_deferred", "next_attempt", where="state = 'deferred'"),
    _partial("ix_txmail_outbox_leases", "lease_until", where="state = 'in_progress'"),
    _partial("ix_txmail_outbox_settled", "state", "settled_at", where=SETTLED_WHERE),
    sa.Index("ix_txmail_outbox_message_id", "message_id"),
    sqlite_autoincrement=True,  # ids never reused: the poll watcher looks for a newer one
)

outbox_chunk = sa.Table(
    "txmail_outbox_chunk", metadata,
    sa.Column("outbox_id", _ID, sa.ForeignKey("txmail_outbox.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("data", sa.LargeBinary(), nullable=False),
)


class db_epoch(FunctionElement):
    """The database's clock in epoch seconds (a SQL expression).

    PostgreSQL's ``clock_timestamp()`` (not ``now()``, which is frozen at the
    start of the transaction); SQLite's ``julianday('now')`` (milliseconds).
    """

    type = sa.Double()
    inherit_cache = True
    name = "db_epoch"


@compiles(db_epoch)
def _epoch_default(element, compiler, **kw):
    return "CAST(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) AS DOUBLE PRECISION)"


#: db_epoch() in PostgreSQL's SQL (for the statements written as text).
PG_EPOCH = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(db_epoch, "postgresql")
def _epoch_postgresql(element, compiler, **kw):
    return PG_EPOCH


@compiles(db_epoch, "sqlite")
def _epoch_sqlite(element, compiler, **kw):
    return "((julianday('now') - 2440587.5) * 86400.0)"


def init_db(engine):
    """Create the outbox tables and indexes where missing (``txmail-queue INI init-db``).

    Idempotent: tables that exist are left as they are.  An application with
    Alembic runs the migration instead (see the package docstring).
    Tables that exist but differ from this version's (a column missing, an
    extra NOT NULL one) are not altered: :class:`~.tables.IncompatibleTables`
    names what differs (then the Alembic migration, or a person, fixes it).
    """
    from .engine import where
    from .tables import check

    check(engine, where(engine.url), missing_ok=True)
    metadata.create_all(engine, checkfirst=True)
