"""Runs every query on one database thread, so the event loop never waits on the database."""
import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from storage.db import database, open_database

T = TypeVar("T")


class Store:
    """The database, reached through one dedicated thread."""

    def __init__(self, url: str):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speed-db")
        self._executor.submit(open_database, url).result()

    async def run(self, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a query from storage on the database thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(query, *args, **kwargs))

    def close(self) -> None:
        """Finish queued queries and close the connection."""
        self._executor.submit(lambda: database.close()).result()
        self._executor.shutdown(wait=True)
