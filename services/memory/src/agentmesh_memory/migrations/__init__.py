"""Alembic migrations of the memory service (run on PostgreSQL and SQLite)."""
