"""runner/proxy.py against a real Caddy (tests/caddy.py), with real HTTP upstreams on 127.0.0.1."""
import asyncio
import copy
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from runner.proxy import NOT_FOUND, Proxy, ProxyError, ProxyUnavailable
from tests.conftest import free_port, wait_for


class Upstream:
    """An HTTP server answering with its name and the Host asked for; /slow waits for release."""

    def __init__(self, name: str):
        self.name = name
        self.address = ""
        self.release = asyncio.Event()
        self.slow = 0  # /slow requests that arrived
        self.connections: set = set()  # the proxy's connections (peer addresses) it served
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> "Upstream":
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.address = "127.0.0.1:%d" % self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self.release.set()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.connections.add(request.transport.get_extra_info("peername"))
        if request.path == "/slow":
            self.slow += 1
            await self.release.wait()
        return web.Response(text=f"{self.name} {request.host}")


@pytest.fixture
async def upstreams():
    """Start named upstreams: `a, b = await upstreams("a", "b")`."""
    started: list[Upstream] = []

    async def start(*names: str) -> list[Upstream]:
        new = [await Upstream(name).start() for name in names]
        started.extend(new)
        return new

    yield start
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def proxy(caddy):
    """A Proxy on the worker's Caddy, which starts each test with only its admin config."""
    caddy.reset()
    proxy = Proxy(caddy.admin, caddy.listen)
    yield proxy
    await proxy.close()


@pytest.fixture
async def fetch(caddy):
    """GET through the proxy with a Host header: (status, body)."""
    # A fresh connection each time, so each request meets the config Caddy has now.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async def get(host: str, path: str = "/") -> tuple[int, str]:
            async with session.get(f"http://{caddy.listen}{path}", headers={"Host": host},
                                   timeout=aiohttp.ClientTimeout(total=10)) as response:
                return response.status, await response.text()

        yield get


def without_ours(config: dict, server: str = "speed") -> dict:
    """Caddy's config without SPEED's server."""
    config = copy.deepcopy(config)
    servers = config.get("apps", {}).get("http", {}).get("servers", {})
    servers.pop(server, None)
    return config


async def test_set_routes_sends_each_host_to_its_upstream(proxy, upstreams, fetch):
    a, b = await upstreams("a", "b")
    await proxy.set_routes({"a.app.localhost": a.address, "b.app.localhost": b.address})
    assert await fetch("a.app.localhost") == (200, "a a.app.localhost")
    assert await fetch("b.app.localhost") == (200, "b b.app.localhost")
    assert await fetch("A.App.Localhost:8000") == (200, "a A.App.Localhost:8000")  # Host as sent
    assert await proxy.routes() == {"a.app.localhost": a.address, "b.app.localhost": b.address}


async def test_a_host_without_a_route_is_a_clear_404(proxy, upstreams, fetch):
    await proxy.set_routes({})
    assert await fetch("a.app.localhost") == (404, NOT_FOUND)
    (a,) = await upstreams("a")
    await proxy.set_routes({"a.app.localhost": a.address})
    assert await fetch("x.app.localhost") == (404, NOT_FOUND)
    assert await fetch("a.app.localhost.evil") == (404, NOT_FOUND)  # exact match, not a prefix
    assert a.requests == 0


async def test_route_switches_one_host_and_leaves_the_others(proxy, upstreams, fetch):
    a, b, c = await upstreams("a", "b", "c")
    await proxy.set_routes({"a.app.localhost": a.address, "b.app.localhost": b.address})
    await proxy.route("a.app.localhost", c.address)
    assert await fetch("a.app.localhost") == (200, "c a.app.localhost")
    assert await fetch("b.app.localhost") == (200, "b b.app.localhost")
    await proxy.route("New.App.Localhost", a.address)  # a new host: added, lowercased
    assert await fetch("new.app.localhost") == (200, "a new.app.localhost")
    assert await proxy.routes() == {"a.app.localhost": c.address, "b.app.localhost": b.address,
                                    "new.app.localhost": a.address}


