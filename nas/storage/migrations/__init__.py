"""Alembic migrations of the nas database schema (env.py; one revision per file in versions/)."""
