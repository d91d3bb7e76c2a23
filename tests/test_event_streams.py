"""Live event streams at scale: one read of the database per tick for every stream, and caps.

Real app, real HTTP, real Docker. The database work is observed by wrapping the app's own
Store.run (an observation: every query still runs) and counting calls per query name.
"""
import asyncio
import collections
import json

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from schemathesis.checks import not_a_server_error

import bot.feed
from bot.app import create_app
from bot.auth import SESSION_COOKIE
from bot.keys import feed_key, store_key, worker_key
from tests.conftest import (TEST_INSTANCES, instance_of, results_of, speed_config, wait_finished,
                            wait_for)
from tests.test_browser import browser, expect, tab  # noqa: F401 - fixtures for the page test
from tests.test_openapi import CHECKS, EVENTS, document_of, schema_of

STREAMS = 40
TICKS = 8
# What a stream's database work used to be (per stream, per poll), and what the feed does now.
STREAM_QUERIES = {"get", "results_after", "pending_ids", "rows", "results_of_many"}
TOKENS = ["client-a-token-of-enough-length", "client-b-token-of-enough-length",
          "client-c-token-of-enough-length"]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def start(client, url: str, headers: dict | None = None) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"}, headers=headers)
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def status_of(client, deployment_id: int) -> str:
    return (await (await client.get(f"/info/{deployment_id}")).json())["status"]


class Stream:
    """One event stream, read in the background: its events as they arrive."""

    def __init__(self, response):
        assert response.status == 200, response.status
        assert response.headers["Content-Type"] == "text/event-stream"
        self.response = response
        self.events: list[tuple[str, object, int | None]] = []
        self.reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            await self._parse()
        except aiohttp.ClientError:
            self.events.append(("broken", None, None))  # the server hung up: never an `end`

    async def _parse(self) -> None:
        kind, data, event_id = None, None, None
        async for raw in self.response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                event_id = int(line.removeprefix("id: "))
            elif line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
            elif not line and kind:
                self.events.append((kind, data, event_id))
                kind, data, event_id = None, None, None

    @property
    def logs(self) -> list[tuple[int, str]]:
        return [(event_id, data) for kind, data, event_id in self.events if kind == "log"]

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.logs)

    @property
    def ended(self) -> dict | None:
        return self.events[-1][1] if self.events and self.events[-1][0] == "end" else None

    async def finished(self, timeout: float = 60) -> "Stream":
        await asyncio.wait_for(self.reading, timeout)
        return self

    def close(self) -> None:
        """Hang up, as a browser closing its tab does."""
        self.reading.cancel()
        self.response.close()


async def open_stream(client, deployment_id: int, headers: dict | None = None,
                      after: int | None = None) -> Stream:
    query = f"?after={after}" if after is not None else ""
    return Stream(await client.get(f"/deployments/{deployment_id}/events{query}",
                                   headers=headers))


def count_queries(client) -> list[tuple[str, int]]:
    """Every query the app's store runs from now on, as (name, the feed's tick when it ran)."""
    store, feed = client.app[store_key], client.app[feed_key]
    calls: list[tuple[str, int]] = []
    run = store.run

    async def counted(query, *args, **kwargs):
        calls.append((getattr(query, "__name__", "?"), feed.ticks))
        return await run(query, *args, **kwargs)

    store.run = counted
    return calls


async def stream_queries_over_ticks(client, calls: list[tuple[str, int]]) -> dict[str, int]:
    """The stream queries made during the next TICKS whole ticks of the feed, by name."""
    feed = client.app[feed_key]
    first = feed.ticks + 1  # the tick now running may have begun before counting did

    async def done():
        return feed.ticks >= first + TICKS

    await wait_for(done, timeout=30)
    return dict(collections.Counter(name for name, tick in calls
                                    if first <= tick < first + TICKS and name in STREAM_QUERIES))


