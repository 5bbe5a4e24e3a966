"""Alembic environment: migrations always run on a connection handed in by ``open_store``."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from any2capins.workflows.review.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "the review store's migrations run through workflows.review.open_store "
        "(or `any2cap review ...`), not the alembic command line"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
