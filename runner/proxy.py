"""The proxy in front of services: an adapter over Caddy's admin API that owns one Caddy server."""
import asyncio
import ipaddress
import json
import random
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from runner.errors import RunnerError

TIMEOUT = 5.0  # seconds an admin call may take before Caddy counts as not answering
RECONNECT_FOR = 1.0  # seconds a refused or reset admin call is sent again
NOT_FOUND = "no such environment\n"
# Rereads after Caddy said the server changed between SPEED's read and its write.
_ATTEMPTS = 10
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")
_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Caddy's words when a path goes through something that does not exist (GET says 400, writes 500).
_MISSING = "invalid traversal path"


class ProxyError(RunnerError):
    """The proxy refused a change, or was asked for one that cannot be right."""


class ProxyUnavailable(ProxyError):
    """Caddy's admin API does not answer."""


class _Missing(ProxyError):
    """A config path runs through an object that does not exist."""


class _Conflict(ProxyError):
    """Caddy's config changed between SPEED's read and its conditional write."""


def is_dns_name(name: str) -> bool:
    """Whether name is a host name: dot-separated labels of letters, digits and inner hyphens."""
    labels = name.lower().split(".")
    return (0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())  # an all-numeric last label is an IPv4 address


def is_address(address: str) -> bool:
    """Whether address is host:port: a host name, IPv4 or [IPv6] address, and a port 1-65535."""
    host, colon, port = address.rpartition(":")
    if not colon or not _PORT.fullmatch(port) or not 0 < int(port) <= 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if "%" in host:  # a zone would reach Caddy's dialer as text of ours
            return False
        try:
            ipaddress.IPv6Address(host)
            return True
        except ValueError:
            return False
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return is_dns_name(host)


