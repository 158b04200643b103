"""Alembic environment: run with the connection that `nas.storage.upgrade` hands over."""

from alembic import context

from nas.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `nas db upgrade` (nas.storage.upgrade)")
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
