"""Bursts of /start, /add_results and webhooks: every request answers 2xx (none fails on a locked
database) and what it carries is recorded once."""
import asyncio
import uuid

import pytest

from tests.conftest import wait_finished
from tests.webhooks import delivery_headers, encode, push_payload

# After every test the invariant of tests/invariants.py holds, and nothing logged a locked database.
pytestmark = pytest.mark.usefixtures("app_invariants", "never_locked")


@pytest.fixture
def never_locked(caplog):
    """SQLite's "database is locked" must never happen: all writes go through one thread."""
    yield
    locked = [r.getMessage() for r in caplog.records if "locked" in r.getMessage().lower()
              or (r.exc_text and "locked" in r.exc_text.lower())]
    assert locked == []

SECRET = "load-test-webhook-secret"
CLOSED = "http://127.0.0.1:9/none.git"  # allowed, and fails at once: nothing heavy runs


async def test_hundred_concurrent_starts_are_all_recorded(make_client):
    """Load: 100 concurrent /start (max_concurrent 2; each clone fails at once). Asserts: all 100
    answer 201 with distinct ids, and /deployments lists exactly those 100."""
    client = await make_client(runner__max_concurrent=2)
    responses = await asyncio.gather(
        *(client.post("/start", json={"url": CLOSED, "branch": f"b{n}"}) for n in range(100)))
    assert [r.status for r in responses] == [201] * 100
    ids = {(await r.json())["id"] for r in responses}
    listed = (await (await client.get("/deployments?limit=500")).json())["deployments"]
    assert ids == {d["id"] for d in listed} and len(ids) == 100


async def test_thousand_concurrent_add_results_are_all_stored(make_client):
    """Load: 1000 concurrent /add_results to one deployment. Asserts: every one answers 200 and each
    result text is stored exactly once."""
    client = await make_client()
    deployment_id = (await (await client.post("/start", json={"url": CLOSED, "branch": "main"}))
                     .json())["id"]
    responses = await asyncio.gather(*(
        client.post(f"/add_results/{deployment_id}", json={"results": f"result-{n:04d}"})
        for n in range(1000)))
    assert [r.status for r in responses] == [200] * 1000
    results = (await (await client.get(f"/results/{deployment_id}")).json())["results"]
    assert all(results.count(f"result-{n:04d}\n") == 1 for n in range(1000))


async def test_burst_of_five_hundred_webhooks_is_recorded_once_each(make_client):
    """Load: 500 signed push deliveries at once, each for a branch no rule deploys. Asserts: all
    answer 200 'ignored: ...' and /metrics counts exactly 500 ignored push deliveries."""
    client = await make_client(github__webhook_secret=SECRET, repos=[{"match": "acme/*"}])

    async def deliver(n: int):
        payload = push_payload("acme/app", CLOSED, ref=f"refs/heads/not-deployed-{n}")
        body = encode(payload)
        return await client.post("/webhook", data=body, headers=delivery_headers(
            "push", body, SECRET, guid=str(uuid.uuid4())))

    responses = await asyncio.gather(*(deliver(n) for n in range(500)))
    assert [r.status for r in responses] == [200] * 500
    messages = [(await r.json())["message"] for r in responses]
    assert all(message.startswith("ignored: ") for message in messages)
    metrics = await (await client.get("/metrics")).text()
    assert 'speed_webhook_deliveries_total{event="push",outcome="ignored"} 500.0' in metrics


async def test_burst_of_five_hundred_deploying_webhooks_queues_each_once(make_client):
    """Load: 500 signed pushes at once, each to its own branch, so each queues a deployment.
    Asserts: every delivery answers 202 with its own id, and exactly those 500 deployments are
    stored, each with the pushed commit (the invariant then waits for all of them to finish)."""
    client = await make_client(github__webhook_secret=SECRET, runner__max_concurrent=2,
                               repos=[{"match": "acme/*", "branches": ["*"]}])

    async def deliver(n: int):
        payload = push_payload("acme/app", CLOSED, ref=f"refs/heads/burst-{n}")
        body = encode(payload)
        response = await client.post("/webhook", data=body, headers=delivery_headers(
            "push", body, SECRET, guid=str(uuid.uuid4())))
        return response.status, (await response.json()).get("id"), payload["after"]

    answers = await asyncio.gather(*(deliver(n) for n in range(500)))
    assert [status for status, _, _ in answers] == [202] * 500
    pushed = {deployment_id: commit for _, deployment_id, commit in answers}
    assert len(pushed) == 500
    listed = (await (await client.get("/deployments?limit=500")).json())["deployments"]
    assert {d["id"]: d["commit"] for d in listed} == pushed
    # Done with the queue: cancelling is quicker than 500 clones failing one after another.
    cancels = await asyncio.gather(*(client.post(f"/cancel/{i}") for i in pushed))
    assert {r.status for r in cancels} <= {200, 409}  # 409: it had finished already


async def test_concurrency_never_exceeds_max_concurrent(make_client, repo):
    """Load: 12 real deployments queued at once with runner.max_concurrent 3. Asserts: from the
    recorded start and finish times, never more than 3 were running at any moment, all succeeded,
    and they were taken in arrival order."""
    client = await make_client(runner__max_concurrent=3)
    url, _ = repo("echo working\nsleep 1\n")
    responses = await asyncio.gather(*(client.post("/start", json={"url": url, "branch": "main"})
                                       for _ in range(12)))
    ids = sorted([(await r.json())["id"] for r in responses])
    infos = [await wait_finished(client, deployment_id) for deployment_id in ids]
    assert [i["status"] for i in infos] == ["Succeeded"] * 12
    events = sorted([(i["started_at"], 1) for i in infos] + [(i["finished_at"], -1) for i in infos],
                    key=lambda event: (event[0], event[1]))  # a finish before a start at a tie
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert 1 < peak <= 3
    assert [i["id"] for i in sorted(infos, key=lambda i: i["started_at"])] == ids