async def test_route_creates_the_server_when_it_is_absent(proxy, upstreams, fetch):
    (a,) = await upstreams("a")
    assert await proxy.routes() is None
    await proxy.route("a.app.localhost", a.address)
    assert await proxy.routes() == {"a.app.localhost": a.address}
    assert await fetch("a.app.localhost") == (200, "a a.app.localhost")


async def test_remove(proxy, upstreams, fetch):
    a, b = await upstreams("a", "b")
    await proxy.remove("a.app.localhost")  # no server yet: nothing to do, and nothing created
    assert await proxy.routes() is None
    await proxy.set_routes({"a.app.localhost": a.address, "b.app.localhost": b.address})
    await proxy.remove("A.app.localhost")
    assert await fetch("a.app.localhost") == (404, NOT_FOUND)
    assert await fetch("b.app.localhost") == (200, "b b.app.localhost")
    await proxy.remove("a.app.localhost")  # absent: no error
    assert await proxy.routes() == {"b.app.localhost": b.address}


# Starting points where the objects above SPEED's server do not exist yet.
USER_APPS = [
    {},
    {"apps": {"tls": {"session_tickets": {"disabled": True}}}},
    {"apps": {"http": {"grace_period": "1m"}}},
    {"apps": {"http": {"grace_period": "1m", "servers": {}}}},
]


@pytest.mark.parametrize("start", USER_APPS)
@pytest.mark.parametrize("how", ["set_routes", "route"])
async def test_the_server_is_created_beside_what_is_there(caddy, proxy, upstreams, fetch,
                                                          start, how):
    caddy.request("POST", "/load", {**caddy.initial, **start})
    before = caddy.config()
    (a,) = await upstreams("a")
    if how == "set_routes":
        await proxy.set_routes({"a.app.localhost": a.address})
    else:
        await proxy.route("a.app.localhost", a.address)
    assert await fetch("a.app.localhost") == (200, "a a.app.localhost")
    after = caddy.config()
    expected = copy.deepcopy(before)  # and the objects that now hold SPEED's server
    expected.setdefault("apps", {}).setdefault("http", {}).setdefault("servers", {})
    assert without_ours(after) == expected
    assert after["apps"]["http"]["servers"]["speed"]["automatic_https"] == {"disable": True}


async def test_a_users_own_caddy_config_survives_everything(caddy, proxy, upstreams, fetch):
    user_port = free_port()
    user = {**caddy.initial, "apps": {
        "http": {"grace_period": "1m", "servers": {"user": {
            "listen": [f"127.0.0.1:{user_port}"],
            "routes": [{"@id": "users-route",
                        "handle": [{"handler": "static_response", "body": "the user's"}]}],
        }}},
        "tls": {"session_tickets": {"disabled": True}},
    }}
    caddy.request("POST", "/load", user)
    a, b = await upstreams("a", "b")
    steps = [
        proxy.set_routes({"a.app.localhost": a.address}),
        proxy.route("b.app.localhost", b.address),
        proxy.route("a.app.localhost", b.address),
        proxy.remove("a.app.localhost"),
        proxy.set_routes({}),
    ]
    async with aiohttp.ClientSession() as session:
        for step in steps:
            await step
            assert without_ours(caddy.config()) == user
            async with session.get(f"http://127.0.0.1:{user_port}/") as response:
                assert (response.status, await response.text()) == (200, "the user's")
    assert await proxy.routes() == {}
    assert caddy.config("apps/http/servers/speed/listen") == [caddy.listen]


async def test_routes_is_none_after_caddy_restarts_empty_and_set_routes_restores(
        caddy, proxy, upstreams, fetch):
    (a,) = await upstreams("a")
    wanted = {"a.app.localhost": a.address}
    await proxy.set_routes(wanted)
    assert await proxy.routes() == wanted
    caddy.restart()
    assert await proxy.routes() is None
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch("a.app.localhost")  # nothing listens until SPEED puts its server back
    await proxy.set_routes(wanted)
    assert await proxy.routes() == wanted
    assert await fetch("a.app.localhost") == (200, "a a.app.localhost")


