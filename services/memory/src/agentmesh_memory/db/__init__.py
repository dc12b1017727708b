"""Storage plumbing: the engine and its transactions, the schema, migrations, notifications."""

from .database import Database, DatabaseOptions
from .notifier import EventNotifier, LocalNotifier, PostgresNotifier

__all__ = ["Database", "DatabaseOptions", "EventNotifier", "LocalNotifier", "PostgresNotifier"]
