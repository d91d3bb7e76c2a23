"""Runs every query on one database thread, so the event loop never waits on the database."""
import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from storage.db import database, open_database
from storage.models import Deployment

T = TypeVar("T")


class Store:
    """The database, reached through one dedicated thread."""

    def __init__(self, url: str):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speed-db")
        self._executor.submit(open_database, url).result()
        self._listeners: list[Callable[[Deployment], None]] = []

    def subscribe(self, listener: Callable[[Deployment], None]) -> None:
        """Call listener with every deployment that change() creates or moves."""
        self._listeners.append(listener)

    async def change(self, query: Callable[..., Deployment], *args: Any, **kwargs: Any) -> Deployment:
        """Run a query that creates or moves a deployment, then tell the listeners (reporters)."""
        deployment = await self.run(query, *args, **kwargs)
        self.announce(deployment)
        return deployment

    def announce(self, *deployments: Deployment) -> None:
        """Tell the listeners about deployments changed by another query."""
        for deployment in deployments:
            for listener in self._listeners:
                listener(deployment)

    async def run(self, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a query from storage on the database thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(query, *args, **kwargs))

    def close(self) -> None:
        """Finish queued queries and close the connection."""
        self._executor.submit(lambda: database.close()).result()
        self._executor.shutdown(wait=True)
