"""Run the outbox's migrations alone (``script_location =
pyramid_txmail.queue.sql:migrations``): a connection from ``config.attributes``
(``connection``), else an engine from the ``sqlalchemy.url`` option.

This folder is data for Alembic, not a package (no ``__init__.py``): an
application with Alembic adds ``pyramid_txmail.queue.sql:migrations/versions``
to its ``version_locations`` (branch label ``txmail``) and runs ``alembic
upgrade heads``.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from pyramid_txmail.queue.sql.schema import metadata


def _run(connection):
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.connect() as own:
        _run(own)
    engine.dispose()
