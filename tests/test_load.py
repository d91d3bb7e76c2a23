"""Under bursts every acknowledged request is stored, nothing is locked, nothing lost."""
import asyncio
import uuid

import pytest

from tests.webhooks import delivery_headers, encode, push_payload

# After every test the invariant of tests/invariants.py holds.
pytestmark = pytest.mark.usefixtures("app_invariants")

SECRET = "load-test-webhook-secret"
CLOSED = "http://127.0.0.1:9/none.git"  # allowed, and fails at once: nothing heavy runs


async def test_hundred_concurrent_starts_are_all_recorded(make_client):
    client = await make_client(runner__max_concurrent=2)
    responses = await asyncio.gather(
        *(client.post("/start", json={"url": CLOSED, "branch": f"b{n}"}) for n in range(100)))
    assert [r.status for r in responses] == [201] * 100
    ids = {(await r.json())["id"] for r in responses}
    listed = (await (await client.get("/deployments?limit=500")).json())["deployments"]
    assert ids == {d["id"] for d in listed} and len(ids) == 100


async def test_thousand_concurrent_add_results_are_all_stored(make_client):
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