async def test_many_streams_get_every_line_once_in_order_for_the_same_queries_as_one(
        make_client, repo, monkeypatch):
    """40 streams on one running deployment: each gets every log line once, in order, then
    `end`; over 8 ticks the database sees the same one read of rows and one of results per tick
    with 40 streams as with 1 (each stream used to poll on its own: 40 x 2 x 8 = 640 queries)."""
    monkeypatch.setattr(bot.feed, "MAX_PER_CLIENT", STREAMS)
    client = await make_client()
    calls = count_queries(client)
    url, _ = repo('i=0\nwhile true; do i=$((i+1)); echo "line-$i"; sleep 0.05; done\n')
    deployment_id = await start(client, url)
    streams = [await open_stream(client, deployment_id)]

    async def printing():
        return all("line-" in s.text for s in streams)

    await wait_for(printing)
    alone = await stream_queries_over_ticks(client, calls)
    streams += [await open_stream(client, deployment_id) for _ in range(STREAMS - 1)]
    await wait_for(printing)
    together = await stream_queries_over_ticks(client, calls)
    assert await status_of(client, deployment_id) == "Running", "measured while it printed"

    response = await client.post("/update", json={"id": deployment_id,
                                                  "new_results": "Succeeded"})
    assert response.status == 200
    for stream in streams:
        await stream.finished()
    print(f"stream queries over {TICKS} ticks: 1 stream {alone}, {STREAMS} streams {together}")
    for counted in (alone, together):
        assert set(counted) <= {"rows", "results_of_many"}, counted  # nothing per stream
        assert 1 <= counted.get("rows", 0) <= TICKS and counted.get("results_of_many", 0) <= TICKS
    # Stopping the container lets its last output be stored after the final status, so a stream
    # may end before or after that; `end` comes once everything stored with the status (its
    # note) was sent.
    stored = await results_of(client, deployment_id)
    for stream in streams:
        ids = [result_id for result_id, _ in stream.logs]
        assert ids == sorted(set(ids)), "each result once, in order"
        assert stored.startswith(stream.text), "no result skipped"
        assert "line-1\nline-2\n" in stream.text
        assert "[speed] status set to Succeeded through /update\n" in stream.text
        assert stream.ended == {"status": "Succeeded"}


class ServedAsInProduction(TestServer):
    """The app served as web.run_app serves it: a handler is not cancelled when its client hangs
    up (aiohttp's test server cancels it), so a stream must notice by itself."""

    async def _make_runner(self, **kwargs):
        return web.AppRunner(self.app, **{**kwargs, "handler_cancellation": False})


@pytest.fixture
async def two_deployments(aiohttp_client, tmp_path, docker_client, base_image, speed_clients,
                          repo, monkeypatch):
    """SPEED with three API tokens (three clients), caps of 2 per client and 3 in all, and two
    unfinished deployments: one running, one queued behind it."""
    monkeypatch.setattr(bot.feed, "MAX_PER_CLIENT", 2)
    monkeypatch.setattr(bot.feed, "MAX_STREAMS", 3)
    config = speed_config(tmp_path, auth__api_tokens=TOKENS, runner__max_concurrent=1)
    client = await aiohttp_client(ServedAsInProduction(create_app(config)))
    TEST_INSTANCES.add(instance_of(client))
    speed_clients.append(client)
    url, _ = repo("echo up\nsleep 600\n")
    running = await start(client, url, bearer(TOKENS[0]))
    queued = await start(client, url, bearer(TOKENS[0]))

    async def settled():
        """Its container runs: its status stays as it is, so nothing is written to its streams."""
        response = await client.get(f"/results/{running}", headers=bearer(TOKENS[0]))
        return "up\n" in (await response.json())["results"]

    await wait_for(settled)
    client.ids = running, queued
    yield client
    for deployment_id in (queued, running):
        await client.post(f"/cancel/{deployment_id}", headers=bearer(TOKENS[0]))


async def refusal(client, deployment_id: int, token: str):
    """A stream the caps refuse, checked against the OpenAPI document schemathesis runs from:
    status, headers and body as documented (a 503 is documented, though it is a "server error")."""
    schema = schema_of(await document_of(client), str(client.make_url("")))
    case = schema[EVENTS]["GET"].Case(path_parameters={"id": deployment_id})

    def call():
        response = case.call(headers=bearer(token), timeout=10)
        case.validate_response(response, checks=[c for c in CHECKS if c is not not_a_server_error])
        return response

    return await asyncio.to_thread(call)


async def test_streams_are_capped_per_client_and_in_total_and_closing_frees_a_slot(
        two_deployments):
    client = two_deployments
    running, queued = client.ids
    a, b, c = TOKENS
    a_streams = [await open_stream(client, running, bearer(a)) for _ in range(2)]
    too_many = await refusal(client, running, a)
    assert too_many.status_code == 429
    assert "this client" in too_many.json()["error"]
    assert int(too_many.headers["retry-after"][0]) > 0
    b_stream = await open_stream(client, queued, bearer(b))  # another client: room in total
    full = await refusal(client, running, c)
    assert full.status_code == 503
    assert "Too many live streams" in full.json()["error"]
    assert int(full.headers["retry-after"][0]) > 0

    async def opens(token: str, deployment_id: int):
        """A stream, once the caps let one open; None (and nothing held) until then."""
        response = await client.get(f"/deployments/{deployment_id}/events",
                                    headers=bearer(token))
        if response.status == 200:
            return Stream(response)
        assert response.status in (429, 503), response.status
        response.release()
        return None

    # A client that hangs up frees its slot within a tick or so, not at its next keep-alive.
    a_streams.pop().close()
    c_stream = await wait_for(lambda: opens(c, running), timeout=5)
    assert (await opens(c, running)) is None  # the total again
    # A stream that ends frees its slot: the queued deployment is cancelled, its stream ends.
    assert (await client.post(f"/cancel/{queued}", headers=bearer(a))).status == 200
    assert (await b_stream.finished()).ended == {"status": "Cancelled"}
    second_c = await wait_for(lambda: opens(c, running), timeout=5)

    async def fed():
        return all(s.events and s.events[0][0] == "status" for s in (c_stream, second_c))

    await wait_for(fed)
    for stream in (*a_streams, c_stream, second_c):
        stream.close()


