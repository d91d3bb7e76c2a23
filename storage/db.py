"""The deferred database: created empty, initialised from configuration."""
import pathlib
import threading

from peewee import DatabaseProxy, SqliteDatabase
from playhouse.db_url import connect


class _ThreadDatabase(DatabaseProxy):
    """A proxy initialised per thread: each Store's one thread has its own database, so several
    SPEED instances can live in one process (the tests run them side by side)."""

    __slots__ = ("_local",)

    def __init__(self):
        object.__setattr__(self, "_local", threading.local())
        super().__init__()

    @property
    def obj(self):
        return getattr(self._local, "database", None)

    @obj.setter
    def obj(self, value):
        self._local.database = value

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)


database = _ThreadDatabase()

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    # WAL makes NORMAL durable against process crashes; only a power cut can lose the last commits.
    "synchronous": "normal",
    "busy_timeout": 10_000,
}


def open_database(url: str):
    """Connect the models to the database at url, for this thread, and create missing tables."""
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
