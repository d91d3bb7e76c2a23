"""The deferred database: created empty, initialised from configuration."""
import pathlib
import threading

from peewee import SQL, DatabaseProxy, PostgresqlDatabase, SqliteDatabase
from playhouse.db_url import connect
from playhouse.migrations import Runner

MIGRATIONS = pathlib.Path(__file__).parent / "migrations"
# Replicas starting side by side must not migrate at once (PostgreSQL races on CREATE TABLE).
MIGRATION_LOCK = 0x5EED_0001
# The largest value of an id column (peewee's AutoField): SQLite's integer is 64-bit,
# PostgreSQL's serial 32-bit. A larger id names no row: it must not reach a query.
SQLITE_MAX_ID = 2**63 - 1
POSTGRES_MAX_ID = 2**31 - 1


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


def max_id() -> int:
    """The largest id this thread's database can hold."""
    return POSTGRES_MAX_ID if isinstance(database.obj, PostgresqlDatabase) else SQLITE_MAX_ID


def clock() -> SQL:
    """The database's clock, in seconds since the epoch, as an SQL expression: the one clock
    every replica reads, whatever the clocks of their machines say."""
    if isinstance(database.obj, PostgresqlDatabase):
        return SQL("EXTRACT(EPOCH FROM clock_timestamp())::float8")
    return SQL("((julianday('now') - 2440587.5) * 86400.0)")


def write_transaction():
    """A write transaction; on SQLite it takes the write lock up front so it never deadlocks."""
    if isinstance(database.obj, SqliteDatabase):
        return database.atomic("IMMEDIATE")
    return database.atomic()


def upgrade(db) -> list[str]:
    """Bring the schema up to date with storage/migrations; return the migrations applied."""
    postgres = isinstance(db, PostgresqlDatabase)
    if postgres:
        db.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        runner = Runner(db, directory=str(MIGRATIONS), table_name="schema_migration")
        if not runner.History.table_exists() and db.table_exists("deployment"):
            runner.fake("0001_initial")  # made by the first release, which had no migrations
        return runner.up()
    finally:
        if postgres:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def open_database(url: str):
    """Connect the models to the database at url, for this thread, and upgrade its schema."""
    db = connect(url)
    if isinstance(db, SqliteDatabase):
        if db.database not in ("", ":memory:"):
            pathlib.Path(db.database).parent.mkdir(parents=True, exist_ok=True)
        db = SqliteDatabase(db.database, pragmas=SQLITE_PRAGMAS, check_same_thread=False)
    database.initialize(db)
    with db.connection_context():
        upgrade(db)
    return db
