"""The REST API keeps its contract: every endpoint's answers and error shapes, on a real app."""
import asyncio
import json

import pytest

from bot.requests import MAX_BODY
from tests.conftest import results_of, wait_finished, wait_for

CLOSED = "http://127.0.0.1:9/none.git"  # allowed, but nothing listens: the clone fails at once
TOKEN = "a-token-of-16-chars-or-more"
STATUSES = {"Pending", "Running", "Succeeded", "Failed", "Cancelled"}
FIELDS = {"id", "repo_name", "repo_branch", "repo_full_name", "status", "commit", "trigger", "progress", "reason",
          "exit_code", "created_at", "started_at", "finished_at", "phases", "waiting_reason",
          "settings", "environment", "pull_request", "environment_url"}
# Path ids that can name no deployment: each must be a JSON 404, never a 500.
BAD_IDS = ["1", "0", "-1", "9223372036854775808", "99999999999999999999999", "abc", "1.0",
           "0x1", "²", "１"]


class Silent:
    """A server that accepts connections and never answers: git clones from it hang."""

    async def open(self) -> "Silent":
        self.writers: list[asyncio.StreamWriter] = []
        self.server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return self

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        await reader.read()

    def url(self, name: str = "app") -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/{name}.git"

    async def connections(self) -> int:
        return len(self.writers)

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def hang():
    """Request it after the client, so that its connections close before SPEED stops."""
    silent = await Silent().open()
    yield silent
    await silent.close()


@pytest.fixture
async def held(make_client, hang):
    """SPEED with one slot, kept busy by a clone that never ends: what comes next stays Pending."""
    client = await make_client(runner__max_concurrent=1)
    client.blocker = await start(client, hang.url("blocker"))
    await wait_for(hang.connections)  # git is cloning from it now
    return client


async def start(client, url=CLOSED, branch="main", **kwargs) -> int:
    response = await client.post("/start", json={"url": url, "branch": branch}, **kwargs)
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def info(client, deployment_id: int) -> dict:
    response = await client.get(f"/info/{deployment_id}")
    assert response.status == 200
    return await response.json()


async def has_status(client, deployment_id: int, status: str) -> bool:
    return (await info(client, deployment_id))["status"] == status


async def listed(client, query: str = "") -> list[dict]:
    response = await client.get(f"/deployments{query}")
    assert response.status == 200
    return (await response.json())["deployments"]


