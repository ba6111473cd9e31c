"""Are the outbox's tables there, and the ones this version expects?

``init-db`` creates missing tables but never alters existing ones, so a table
left by another version (or a hand-made one) was reported "ready" and every
pass of txmail-qp then failed with a ProgrammingError and its traceback.
:func:`differences` compares the tables in the database with
:data:`~pyramid_txmail.queue.sql.schema.metadata` (columns by name; an extra
NOT NULL column without a default breaks our INSERTs too), and
:func:`check` raises :class:`IncompatibleTables` naming what differs.
"""
from __future__ import annotations

import sqlalchemy as sa

from .schema import metadata

HOW_TO_FIX = ("create or migrate them with `txmail-queue CONFIG_URI init-db` (a new "
              "database) or the application's Alembic migrations (branch txmail)")


class IncompatibleTables(Exception):
    """The outbox tables are missing or not the ones this version uses."""


def differences(bind, missing_ok=False):
    """One text per difference between the database's outbox tables and ours."""
    inspector = sa.inspect(bind)
    found = []
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            if not missing_ok:
                found.append(f"table {table.name} is missing")
            continue
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in columns]
        if missing:
            found.append(f"table {table.name} has no column {', '.join(missing)}")
        extra = [name for name, c in columns.items() if name not in table.columns
                 and not c.get("nullable", True) and c.get("default") is None
                 and not c.get("autoincrement") is True]
        if extra:
            found.append(f"table {table.name} has NOT NULL column(s) {', '.join(extra)} "
                         "that this version does not fill")
    return found


def check(bind, where, missing_ok=False):
    """Raise IncompatibleTables (one line naming what differs) unless the tables fit."""
    found = differences(bind, missing_ok)
    if found:
        raise IncompatibleTables(f"the outbox tables in {where} are not the ones this "
                                 f"version of pyramid_txmail uses: {'; '.join(found)}; "
                                 f"{HOW_TO_FIX}")