def admin_url(url: str) -> str:
    """The admin API's base URL without a trailing slash; ValueError unless http://host[:port]."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not one
    except ValueError:
        raise ValueError(f"{url!r} is not a URL") from None
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// URL with a host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{url!r} must be only http://host:port (no path, query or user)")
    return f"http://{parts.netloc}"


def _fnv1a32(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


class Proxy:
    """SPEED's server in Caddy (apps.http.servers.<server>): a route per host, a 404 for others."""

    # Nothing else in Caddy's config is touched: every write goes to that server's path or, when
    # the objects above it do not exist yet, creates only those, on condition (If-Match) that
    # they still do not, so a change someone else makes at the same moment is never overwritten.
    def __init__(self, admin: str, listen: str, server: str = "speed", *,
                 timeout: float = TIMEOUT):
        try:
            self.admin = admin_url(admin)
        except ValueError as e:
            raise ProxyError(f"proxy admin: {e}") from None
        if not is_address(listen):
            raise ProxyError(f"proxy listen: {listen!r} is not host:port")
        if not _SERVER_NAME.fullmatch(server):
            raise ProxyError(f"proxy server: {server!r} is not a name of letters, digits, - and _")
        self.listen = listen
        self.server = server
        self.timeout = timeout
        self._segments = ("apps", "http", "servers", server)
        self._path = "/config/" + "/".join(self._segments)
        self._session: aiohttp.ClientSession | None = None
        # Whether the last call found nobody at the admin address: then a call tries once, not
        # for RECONNECT_FOR (the router's watch sent ~50 connects every 2 s at a Caddy that is
        # not running: most of an idle SPEED's CPU).
        self._away = False
        # SPEED's own writes one at a time; If-Match guards against everyone else's.
        self._lock = asyncio.Lock()

    async def ping(self) -> None:
        """Return if Caddy's admin API answers; ProxyUnavailable if not."""
        try:
            await self._call("GET", "/config/apps/http/servers")  # small, unlike the whole config
        except _Missing:
            pass  # Caddy answered: it has no HTTP servers yet

    async def routes(self) -> dict[str, str] | None:
        """host -> upstream as SPEED's server has them; None if absent or not as SPEED made it."""
        try:
            server, _ = await self._call("GET", self._path)
        except _Missing:
            return None
        found = _parse(server)
        # Anything but SPEED's own shape reads as absent, so the caller's rebuild repairs it.
        return found if server == self._server(found) else None

    async def set_routes(self, routes: Mapping[str, str]) -> None:
        """Make SPEED's server route exactly these hosts (one write); create it if absent."""
        server = self._server(_checked(routes))
        async with self._lock:
            try:
                await self._call("POST", self._path, server)  # POST sets an object or replaces it
            except _Missing:
                await self._update(lambda current: server)

    async def route(self, host: str, upstream: str) -> None:
        """Route host to upstream (one write, so a switch has no moment without a route)."""
        host, upstream = _check_host(host), _check_upstream(upstream)

        def change(current: dict[str, str] | None) -> dict[str, str] | None:
            if current is not None and current.get(host) == upstream:
                return None
            return {**(current or {}), host: upstream}

        async with self._lock:
            await self._update_routes(change)

    async def remove(self, host: str) -> None:
        """Stop routing host; nothing happens if it has no route."""
        host = _check_host(host)

        def change(current: dict[str, str] | None) -> dict[str, str] | None:
            if current is None or host not in current:
                return None
            return {name: upstream for name, upstream in current.items() if name != host}

        async with self._lock:
            await self._update_routes(change)

    async def close(self) -> None:
        """Close the HTTP session to the admin API."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _server(self, routes: Mapping[str, str]) -> dict:
        return {
            "listen": [self.listen],
            # Hosts like production.app.localhost on a plain port: without this Caddy would
            # serve them TLS with certificates of its own CA (and try to install that CA).
            "automatic_https": {"disable": True},
            # Sorted, so the same routes are the same config and Caddy skips the reload.
            "routes": [_route(host, routes[host]) for host in sorted(routes)] + [{
                "handle": [{"handler": "static_response", "status_code": 404,
                            "body": NOT_FOUND}],
            }],
        }

    async def _update_routes(self, change: Callable[[dict[str, str] | None], Any]) -> None:
        def server(current: Any) -> dict | None:
            routes = change(None if current is None else _parse(current))
            return None if routes is None else self._server(routes)

        await self._update(server)

    async def _update(self, change: Callable[[Any], dict | None]) -> None:
        """Write change(SPEED's server) unless None, if nothing changed the server meanwhile."""
        # The objects above the server are created when absent; reads and writes repeat when
        # another writer got in between.
        for attempt in range(_ATTEMPTS):
            depth, value, etag = await self._deepest()
            server = change(value if depth == len(self._segments) else None)
            if server is None:
                return
            if depth < len(self._segments) and value is not None:
                if isinstance(value, dict):
                    await _back_off(attempt)  # made by someone else since the deeper read
                    continue
                where = ".".join(self._segments[:depth])
                raise ProxyError(f"Caddy's config has {where} that is not an object; "
                                 "SPEED will not replace it")
            for segment in reversed(self._segments[depth:]):
                server = {segment: server}
            try:
                # POST with If-Match: sets the path only if it still reads as it did.
                await self._call("POST", self._level(depth), server, if_match=etag)
                return
            except (_Conflict, _Missing):
                await _back_off(attempt)  # someone changed the config meanwhile: read it again
        raise ProxyError(f"Caddy's config kept changing while SPEED wrote {self._path}; "
                         "try again")

    def _level(self, depth: int) -> str:
        return "/config/" + "/".join(self._segments[:depth])

    async def _deepest(self) -> tuple[int, Any, str]:
        """(depth, value, etag) of the deepest existing path towards SPEED's server."""
        # Depth 4 is the server itself (value None when absent), 0 Caddy's whole config.
        for depth in range(len(self._segments), -1, -1):
            try:
                value, etag = await self._call("GET", self._level(depth))
                return depth, value, etag
            except _Missing:
                continue
        raise ProxyError("Caddy's admin API cannot read its own config")  # pragma: no cover

    async def _call(self, method: str, path: str, body: Any = None, *,
                    if_match: str | None = None) -> tuple[Any, str]:
        """One admin API call: (decoded JSON answer, its ETag); errors as ProxyError kinds."""
        if self._session is None:
            # A connection per call: calls are rare, and a kept one goes stale when Caddy restarts
            # (a POST on it would fail, not be retried). trust_env stays off: an HTTP_PROXY
            # setting must not carry admin calls elsewhere.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {"If-Match": if_match} if if_match else {}
        loop = asyncio.get_running_loop()
        reconnect_until = loop.time() + (0 if self._away else min(RECONNECT_FOR, self.timeout))
        while True:
            try:
                async with self._session.request(method, self.admin + path, headers=headers,
                                                 json=body) as response:
                    raw = await response.read()
                    status, etag = response.status, response.headers.get("ETag")
                self._away = False
                break
            except asyncio.TimeoutError:
                raise ProxyUnavailable(f"Caddy's admin API at {self.admin} did not answer "
                                       f"within {self.timeout:g} s") from None
            except aiohttp.ClientConnectionError as e:
                # Caddy replaces its admin endpoint on every config change and resets what
                # the old one had accepted. Sending again is safe: every write SPEED makes is
                # idempotent or conditional (If-Match).
                if loop.time() < reconnect_until:
                    await asyncio.sleep(0.02)
                    continue
                self._away = True
                raise ProxyUnavailable(f"Caddy's admin API at {self.admin} does not answer: "
                                       f"{e}") from None
            except aiohttp.ClientError as e:
                raise ProxyError(f"Caddy's admin API at {self.admin} failed: {e}") from None
        text = raw.decode("utf-8", "replace")
        if status >= 400:
            try:
                error = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                error = text.strip() or "(no message)"
            kind = (_Conflict if status == 412 else _Missing if _MISSING in str(error)
                    else ProxyError)
            raise kind(f"Caddy refused {method} {path} ({status}): {error}", log=text)
        # Caddy 2.6 sends a config's ETag only as an HTTP trailer, which aiohttp drops; it is
        # "<path> <FNV-1a 32 of the answer's bytes>", so it is made here from the same bytes.
        etag = etag or f'"{path} {_fnv1a32(raw):08x}"'
        try:
            return (json.loads(raw) if raw.strip() else None), etag
        except ValueError:
            raise ProxyError(f"Caddy's admin API answered {method} {path} with something that "
                             "is not JSON", log=text) from None


async def _back_off(attempt: int) -> None:
    # Random, so writers that collided once (other SPEED replicas) do not collide again.
    await asyncio.sleep(random.uniform(0, 0.01 * (attempt + 1)))


def _route(host: str, upstream: str) -> dict:
    return {
        "match": [{"host": [host]}],
        # Caddy's default transport keeps connections to the upstream alive between requests.
        "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": upstream}]}],
        "terminal": True,
    }


