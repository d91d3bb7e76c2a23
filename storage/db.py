"""The deferred database: created empty, initialised from configuration."""
import pathlib

from peewee import DatabaseProxy, SqliteDatabase
from playhouse.db_url import connect

database = DatabaseProxy()

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    # WAL makes NORMAL durable against process crashes; only a power cut can lose the last commits.
    "synchronous": "normal",
    "busy_timeout": 10_000,
}


def open_database(url: str):
    """Connect the models to the database at url and create missing tables."""
    from storage.models import MODELS

    db = connect(url)
    if isinstance(db, SqliteDatabase):
        if db.database not in ("", ":memory:"):
            pathlib.Path(db.database).parent.mkdir(parents=True, exist_ok=True)
        db = SqliteDatabase(db.database, pragmas=SQLITE_PRAGMAS, check_same_thread=False)
    database.initialize(db)
    with db.connection_context():
        db.create_tables(MODELS, safe=True)
    return db