async def test_proxies_writing_at_once_lose_none_of_each_others_routes(caddy, proxy):
    caddy.request("POST", "/load", {**caddy.initial, "apps": {"tls": {}}})
    others = [Proxy(caddy.admin, caddy.listen) for _ in range(5)]  # as other SPEED replicas
    try:
        # From nothing: each creates apps.http (or finds it made), none replaces another's.
        await asyncio.gather(*(other.route(f"h{i}.app.localhost", f"127.0.0.1:{1000 + i}")
                               for i, other in enumerate(others)))
        assert await proxy.routes() == {f"h{i}.app.localhost": f"127.0.0.1:{1000 + i}"
                                        for i in range(5)}
        await asyncio.gather(*(other.remove(f"h{i}.app.localhost")
                               for i, other in enumerate(others) if i % 2))
        assert await proxy.routes() == {f"h{i}.app.localhost": f"127.0.0.1:{1000 + i}"
                                        for i in (0, 2, 4)}
    finally:
        for other in others:
            await other.close()
    assert caddy.config("apps/tls") == {}


async def test_a_change_made_between_speeds_read_and_write_is_kept(caddy, proxy, monkeypatch):
    await proxy.set_routes({"a.app.localhost": "127.0.0.1:1"})
    read, reads = proxy._deepest, []

    async def read_then_someone_writes():
        found = await read()
        reads.append(found)
        if len(reads) == 1:
            # Another replica adds a route after SPEED read the server, before SPEED writes it.
            other = Proxy(caddy.admin, caddy.listen)
            await other.route("b.app.localhost", "127.0.0.1:2")
            await other.close()
        return found

    monkeypatch.setattr(proxy, "_deepest", read_then_someone_writes)
    await proxy.route("c.app.localhost", "127.0.0.1:3")
    assert await proxy.routes() == {"a.app.localhost": "127.0.0.1:1",
                                    "b.app.localhost": "127.0.0.1:2",
                                    "c.app.localhost": "127.0.0.1:3"}
    assert len(reads) == 2  # Caddy refused the write made on the first read


async def test_a_server_not_as_speed_would_make_it_reads_as_absent(caddy, proxy, fetch):
    await proxy.set_routes({"a.app.localhost": "127.0.0.1:1"})
    moved = Proxy(caddy.admin, f"127.0.0.1:{free_port()}")  # SPEED restarted with a new listen
    try:
        assert await moved.routes() is None
        await moved.set_routes({"a.app.localhost": "127.0.0.1:1"})
        assert await moved.routes() == {"a.app.localhost": "127.0.0.1:1"}
    finally:
        await moved.close()
    assert await proxy.routes() is None
    await proxy.set_routes({"a.app.localhost": "127.0.0.1:1"})
    assert await proxy.routes() == {"a.app.localhost": "127.0.0.1:1"}
    # Someone edits SPEED's server behind its back: the 404 route goes.
    caddy.request("DELETE", "/config/apps/http/servers/speed/routes/1")
    assert await proxy.routes() is None


BAD_HOSTS = ["", "a..localhost", "-a.localhost", "a-.localhost", "a_b.localhost", "a b.localhost",
             "a.localhost/x", "a.localhost:80", "*.localhost", "a.localhost.", "é.localhost",
             "127.0.0.1", "x" * 64 + ".localhost", ".".join(["abcdefg"] * 32), None, 5]
BAD_UPSTREAMS = ["", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x",
                 "127.0.0.1:+80", ":8080", "[::1:8080", "::1:8080", "[fe80::1%eth0]:80",
                 "a b:80", "http://127.0.0.1:80", "127.0.0.1:80/x", "-a:80", None]


@pytest.mark.parametrize("host", BAD_HOSTS)
async def test_a_bad_host_is_refused_and_nothing_changes(caddy, proxy, upstreams, host):
    (a,) = await upstreams("a")
    await proxy.set_routes({"a.app.localhost": a.address})
    before = caddy.config()
    for call in (proxy.route(host, a.address), proxy.remove(host),
                 proxy.set_routes({"b.app.localhost": a.address, host: a.address})):
        with pytest.raises(ProxyError, match="^host: "):
            await call
    assert caddy.config() == before


