"""The SQL outbox: the queue as two tables in the application's own database.

A message is INSERTed through the application's connection, in the same
database transaction as its data (:func:`enqueue`), so it commits exactly when
the data does: no prepared or in-doubt state.  Processors on any number of
machines drain it through :class:`~pyramid_txmail.queue.sql.backend.SQLQueue`
with their own connections (PostgreSQL: ``FOR UPDATE SKIP LOCKED`` claims with
leases judged by the database's clock; SQLite: ``BEGIN IMMEDIATE``, one
machine).

For an application with Alembic, add :data:`metadata` to its autogenerate
(``target_metadata = [app_metadata, pyramid_txmail.queue.sql.metadata]``) or
run the shipped migration (``version_locations`` += :data:`MIGRATIONS`, branch
label ``txmail``); without Alembic, :func:`init_db` creates the tables.
"""
from .schema import MIGRATIONS, STATES, init_db, metadata, outbox, outbox_chunk  # noqa: F401
from .store import enqueue  # noqa: F401
from .backend import SQLQueue  # noqa: F401