def _parse(server: Any) -> dict[str, str]:
    """host -> upstream from a server's routes; routes of another shape (the 404) are skipped."""
    found: dict[str, str] = {}
    routes = server.get("routes") if isinstance(server, dict) else None
    for route in routes if isinstance(routes, list) else []:
        try:
            (match,), (handle,) = route["match"], route["handle"]
            (host,), (upstream,) = match["host"], handle["upstreams"]
            if handle["handler"] == "reverse_proxy" and len(match) == 1:
                found[host] = upstream["dial"]
        except (KeyError, TypeError, ValueError):
            continue
    return found


def _check_host(host: Any) -> str:
    if not isinstance(host, str) or not is_dns_name(host):
        raise ProxyError(f"host: {host!r} is not a DNS name")
    return host.lower()  # Caddy matches hosts case-insensitively; one spelling per host


def _check_upstream(upstream: Any) -> str:
    if not isinstance(upstream, str) or not is_address(upstream):
        raise ProxyError(f"upstream: {upstream!r} is not host:port")
    return upstream


def _checked(routes: Mapping[str, str]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for host, upstream in routes.items():
        name = _check_host(host)
        if name in checked:
            raise ProxyError(f"host: {host!r} is listed twice")
        checked[name] = _check_upstream(upstream)
    return checked