@pytest.mark.parametrize("upstream", BAD_UPSTREAMS)
async def test_a_bad_upstream_is_refused_and_nothing_changes(caddy, proxy, upstreams, upstream):
    (a,) = await upstreams("a")
    await proxy.set_routes({"a.app.localhost": a.address})
    before = caddy.config()
    for call in (proxy.route("a.app.localhost", upstream),
                 proxy.set_routes({"b.app.localhost": a.address, "c.app.localhost": upstream})):
        with pytest.raises(ProxyError, match="^upstream: "):
            await call
    assert caddy.config() == before


async def test_a_host_given_twice_is_refused(proxy):
    with pytest.raises(ProxyError, match="listed twice"):
        await proxy.set_routes({"a.localhost": "127.0.0.1:1", "A.localhost": "127.0.0.1:2"})
    assert await proxy.routes() is None


@pytest.mark.parametrize("upstream", ["127.0.0.1:8080", "[::1]:8080", "app-1.internal:80"])
async def test_good_upstreams_are_taken(proxy, upstream):
    await proxy.route("a.app.localhost", upstream)
    assert await proxy.routes() == {"a.app.localhost": upstream}


@pytest.mark.parametrize("admin", ["localhost:2019", "ftp://localhost:2019", "http://",
                                   "http://localhost:99999", "http://localhost:2019/config",
                                   "http://u@localhost:2019"])
def test_a_bad_admin_address_is_refused(admin):
    with pytest.raises(ProxyError, match="^proxy admin: "):
        Proxy(admin, "127.0.0.1:8000")


@pytest.mark.parametrize("listen", ["8000", "127.0.0.1", "127.0.0.1:0", "localhost:x"])
def test_a_bad_listen_address_is_refused(listen):
    with pytest.raises(ProxyError, match="^proxy listen: "):
        Proxy("http://localhost:2019", listen)


async def test_caddys_refusal_is_a_proxy_error_with_its_words_and_changes_nothing(caddy, proxy):
    await proxy.set_routes({"a.app.localhost": "127.0.0.1:1"})
    before = caddy.config()
    with socket.socket() as taken:  # the port SPEED's server should listen on is someone else's
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        elsewhere = Proxy(caddy.admin, "127.0.0.1:%d" % taken.getsockname()[1])
        try:
            with pytest.raises(ProxyError) as caught:
                await elsewhere.set_routes({"a.app.localhost": "127.0.0.1:2"})
        finally:
            await elsewhere.close()
    assert not isinstance(caught.value, ProxyUnavailable)
    assert "address already in use" in caught.value.message
    assert caddy.config() == before  # Caddy keeps the config it ran
    assert await proxy.routes() == {"a.app.localhost": "127.0.0.1:1"}


async def test_caddy_down_is_proxy_unavailable():
    proxy = Proxy(f"http://127.0.0.1:{free_port()}", "127.0.0.1:8000", timeout=0.2)
    try:
        for call in (proxy.ping(), proxy.routes(), proxy.set_routes({}),
                     proxy.route("a.localhost", "127.0.0.1:1"), proxy.remove("a.localhost")):
            with pytest.raises(ProxyUnavailable, match="does not answer"):
                await call
    finally:
        await proxy.close()