async def error(response, status: int) -> str:
    """The message of a JSON error answer, after checking its status and shape."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    return body["error"]


def names(message: str, field: str) -> bool:
    """Whether an error message names the field, as 'field' or as a 'field: ...' prefix."""
    return f"'{field}'" in message or message.startswith(f"{field}: ")


# --- POST /start ----------------------------------------------------------------------------------

async def test_start_queues_a_deployment(client):
    response = await client.post("/start", json={"url": CLOSED, "branch": "release/1.2"})
    assert response.status == 201
    body = await response.json()
    assert list(body) == ["id"] and type(body["id"]) is int
    shown = await info(client, body["id"])
    assert set(shown) == FIELDS
    assert (shown["id"], shown["repo_name"]) == (body["id"], CLOSED)
    assert shown["repo_branch"] == "release/1.2"
    assert shown["status"] in STATUSES and shown["trigger"] == "manual"
    assert shown["created_at"].endswith("Z")
    assert await start(client) > body["id"]


async def test_start_sent_again_with_its_idempotency_key_queues_once(client):
    """A client whose answer was lost sends /start again with the same Idempotency-Key: it gets
    the same deployment (marked replayed), not a second; ten at once make one too."""
    body = {"url": CLOSED, "branch": "main"}
    headers = {"Idempotency-Key": "deploy-7f3a"}
    first = await client.post("/start", json=body, headers=headers)
    again = await client.post("/start", json=body, headers=headers)
    assert (first.status, again.status) == (201, 201)
    assert (await first.json()) == (await again.json())
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    burst = await asyncio.gather(*(client.post("/start", json=body, headers={"Idempotency-Key": "burst"})
                                   for _ in range(10)))
    assert len({(await r.json())["id"] for r in burst}) == 1
    listed = (await (await client.get("/deployments")).json())["deployments"]
    assert len(listed) == 2  # one per key


async def test_an_idempotency_key_with_another_request_or_malformed_is_refused(client):
    headers = {"Idempotency-Key": "deploy-1"}
    assert (await client.post("/start", json={"url": CLOSED, "branch": "main"}, headers=headers)).status == 201
    other = await client.post("/start", json={"url": CLOSED, "branch": "dev"}, headers=headers)
    assert other.status == 422
    assert "Idempotency-Key" in (await other.json())["error"]
    bad = await client.post("/start", json={"url": CLOSED, "branch": "main"},
                            headers={"Idempotency-Key": "no spaces allowed"})
    assert bad.status == 400
    listed = (await (await client.get("/deployments")).json())["deployments"]
    assert len(listed) == 1  # neither queued anything


async def test_an_idempotency_key_is_the_tokens_own(make_client):
    """Two API tokens that happen to send the same key (two CI systems counting from 1): each
    gets a deployment of its own; the same token sending again gets its own back."""
    tokens = ["idempotency-token-a-0123456789", "idempotency-token-b-0123456789"]
    client = await make_client(auth__api_tokens=tokens)
    body = {"url": CLOSED, "branch": "main"}

    async def start_as(token: str) -> int:
        response = await client.post("/start", json=body, headers={
            "Idempotency-Key": "build-1", "Authorization": f"Bearer {token}"})
        assert response.status == 201, await response.text()
        return (await response.json())["id"]

    first, second = await start_as(tokens[0]), await start_as(tokens[1])
    assert first != second
    assert await start_as(tokens[0]) == first


@pytest.mark.parametrize("body, field", [
    ({"branch": "main"}, "url"),
    ({"url": CLOSED}, "branch"),
    ({"url": 5, "branch": "main"}, "url"),
    ({"url": None, "branch": "main"}, "url"),
    ({"url": [CLOSED], "branch": "main"}, "url"),
    ({"url": "", "branch": "main"}, "url"),
    ({"url": CLOSED, "branch": 1}, "branch"),
    ({"url": CLOSED, "branch": None}, "branch"),
    ({"url": CLOSED, "branch": ["main"]}, "branch"),
    ({"url": CLOSED, "branch": ""}, "branch"),
    ({"url": "file:///etc", "branch": "main"}, "url"),
    ({"url": "https://localhost/x.git", "branch": "main"}, "url"),
    ({"url": "https://[::1/x.git", "branch": "main"}, "url"),
    ({"url": CLOSED, "branch": "--upload-pack=touch /tmp/x"}, "branch"),
    ({"url": CLOSED, "branch": "a..b"}, "branch"),
])
async def test_start_refuses_bad_fields_naming_them(client, body, field):
    assert names(await error(await client.post("/start", json=body), 400), field)
    assert await listed(client) == []


@pytest.mark.parametrize("path, body, unknown", [
    ("/start", {"url": CLOSED, "branch": "main", "commit": "deadbeef"}, "commit"),
    ("/update", {"id": 1, "new_results": "Succeeded", "status": "Failed"}, "status"),
    ("/add_results/1", {"results": "x", "result": "y"}, "result"),
])
async def test_a_field_the_request_does_not_take_is_refused_naming_it(client, path, body,
                                                                       unknown):
    """Refused, not ignored: an ignored "commit" deployed the branch's head instead."""
    message = await error(await client.post(path, json=body), 400)
    assert message.startswith(f'Unknown field "{unknown}": this request takes '), message
    assert await listed(client) == []


