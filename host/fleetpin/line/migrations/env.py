"""Alembic environment for the fleetpin registry. Run only programmatically, by
fleetpin.line.registry.migrate(), which passes an open SQLAlchemy Connection (already inside a
transaction that holds the migration lock) in config.attributes["connection"]. There is no
alembic.ini and no offline (SQL script) mode."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running the alembic CLI by hand
    raise RuntimeError("run fleetpin registry migrate (fleetpin.line.registry.migrate), not alembic directly")

context.configure(connection=connection, transactional_ddl=True, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
