"""Runs every query on one database thread, so the event loop never waits on the database."""
import asyncio
import functools
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from storage import replicas
from storage.cache import ReadCache
from storage.checkpoints import checkpointer
from storage.db import connection_lost, database, open_database
from storage.errors import StorageFull, StorageUnavailable
from storage.models import Deployment
from storage.together import Together

T = TypeVar("T")

log = logging.getLogger(__name__)

# A patient write retries after these many seconds, doubling up to the last.
PATIENT_FIRST_DELAY = 0.1
PATIENT_MAX_DELAY = 2.0


# SQLite's codes for "no room": a table or the WAL cannot grow, or the WAL index (the -shm file,
# made when the database is opened) cannot.
_NO_SPACE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE}
# PostgreSQL's SQLSTATE for the same (disk_full), as psycopg2's errors carry it in pgcode.
_PG_DISK_FULL = "53100"


def _disk_full(error: BaseException | None) -> bool:
    """Whether the database said it had no room anywhere in the chain: when COMMIT fails for
    lack of space, SQLite rolls back by itself and peewee's own ROLLBACK then fails over the
    real cause."""
    while error is not None:
        if isinstance(error, sqlite3.Error) and error.sqlite_errorcode in _NO_SPACE:
            return True
        if getattr(error, "pgcode", None) == _PG_DISK_FULL:
            return True
        error = error.__cause__ or error.__context__
    return False


def _translated(query: Callable[[], T]) -> T:
    try:
        return query()
    except Exception as e:
        if _disk_full(e):
            raise StorageFull() from e
        if connection_lost(e):
            raise StorageUnavailable() from e
        raise


def _name(query: Callable) -> str:
    return getattr(query, "__name__", "a query")


class _Changes:
    """change(): run a query, then tell the listeners about the deployment it returns."""

    async def change(self, query: Callable[..., Deployment], *args: Any, **kwargs: Any) -> Deployment:
        """Run a query that creates or moves a deployment, then tell the listeners (reporters)."""
        deployment = await self.run(query, *args, **kwargs)
        self.announce(deployment)
        return deployment


class Store(_Changes):
    """The database, reached through one dedicated thread."""

    def __init__(self, url: str):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speed-db")
        self._executor.submit(_translated, functools.partial(open_database, url)).result()
        self._listeners: list[Callable[[Deployment], None]] = []
        # After open_database: the file exists, its schema is up to date.
        self.cache = ReadCache(url)
        self._checkpointer = checkpointer(url)
        self._together = Together(self._executor, _translated)

    def subscribe(self, listener: Callable[[Deployment], None]) -> None:
        """Call listener with every deployment that change() creates or moves."""
        self._listeners.append(listener)

    def announce(self, *deployments: Deployment) -> None:
        """Tell the listeners about deployments changed by another query."""
        for deployment in deployments:
            for listener in self._listeners:
                listener(deployment)

    async def run(self, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a query from storage on the database thread and return its result; StorageFull
        when the disk had no room for it, StorageUnavailable when the server could not be
        reached (then nothing was written). Within a deployment's run,
        fenced: NotOwner once another replica adopted the deployment."""
        acting = replicas.acting.get()
        call = functools.partial(query, *args, **kwargs) if acting is None else \
            functools.partial(replicas.fenced, *acting, query, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _translated, call)

    async def run_together(self, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Store.run for a write that shares its transaction (and its hop to the database
        thread) with those queued meanwhile: storage/together.py. Never within a deployment's
        run (that is fenced, one query at a time)."""
        assert replicas.acting.get() is None, "a deployment's queries are fenced: use run()"
        return await self._together.run(functools.partial(query, *args, **kwargs))

    def patient(self) -> "PatientStore":
        """This store for work that must not lose a write: see PatientStore."""
        return PatientStore(self)

    def close(self) -> None:
        """Finish queued queries and close the connection."""
        # These first: the last connection to close folds the WAL into the database, and a
        # read-only one cannot.
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.cache.close()
        self._executor.submit(lambda: database.close()).result()
        self._executor.shutdown(wait=True)


class PatientStore(_Changes):
    """A store whose queries wait out a full disk or a database server away: on StorageFull or
    StorageUnavailable they retry with backoff until the query goes through. The waiting is on the event loop, never on the database thread, so
    reads and the API keep answering meanwhile; a deployment's output stream simply pauses."""

    def __init__(self, store: Store):
        self._store = store
        self.announce = store.announce

    async def run(self, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Store.run, waiting for space."""
        delay, waited = PATIENT_FIRST_DELAY, False
        while True:
            try:
                result = await self._store.run(query, *args, **kwargs)
            except (StorageFull, StorageUnavailable) as e:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # shutting down: give up rather than hold the shutdown until space returns
                if not waited:
                    if isinstance(e, StorageFull):
                        log.warning("the database's disk is full; %s waits for space", _name(query))
                    else:
                        log.warning("the database cannot be reached; %s waits for it", _name(query))
                    waited = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, PATIENT_MAX_DELAY)
                continue
            if waited:
                log.info("the database answers again; %s went through", _name(query))
            return result