async def test_only_a_valid_token_or_session_names_a_client(make_client, repo, monkeypatch):
    """Attack: with public reads, each stream sends another made-up bearer token or session
    cookie to escape the per-client cap. Asserts: made-up ones all count as the address; a real
    API token and a real login session are each a client of their own, capped alike."""
    monkeypatch.setattr(bot.feed, "MAX_PER_CLIENT", 2)
    client = await make_client(auth__api_tokens=TOKENS, auth__public_reads=True)
    url, _ = repo("echo up\nsleep 600\n")
    deployment_id = await start(client, url, bearer(TOKENS[0]))
    login = await client.post("/login", data={"token": TOKENS[1]}, allow_redirects=False)
    assert login.status == 303
    session = {"Cookie": f"{SESSION_COOKIE}={login.cookies[SESSION_COOKIE].value}"}
    client.session.cookie_jar.clear()  # sent only where a test says so

    async def answer(headers: dict) -> int:
        response = await client.get(f"/deployments/{deployment_id}/events", headers=headers)
        if response.status == 200:
            streams.append(Stream(response))
        else:
            response.release()
        return response.status

    streams: list[Stream] = []
    made_up = [bearer(f"made-up-{n}-of-enough-length") for n in range(3)]
    assert [await answer(headers) for headers in made_up] == [200, 200, 429]
    assert await answer({"Cookie": f"{SESSION_COOKIE}=made-up-session"}) == 429
    assert [await answer(session) for _ in range(3)] == [200, 200, 429]
    assert await answer(bearer(TOKENS[2])) == 200
    for stream in streams:
        stream.close()
    await client.post(f"/cancel/{deployment_id}", headers=bearer(TOKENS[0]))


async def test_a_stream_resumes_after_the_last_event_id(client, repo):
    url, _ = repo('for i in $(seq 1 40); do echo "line-$i"; sleep 0.05; done\n')
    deployment_id = await start(client, url)
    first = await open_stream(client, deployment_id)

    async def some_lines():
        return first.text.count("line-") >= 3

    await wait_for(some_lines)
    first.close()
    last_id = first.logs[-1][0]
    resumed = Stream(await client.get(f"/deployments/{deployment_id}/events?after=0",
                                      headers={"Last-Event-ID": str(last_id)}))
    await resumed.finished()
    ids = [result_id for result_id, _ in first.logs + resumed.logs]
    assert ids == sorted(set(ids)), "each result once, in order, across the reconnection"
    assert first.text + resumed.text == await results_of(client, deployment_id)
    assert "line-40\n" in resumed.text and resumed.ended == {"status": "Succeeded"}


async def test_a_finished_deployments_stream_sends_its_backlog_and_end_at_once(
        client, repo, monkeypatch):
    """With batches of one result and ticks a minute apart, the whole log and `end` still come
    at once: a stream catching up is read for again as soon as it wrote its batch."""
    monkeypatch.setattr(bot.feed, "BATCH", 1)
    monkeypatch.setattr(bot.feed, "TICK_SECONDS", 60)
    url, _ = repo("echo one\necho two\necho three\n")
    deployment_id = await start(client, url)
    await wait_finished(client, deployment_id)

    async def idle():
        return not client.app[worker_key].runs  # nothing more will be stored

    await wait_for(idle)
    stream = await (await open_stream(client, deployment_id)).finished(timeout=10)
    assert stream.text == await results_of(client, deployment_id)
    assert len(stream.logs) >= 3, "several batches were needed"
    assert [kind for kind, _, _ in stream.events].count("status") == 1
    assert stream.events[0][0] == "status" and stream.ended == {"status": "Succeeded"}


async def test_a_page_whose_stream_is_refused_says_so(client, repo, tab, monkeypatch):
    """A browser's EventSource does not retry a 429: the page says the log is not live."""
    monkeypatch.setattr(bot.feed, "MAX_PER_CLIENT", 0)
    url, _ = repo("sleep 600\n")
    deployment_id = await start(client, url)
    await tab.goto(str(client.make_url(f"/deployments/{deployment_id}")))
    await expect(tab.locator("#message")).to_contain_text("live log was refused")
    await expect(tab.locator("#live")).to_be_hidden()
    await client.post(f"/cancel/{deployment_id}")
