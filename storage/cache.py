"""Answers reused until the database changes: a read served from memory, without the hop to the
database thread, only while no commit has been made since it was computed."""
import sqlite3
from typing import Any, Awaitable, Callable, Hashable

from storage.db import sqlite_file

# Enough for every deployment a dashboard or a poller looks at; past it the cache starts again.
# (Callers keep only small answers: see bot/api.py.)
MAX_ENTRIES = 1024


class ReadCache:
    """Computed answers by key, dropped all at once when SQLite's data_version moves."""

    def __init__(self, url: str):
        self._watch = _watch(url)
        self._entries: dict[Hashable, Any] = {}
        self._version: int | None = None

    def _current(self) -> int | None:
        """The database's data_version now, or None when it cannot be told at once."""
        if self._watch is None:
            return None
        try:
            return self._watch.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:  # busy (a recovery under way): read through, never wait
            return None

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]],
                  keep: Callable[[Any], bool] = lambda answer: True) -> Any:
        """compute()'s answer for key: the one kept, if nothing was committed since it was
        computed; else computed now (and kept if keep(answer) says it depends on nothing but
        the database, and nothing is committed meanwhile)."""
        version = self._current()
        if version is None:
            return await compute()
        if version != self._version:
            self._entries.clear()
            self._version = version
        try:
            return self._entries[key]
        except KeyError:
            pass
        answer = await compute()
        # Kept under the version seen before computing: a commit during the computation moves
        # data_version, so the next look drops it (it is never older than that version says).
        if self._version == version and keep(answer):
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = answer
        return answer

    def close(self) -> None:
        """Close the watching connection."""
        if self._watch is not None:
            self._watch.close()


def _watch(url: str) -> sqlite3.Connection | None:
    """A read-only connection to the SQLite database at url, asked only for data_version (which
    moves with every commit by any other connection: SPEED's database thread, another process);
    None for PostgreSQL, where only the database thread reads."""
    path = sqlite_file(url)
    if path is None:
        return None
    # timeout 0: the event loop never waits on a lock; a busy database reads through instead.
    return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=0,
                           isolation_level=None, check_same_thread=False)
