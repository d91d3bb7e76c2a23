"""Connection limits of the listener containers call back to: no proxy can stand in front of it."""
import asyncio
import collections
import logging

from aiohttp import web

log = logging.getLogger(__name__)

# Connections one address may hold open at once. Each container has its own address on the
# bridge (and no NET_RAW or NET_ADMIN to use another), so one container cannot take the file
# descriptors that the API, the engine and the other containers need.
MAX_PER_PEER = 16
# Seconds a connection has to send a complete request head; aiohttp would wait an hour. The
# same bound is aiohttp's keep-alive timeout here, for a connection idle between requests.
HEAD_SECONDS = 10.0


def listener_runner(app: web.Application) -> web.AppRunner:
    """The runner of the callback app: idle keep-alive connections close after HEAD_SECONDS."""
    return web.AppRunner(app, access_log=None, keepalive_timeout=HEAD_SECONDS)


class CallbackSite(web.BaseSite):
    """A TCP site like web.TCPSite whose connections pass through _Guarded first."""

    def __init__(self, runner: web.AppRunner, host: str, port: int):
        super().__init__(runner)
        self._host, self._port = host, port
        self._open: collections.Counter[str] = collections.Counter()
        self._full: set[str] = set()  # peers told about in the log, until they drop below the cap

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        # aiohttp has no public hook for either limit, so each of its protocol objects (what
        # runner.server makes per connection) is wrapped before the transport sees it.
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guarded(server(), self), self._host, self._port)

    def admit(self, peer: str) -> bool:
        """Count a new connection from peer, unless it already holds MAX_PER_PEER."""
        if self._open[peer] >= MAX_PER_PEER:
            if peer not in self._full:
                self._full.add(peer)
                log.warning("callback listener: %s holds %d connections; refusing more until "
                            "some close", peer, MAX_PER_PEER)
            return False
        self._open[peer] += 1
        return True

    def release(self, peer: str) -> None:
        """Forget a closed connection from peer."""
        self._open[peer] -= 1
        if self._open[peer] <= 0:
            del self._open[peer]
        if self._open[peer] < MAX_PER_PEER:
            self._full.discard(peer)


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol behind the per-peer cap and the request head deadline."""

    def __init__(self, inner: asyncio.Protocol, site: CallbackSite):
        self._inner, self._site = inner, site
        self._peer: str | None = None  # set once admitted: only then is it counted
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else "unknown"
        if not self._site.admit(peer):
            transport.abort()  # at once, with a reset: the descriptor is free again now
            return
        self._peer = peer
        self._deadline = asyncio.get_running_loop().call_later(HEAD_SECONDS, self._head_overdue)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)
        if self._deadline is not None and _has_request(self._inner):
            self._deadline.cancel()
            self._deadline = None

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is None:
            return  # refused: aiohttp never saw it
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._site.release(self._peer)
        self._peer = None
        self._inner.connection_lost(exc)

    def _head_overdue(self) -> None:
        self._deadline = None
        if not _has_request(self._inner):
            log.debug("callback listener: closing a connection from %s that sent no request "
                      "head within %g s", self._peer, HEAD_SECONDS)
            self._inner.force_close()


def _has_request(handler) -> bool:
    """Whether aiohttp parsed a request head (or refused one as malformed) on the connection."""
    # aiohttp counts them in a private attribute, with no public accessor; if it goes, this
    # fails loudly, and tests/test_callback_listener.py with it.
    return handler._request_count > 0