async def test_once_caddy_was_found_down_a_call_tries_once_until_it_answers_again(caddy):
    # Each call to a Caddy that is down kept reconnecting for a second: the router's watch made
    # ~50 connections every 2 s, most of an idle SPEED's CPU.
    accepted = 0

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.transport.abort()  # as Caddy's admin endpoint being replaced: a reset

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    proxy = Proxy(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", caddy.listen)
    try:
        counts = []
        for _ in range(3):
            before = accepted
            with pytest.raises(ProxyUnavailable):
                await proxy.routes()
            counts.append(accepted - before)
        # One request each (aiohttp itself sends a GET on a reset connection once more).
        assert counts[0] > 5 and counts[1] == counts[2] <= 2
        proxy.admin = caddy.admin  # it answers again: the next failure reconnects for a while
        assert await proxy.routes() is None
        proxy.admin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        before = accepted
        with pytest.raises(ProxyUnavailable):
            await proxy.routes()
        assert accepted - before > 5
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


async def test_an_admin_api_that_hangs_is_proxy_unavailable_after_the_timeout():
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        proxy = Proxy("http://127.0.0.1:%d" % silent.getsockname()[1], "127.0.0.1:8000",
                      timeout=0.3)
        try:
            began = time.monotonic()
            with pytest.raises(ProxyUnavailable, match="did not answer within 0.3 s"):
                await proxy.routes()
            assert time.monotonic() - began < 3
        finally:
            await proxy.close()


async def test_ping(caddy, proxy):
    await proxy.ping()
    await proxy.set_routes({})
    await proxy.ping()


async def test_a_switch_lets_a_request_in_flight_on_the_old_upstream_finish(
        proxy, upstreams, fetch):
    old, new = await upstreams("old", "new")
    await proxy.set_routes({"a.app.localhost": old.address})
    slow = asyncio.create_task(fetch("a.app.localhost", "/slow"))
    await wait_for(lambda: _true(old.slow == 1), timeout=10)
    await asyncio.wait_for(proxy.route("a.app.localhost", new.address), 10)
    assert not slow.done()  # the switch did not wait for it, nor cut it
    assert await fetch("a.app.localhost") == (200, "new a.app.localhost")
    old.release.set()
    assert await asyncio.wait_for(slow, 10) == (200, "old a.app.localhost")


async def test_a_client_hammering_the_proxy_during_switches_sees_no_errors(
        caddy, proxy, upstreams):
    a, b, other = await upstreams("a", "b", "other")
    await proxy.set_routes({"a.app.localhost": a.address, "o.app.localhost": other.address})
    seen: list = []
    stop = asyncio.Event()

    async def hammer(host: str) -> None:
        # One kept-alive connection, as a browser would hold it.
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.get(f"http://{caddy.listen}/", headers={"Host": host},
                                           timeout=aiohttp.ClientTimeout(total=10)) as response:
                        seen.append((host, response.status, await response.text()))
                except Exception as e:  # noqa: BLE001 - every failure is what the test counts
                    seen.append((host, "error", repr(e)))
                await asyncio.sleep(0.003)

    clients = [asyncio.create_task(hammer(host))
               for host in ["a.app.localhost"] * 3 + ["o.app.localhost"]]
    try:
        for i in range(20):
            target = b if i % 2 == 0 else a
            await proxy.route("a.app.localhost", target.address)
            mark = len(seen)
            # The hammering clients reach the new upstream, on their kept-alive connections.
            await wait_for(lambda: _true(sum(
                host == "a.app.localhost" and body.startswith(f"{target.name} ")
                for host, _, body in seen[mark:]) >= 6), timeout=10, interval=0.005)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    errors = [entry for entry in seen if entry[1] != 200]
    assert errors == []
    assert len(seen) >= 20 * 6
    assert {body for host, _, body in seen if host == "o.app.localhost"} == {
        "other o.app.localhost"}


async def test_admin_calls_carry_on_while_caddy_replaces_its_admin_endpoint(caddy, proxy):
    # Every config change makes Caddy start a new admin endpoint and stop the old one, which
    # resets connections it had accepted; watchers reading routes meanwhile must not fail.
    watchers = [Proxy(caddy.admin, caddy.listen) for _ in range(4)]
    changes, reads = 0, 0
    try:
        async def change() -> None:
            nonlocal changes
            for i in range(50):
                await proxy.route("a.app.localhost", f"127.0.0.1:{1000 + i}")
                changes += 1

        async def watch(watcher: Proxy) -> None:
            nonlocal reads
            while changes < 50:
                assert (await watcher.routes() or {}).keys() <= {"a.app.localhost"}
                reads += 1

        await asyncio.gather(change(), *(watch(watcher) for watcher in watchers))
    finally:
        for watcher in watchers:
            await watcher.close()
    assert reads > 50
    assert await proxy.routes() == {"a.app.localhost": "127.0.0.1:1049"}


async def test_the_proxy_keeps_its_connections_to_an_upstream_alive(caddy, proxy, upstreams):
    (a,) = await upstreams("a")
    await proxy.set_routes({"a.app.localhost": a.address})
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"http://{caddy.listen}/",
                                   headers={"Host": "a.app.localhost"}) as response:
                assert response.status == 200
                await response.read()
    assert a.requests == 100
    assert len(a.connections) <= 2  # one per request would cost a connect on every request


async def _true(value: bool) -> bool:
    return value
