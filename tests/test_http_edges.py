"""HTTP below the routes: the Server header, parser errors, clients that leave or stall."""
import asyncio
import json
import logging
import time

import pytest

import bot.requests
from tests.conftest import free_port, speed_config, wait_for
from tests.rawhttp import exchange, parse, request
from tests.serving import serving

CANARY = "canary-7f3a"
START = b'{"url": "http://127.0.0.1:9/none.git", "branch": "main"}'


@pytest.mark.parametrize("method, path, host, status", [
    ("GET", "/healthz", "127.0.0.1", 200),
    ("GET", "/no-such-page", "127.0.0.1", 404),
    ("DELETE", "/start", "127.0.0.1", 405),
    ("POST", "/start", "127.0.0.1", 400),
    ("GET", "/healthz", "evil.example", 421),
])
async def test_server_header_names_speed_without_versions(client, method, path, host, status):
    """Reconnaissance: the Server header told Python's and aiohttp's versions."""
    answer, headers, _ = await exchange(client.host, client.port, request(method, path, host))
    assert answer == status or (status == 200 and answer == 503)
    assert headers["server"] == "SPEED"


@pytest.mark.parametrize("raw", [
    # A header line over aiohttp's 8190-byte limit.
    f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: {CANARY * 1000}\r\n\r\n",
    # A request line that is not HTTP.
    f"{CANARY} <script>alert(1)</script>\r\n\r\n",
    f"GET /{CANARY} HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    # Header names with spaces or control characters, a bad Content-Length.
    f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad {CANARY}: x\r\n\r\n",
    f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-{CANARY}\x01: x\r\n\r\n",
    f"POST /start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {CANARY}\r\n\r\n",
], ids=["long header", "garbage request line", "bad version", "space in name",
        "control character", "bad content-length"])
async def test_malformed_requests_get_json_that_echoes_nothing(client, raw):
    """Attack: malformed bytes that aiohttp's parser refuses before any middleware runs.
    Asserts: a JSON 400 {"error": ...} with SPEED's Server header, quoting none of the input."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(raw.encode("latin-1"))
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status, headers, body = parse(answer)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert headers["server"] == "SPEED"
    assert list(json.loads(body)) == ["error"]
    assert CANARY.encode() not in answer and b"script" not in answer


@pytest.fixture
async def served(tmp_path, docker_client):
    """SPEED served as main.py serves it: the test client's server cancels a handler whose client
    leaves, where run_app's lets it run on into the closed connection."""
    port = free_port()
    async with serving(speed_config(tmp_path), "127.0.0.1", port):
        yield "127.0.0.1", port


async def test_a_client_leaving_mid_body_is_not_logged_as_an_error(served, caplog):
    """A client that declares 1000 bytes, sends 10 and hangs up is routine, not SPEED's fault:
    no ERROR record, no traceback."""
    caplog.set_level(logging.DEBUG)
    host, port = served
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n" + START[:10])
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is now waiting for the rest
    writer.close()

    async def noted():
        return any("went away" in r.getMessage() for r in caplog.records)

    await wait_for(noted, timeout=10)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == []
    _, _, body = await exchange(host, port, request("GET", "/deployments", "127.0.0.1"))
    assert json.loads(body)["deployments"] == []


@pytest.mark.parametrize("path, content_type, sent", [
    ("/start", "application/json", START[:10]),
    ("/webhook", "application/json", START[:10]),
    # The sign-in form was read with request.post(), which has no deadline.
    ("/login", "application/x-www-form-urlencoded", b"token=x"),
])
async def test_a_body_that_never_finishes_gets_408(client, monkeypatch, path, content_type, sent):
    """Attack (slow body): Content-Length 100, a few bytes, then nothing while the socket stays
    open. Asserts: a JSON 408 within the (lowered) deadline, the connection to be closed, and
    nothing created."""
    monkeypatch.setattr(bot.requests, "BODY_SECONDS", 1.0)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    began = time.monotonic()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                 "X-GitHub-Event: ping\r\nX-GitHub-Delivery: 1\r\n"
                 "Content-Length: 100\r\n\r\n".encode() + sent)
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        elapsed = time.monotonic() - began
        status, headers, _ = parse(head)
        body = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
    assert status == 408
    assert 0.9 <= elapsed < 3
    assert headers["connection"].lower() == "close"
    assert "did not arrive" in json.loads(body)["error"]
    assert (await (await client.get("/deployments")).json())["deployments"] == []