@pytest.mark.parametrize("raw", [
    b"", b"{", b"{'url': 'x'}", b'{"url": "x",}', b"\xff\xfe", b"[]", b"[1, 2]", b'"text"', b"5",
    b"null", b"[" * 100_000, b'{"url": ' + b"1" * 5000 + b', "branch": "main"}',
    b'{"url": "https://github.com/a\\ud800.git", "branch": "main"}',
    b'{"url": "' + CLOSED.encode() + b'", "branch": "ma\\udc00in"}',
])
async def test_start_refuses_bodies_that_are_not_a_json_object(client, raw):
    await error(await client.post("/start", data=raw), 400)
    assert await listed(client) == []


async def _chunks(size: int):
    for _ in range(size // 65536 + 1):
        yield b" " * 65536


@pytest.mark.parametrize("send", ["sized", "chunked"])
async def test_start_refuses_a_body_over_one_mebibyte(client, send):
    """Attack: a REST body over 1 MiB (declared, or chunked without a length). Asserts: a JSON 413
    naming the limit, and nothing stored."""
    data = b" " * (MAX_BODY + 1) if send == "sized" else _chunks(MAX_BODY)
    message = await error(await client.post("/start", data=data), 413)
    assert str(MAX_BODY) in message
    assert await listed(client) == []


@pytest.mark.parametrize("send", ["sized", "chunked"])
async def test_every_mutation_refuses_a_body_over_one_mebibyte(client, send):
    """Attack: oversized bodies on the other mutating endpoints. Asserts: a JSON 413 each, and the
    deployment they name is unchanged (no progress, no results added)."""
    deployment_id = await start(client)
    # Its own outcome first (the clone fails): what is compared is only what the 413s could add.
    await wait_finished(client, deployment_id)
    before = await results_of(client, deployment_id)
    for path in ("/update", f"/add_results/{deployment_id}"):
        data = b" " * (MAX_BODY + 1) if send == "sized" else _chunks(MAX_BODY)
        await error(await client.post(path, data=data), 413)
    assert (await info(client, deployment_id))["progress"] is None
    assert await results_of(client, deployment_id) == before
    assert [d["id"] for d in await listed(client)] == [deployment_id]


async def test_start_accepts_a_body_of_exactly_one_mebibyte(client):
    head = json.dumps({"url": CLOSED, "branch": "main"})[:-1]  # padded with white space
    raw = (head + " " * (MAX_BODY - len(head) - 1) + "}").encode()
    assert len(raw) == MAX_BODY
    assert (await client.post("/start", data=raw)).status == 201


# --- GET /info, /results, and ids that name nothing -----------------------------------------------

@pytest.mark.parametrize("bad_id", BAD_IDS)
async def test_ids_that_name_no_deployment_are_a_json_404(client, bad_id):
    """Attack: negative, huge, non-numeric and look-alike ids on every route that takes one.
    Asserts: the same JSON 404 as an unknown id, never a 500 or a page."""
    for method, path, body in [("GET", "/info/{}", None), ("GET", "/results/{}", None),
                               ("POST", "/add_results/{}", {"results": "x"}),
                               ("POST", "/cancel/{}", None), ("POST", "/redeploy/{}", None),
                               ("GET", "/deployments/{}", None),
                               ("GET", "/deployments/{}/events", None)]:
        response = await client.request(method, path.format(bad_id), json=body)
        assert await error(response, 404) == "Deployment not found", (method, path)


async def raw_status(client, method: str, target: str) -> tuple[int, bytes]:
    """Send a request line exactly as written (HTTP clients normalise "..") and read the answer."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
                 "Connection: close\r\n\r\n{}".encode())
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("bad_id", ["..", "%2e%2e", "1%2F..", "1%2f%2e%2e", "%00", "1%00",
                                    "..%2Fstart", "1;2", "1%20", "%201", "~1", "1/..", "."])
async def test_path_like_ids_name_nothing(client, bad_id):
    """Attack: ids that look like paths or smuggle separators (traversal, NUL, encoded slashes),
    sent byte for byte. Asserts: a JSON 404 or 405 on every id route, never another route's
    answer, and nothing is created or cancelled."""
    deployment_id = await start(client)
    for method, path in [("GET", "/info/{}"), ("GET", "/results/{}"), ("POST", "/cancel/{}"),
                         ("POST", "/redeploy/{}"), ("POST", "/add_results/{}"),
                         ("GET", "/deployments/{}"), ("GET", "/deployments/{}/events")]:
        status, body = await raw_status(client, method, path.format(bad_id))
        assert status in (404, 405), (method, path, status)
        assert "error" in json.loads(body), (method, path, body[:200])
    assert [d["id"] for d in await listed(client)] == [deployment_id]
    assert (await info(client, deployment_id))["status"] != "Cancelled"


async def test_results_are_one_string(client):
    deployment_id = await start(client)
    response = await client.get(f"/results/{deployment_id}")
    assert response.status == 200
    body = await response.json()
    assert list(body) == ["results"] and isinstance(body["results"], str)


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/nowhere", 404), ("POST", "/info/1/extra", 404),
    ("GET", "/start", 405), ("DELETE", "/deployments", 405),
])
async def test_unknown_routes_answer_json(client, method, path, status):
    await error(await client.request(method, path), status)


# --- POST /update ---------------------------------------------------------------------------------

async def test_update_with_text_records_progress(client):
    deployment_id = await start(client)
    update = {"id": deployment_id, "new_results": "migrations done"}
    response = await client.post("/update", json=update)
    assert response.status == 200
    assert await response.json() == {"message": "Deployment updated successfully"}
    assert (await info(client, deployment_id))["progress"] == "migrations done"
    assert "migrations done" in await results_of(client, deployment_id)


@pytest.mark.parametrize("word, status", [("cancelled", "Cancelled"), ("FAILED", "Failed"),
                                          (" Succeeded ", "Succeeded")])
async def test_update_with_a_status_word_moves_it_and_finished_stays(client, hang, word, status):
    deployment_id = await start(client, hang.url())
    update = {"id": deployment_id, "new_results": word}
    assert (await client.post("/update", json=update)).status == 200
    moved = await info(client, deployment_id)
    assert moved["status"] == status and moved["finished_at"] is not None
    for again in ("Succeeded", "failed", "Running", "Pending", "Cancelled"):
        response = await client.post("/update", json={"id": deployment_id, "new_results": again})
        assert status in await error(response, 409)
    assert await info(client, deployment_id) == moved
    after = {"id": deployment_id, "new_results": "post-mortem notes"}
    assert (await client.post("/update", json=after)).status == 200
    shown = await info(client, deployment_id)
    assert (shown["status"], shown["progress"]) == (status, "post-mortem notes")


@pytest.mark.parametrize("target", [1000, -1, 2**70])
async def test_update_of_an_unknown_deployment_is_404(client, target):
    response = await client.post("/update", json={"id": target, "new_results": "Failed"})
    assert await error(response, 404) == "Deployment not found"


@pytest.mark.parametrize("body, field", [
    ({"new_results": "x"}, "id"), ({"id": "1", "new_results": "x"}, "id"),
    ({"id": True, "new_results": "x"}, "id"), ({"id": 1.0, "new_results": "x"}, "id"),
    ({"id": None, "new_results": "x"}, "id"), ({"id": 1}, "new_results"),
    ({"id": 1, "new_results": ""}, "new_results"), ({"id": 1, "new_results": 3}, "new_results"),
    ({"id": 1, "new_results": None}, "new_results"),
    ({"id": 1, "new_results": "\ud800"}, "new_results"),
])
async def test_update_refuses_bad_fields_naming_them(client, body, field):
    assert await start(client) == 1  # the id the bodies name
    assert names(await error(await client.post("/update", data=json.dumps(body)), 400), field)
    assert (await info(client, 1))["progress"] is None
    assert "\ud800" not in await results_of(client, 1)


# --- POST /add_results ----------------------------------------------------------------------------

async def test_add_results_appends_in_recorded_order(client):
    deployment_id = await start(client)
    for text in ("first result", "second result"):
        response = await client.post(f"/add_results/{deployment_id}", json={"results": text})
        assert response.status == 200
        assert await response.json() == {"message": "Results added successfully"}
    results = await results_of(client, deployment_id)
    assert 0 <= results.index("first result\n") < results.index("second result\n")


@pytest.mark.parametrize("body", [{}, {"results": ""}, {"results": 5}, {"results": None},
                                  {"results": ["x"]}])
async def test_add_results_refuses_missing_results(client, body):
    deployment_id = await start(client)
    response = await client.post(f"/add_results/{deployment_id}", json=body)
    assert await error(response, 400) == "Missing results data"


async def test_add_results_refuses_text_that_cannot_be_stored(client):
    deployment_id = await start(client)
    raw = b'{"results": "half a pair: \\ud800"}'
    response = await client.post(f"/add_results/{deployment_id}", data=raw)
    assert names(await error(response, 400), "results")
    assert "half a pair" not in await results_of(client, deployment_id)


# --- GET /deployments -----------------------------------------------------------------------------

async def test_deployments_newest_first_with_limit_and_repo(client):
    urls = [f"http://127.0.0.1:9/{name}.git" for name in ("alpha", "beta", "gamma")]
    ids = [await start(client, url) for url in urls]
    assert [d["id"] for d in await listed(client)] == ids[::-1]
    assert [d["id"] for d in await listed(client, "?limit=2")] == ids[:0:-1]
    assert [d["id"] for d in await listed(client, "?repo=beta")] == [ids[1]]
    assert [d["id"] for d in await listed(client, "?repo=127.0.0.1:9/")] == ids[::-1]
    # LIKE wildcards match only themselves; a NUL ended SQLite's pattern and matched every row.
    for literal in ("nomatch", "%", "_", "a_p", "%00zzzz", "beta%00"):
        assert await listed(client, f"?repo={literal}") == []
    assert all(set(d) == FIELDS for d in await listed(client))


async def test_deployments_filter_by_status_and_show_what_info_shows(client, hang):
    failed, cancelled, unfinished = [await start(client, hang.url(name)) for name in "fcu"]
    response = await client.post("/update", json={"id": failed, "new_results": "Failed"})
    assert response.status == 200
    assert (await client.post(f"/cancel/{cancelled}")).status == 200
    for query, expected in [("failed", failed), ("FAILED", failed), ("Failed", failed),
                            ("cancelled", cancelled), ("CANCELLED", cancelled)]:
        found = await listed(client, f"?status={query}")
        assert found == [await info(client, expected)]
    assert await listed(client, "?status=succeeded") == []
    assert unfinished in [d["id"] for d in await listed(client)]


@pytest.mark.parametrize("query, field", [("status=bogus", "status"), ("status=", "status"),
                                          ("limit=0", "limit"), ("limit=501", "limit"),
                                          ("limit=abc", "limit"), ("limit=-1", "limit")])
async def test_deployments_refuse_bad_filters(client, query, field):
    assert names(await error(await client.get(f"/deployments?{query}"), 400), field)


# --- POST /cancel ---------------------------------------------------------------------------------

async def test_cancel_a_pending_deployment_then_again(held):
    deployment_id = await start(held, CLOSED)
    assert await has_status(held, deployment_id, "Pending")
    # It takes no body: one sent is empty or {}; garbage is refused (it was ignored: found by
    # a hostile user), and so is a field, as for /redeploy.
    for path in (f"/cancel/{deployment_id}", f"/redeploy/{deployment_id}"):
        assert "not valid JSON" in await error(await held.post(path, data=b"garbage"), 400)
        assert "takes none" in await error(await held.post(path, json={"force": True}), 400)
    assert [d["id"] for d in await listed(held)] == [deployment_id, held.blocker]
    assert await has_status(held, deployment_id, "Pending")
    response = await held.post(f"/cancel/{deployment_id}", json={})
    assert response.status == 200
    body = await response.json()
    assert set(body) == FIELDS and (body["id"], body["status"]) == (deployment_id, "Cancelled")
    assert body["finished_at"] is not None
    assert "Cancelled" in await error(await held.post(f"/cancel/{deployment_id}"), 409)
    assert await has_status(held, deployment_id, "Cancelled")
    assert await error(await held.post("/cancel/999"), 404) == "Deployment not found"
    assert await has_status(held, held.blocker, "Running")


async def test_cancel_stops_a_running_clone_and_frees_its_slot(held):
    queued = await start(held, CLOSED)
    response = await held.post(f"/cancel/{held.blocker}")
    assert (response.status, (await response.json())["status"]) == (200, "Cancelled")
    # The next deployment gets the only slot once the clone is stopped; it fails (nothing listens).
    await wait_for(lambda: has_status(held, queued, "Failed"), timeout=15)
    assert await has_status(held, held.blocker, "Cancelled")


# --- API tokens -----------------------------------------------------------------------------------

@pytest.fixture
async def guarded(make_client, hang):
    """SPEED with an API token (reads public, so the tests can look), and one deployment that
    stays unfinished. Private reads: tests/test_private_reads.py."""
    client = await make_client(auth__api_tokens=[TOKEN], auth__public_reads=True)
    client.target = await start(client, hang.url(), headers={"Authorization": f"Bearer {TOKEN}"})
    return client


def mutation(endpoint: str, target: int) -> tuple[str, dict | None]:
    return {"start": ("/start", {"url": CLOSED, "branch": "main"}),
            "cancel": (f"/cancel/{target}", None),
            "update": ("/update", {"id": target, "new_results": "progress by a stranger"}),
            "add_results": (f"/add_results/{target}", {"results": "results by a stranger"}),
            }[endpoint]


@pytest.mark.parametrize("endpoint", ["start", "cancel", "update", "add_results"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-of-16-chars-or-more",
                                           f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer", TOKEN])
async def test_mutating_endpoints_need_the_api_token(guarded, endpoint, authorization):
    path, body = mutation(endpoint, guarded.target)
    headers = {"Authorization": authorization} if authorization else {}
    await error(await guarded.post(path, json=body, headers=headers), 401)
    shown = await info(guarded, guarded.target)
    assert shown["status"] != "Cancelled" and shown["progress"] is None
    assert "stranger" not in await results_of(guarded, guarded.target)
    assert [d["id"] for d in await listed(guarded)] == [guarded.target]


async def test_the_api_token_opens_mutating_endpoints_and_public_reads_stay_open(guarded):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for endpoint in ("start", "cancel", "update", "add_results"):
        path, body = mutation(endpoint, guarded.target)
        response = await guarded.post(path, json=body, headers=headers)
        assert response.status in (200, 201), (path, await response.text())
    shown = await info(guarded, guarded.target)
    assert (shown["status"], shown["progress"]) == ("Cancelled", "progress by a stranger")
    assert "results by a stranger" in await results_of(guarded, guarded.target)
    for path in (f"/info/{guarded.target}", f"/results/{guarded.target}", "/deployments"):
        assert (await guarded.get(path)).status == 200


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
])
async def test_cross_site_browser_posts_are_refused(client, headers):
    response = await client.post("/start", data='{"url": "%s", "branch": "main"}' % CLOSED,
                                 headers={"Content-Type": "text/plain", **headers})
    assert response.status == 403
    assert "error" in await response.json()
    assert (await (await client.get("/deployments")).json())["deployments"] == []


async def test_same_origin_posts_pass(client):
    origin = str(client.make_url("")).rstrip("/")
    response = await client.post("/start", json={"url": CLOSED, "branch": "main"},
                                 headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"})
    assert response.status == 201
