"""The deferred database: created empty, initialised from configuration."""
import pathlib
import threading

from peewee import SQL, DatabaseProxy, InterfaceError, OperationalError, PostgresqlDatabase, SqliteDatabase
from playhouse.db_url import connect, parse
from playhouse.migrations import Runner
from playhouse.shortcuts import ReconnectMixin

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
    # storage/checkpoints.py folds the WAL in every half second; a writer does it only if that
    # thread could not for long (40 MB of WAL), never at the default 1,000 pages (4 MB).
    "wal_autocheckpoint": 10_000,
    # And the next write after a checkpoint starts the WAL over as an empty file: a full disk
    # then refuses it at once (507), rather than only once the WAL's old room is used up.
    "journal_size_limit": 0,
}


# What psycopg2 says when the server went away or cannot be reached (a restart, a failover, a
# session ended by the server): the query can be tried again on a new connection.
CONNECTION_LOST = ("server closed the connection", "connection already closed",
                   "terminating connection", "could not connect", "connection refused",
                   "the database system is", "ssl connection has been closed", "no connection to the server")
# A transaction left open this long (seconds) by a replica that froze (SIGSTOP, a long GC pause)
# is ended by the server, so its row locks never hold another replica's adoption for ever.
# SPEED's own transactions last milliseconds.
IDLE_TRANSACTION_SECONDS = 5


def connection_lost(error: BaseException) -> bool:
    """Whether error says the database server went away or cannot be reached."""
    text = str(error).lower()
    return isinstance(error, (OperationalError, InterfaceError)) and any(
        fragment in text for fragment in CONNECTION_LOST)


# Of those, what says the statement never reached the server: only then is it sent again at
# once. Another loss ("server closed the connection") may come after the server applied it.
NOT_SENT = ("connection already closed", "could not connect", "connection refused",
            "the database system is", "no connection to the server")


class _PostgresDatabase(ReconnectMixin, PostgresqlDatabase):
    """PostgreSQL, connecting again after the server went away: a statement that surely never
    reached it is sent again on the new connection; any other failure is the caller's to retry
    (storage.store waits and tries the whole query again)."""

    reconnect_errors = tuple((kind, fragment) for kind in (OperationalError, InterfaceError)
                             for fragment in NOT_SENT)


def is_postgres(url: str) -> bool:
    """Whether database.url names a PostgreSQL database."""
    return url.startswith(("postgres://", "postgresql://"))


def sqlite_file(url: str) -> pathlib.Path | None:
    """The SQLite database file database.url names (absolute); None for PostgreSQL or memory."""
    if not url.startswith("sqlite:"):
        return None
    path = parse(url)["database"]
    return None if path in ("", ":memory:") else pathlib.Path(path).resolve()


def _postgres(url: str) -> PostgresqlDatabase:
    settings = parse(url)
    options = settings.pop("options", "")
    options += f" -c idle_in_transaction_session_timeout={IDLE_TRANSACTION_SECONDS * 1000}"
    return _PostgresDatabase(settings.pop("database"), options=options.strip(), **settings)


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
    db = _postgres(url) if is_postgres(url) else connect(url)
    if isinstance(db, SqliteDatabase):
        if db.database not in ("", ":memory:"):
            pathlib.Path(db.database).parent.mkdir(parents=True, exist_ok=True)
        db = SqliteDatabase(db.database, pragmas=SQLITE_PRAGMAS, check_same_thread=False)
    database.initialize(db)
    with db.connection_context():
        upgrade(db)
    return db
