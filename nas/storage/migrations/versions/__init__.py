"""Alembic revisions of the nas schema, applied in order by `nas db upgrade` and on first use."""
