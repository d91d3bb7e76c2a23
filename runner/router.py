"""The proxy as the database says it should be: each environment's address routed to its live
release. Every change of routes goes through here, one at a time."""
import asyncio
import contextlib
import logging
from typing import Protocol

from runner.proxy import Proxy, ProxyError, ProxyUnavailable
from storage import releases
from storage.models import Release

log = logging.getLogger(__name__)

WATCH_SECONDS = 2.0  # how often the proxy's routes are compared with the database's


class Names(Protocol):
    """How environments' addresses become host names and URLs (the proxy: section)."""

    def host(self, address: str) -> str: ...

    def environment_url(self, address: str) -> str: ...


class Router:
    """Switches environments between releases and keeps the proxy's routes the database's."""

    def __init__(self, store, proxy: Proxy, names: Names):
        self.store = store
        self.proxy = proxy
        self.names = names
        # One change at a time: a rebuild from the database must not undo a switch half made.
        self._lock = asyncio.Lock()

    def host(self, address: str) -> str:
        return self.names.host(address)

    def url(self, address: str) -> str:
        return self.names.environment_url(address)

    async def switch(self, release_id: int, address: str, upstream: str,
                     drain: float) -> tuple[Release, Release | None]:
        """Route address to a healthy release and record it live (the one it replaces
        draining); return both. The proxy first: if it cannot take the route, nothing changed."""
        async with self._lock:
            try:
                await self.proxy.route(self.host(address), upstream)
                return await self.store.run(releases.go_live, release_id, drain)
            except BaseException:
                # Not recorded (or Caddy took the route but answered late): the proxy goes back
                # to the database's routes now, not at the next watch.
                with contextlib.suppress(ProxyError):
                    await self._sync()
                raise

    async def sync(self) -> bool:
        """Make the proxy's routes the database's if they differ; whether they did."""
        async with self._lock:
            return await self._sync()

    async def _sync(self) -> bool:
        wanted = {self.host(address): upstream
                  for address, upstream in (await self.store.run(releases.routes)).items()}
        if await self.proxy.routes() == wanted:
            return False
        await self.proxy.set_routes(wanted)
        return True

    async def watch(self, interval: float = WATCH_SECONDS) -> None:
        """Keep the proxy's routes the database's: after a restart of the proxy (it comes back
        empty) or of SPEED, and after any change made behind SPEED's back."""
        away = False
        while True:
            try:
                if await self.sync():
                    log.info("the proxy's routes were rebuilt from the database")
                if away:
                    log.info("the proxy answers again")
                away = False
            except ProxyUnavailable as e:
                if not away:
                    log.warning("the proxy does not answer (%s); live services keep serving "
                                "what it last had", e.message)
                away = True
            except ProxyError as e:
                log.error("the proxy refused SPEED's routes: %s", e.message)
            except Exception:  # e.g. the database away for a moment: the watch must go on
                log.exception("could not compare the proxy's routes with the database's")
            await asyncio.sleep(interval)
