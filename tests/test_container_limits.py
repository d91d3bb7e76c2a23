"""Hostile containers are held by their limits: memory, processes, time, and output."""
import pytest

from tests.conftest import results_of, wait_finished

# After every test the invariant of tests/invariants.py holds.
pytestmark = pytest.mark.usefixtures("app_invariants")


async def start(client, url: str) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201
    return (await response.json())["id"]


async def test_memory_hog_fails_as_out_of_memory(make_client, repo):
    client = await make_client(runner__memory="32m")
    # tail keeps a line-less stream in memory until the limit kills it.
    url, _ = repo("head -c 300000000 /dev/zero | tail -c 250000000 > /dev/null\n")
    info = await wait_finished(client, await start(client, url))
    assert info["status"] == "Failed"
    assert info["reason"].startswith("out of memory")


async def test_fork_bomb_is_held_by_the_pids_limit(make_client, repo):
    client = await make_client(runner__pids=32, runner__timeout=15)
    url, _ = repo("bomb() { bomb | bomb & }\nbomb\nsleep 600\n")
    info = await wait_finished(client, await start(client, url), timeout=40)
    assert info["status"] == "Failed"
    assert info["reason"] == "timed out after 15 s"
    # The bot kept serving throughout.
    assert (await client.get("/healthz")).status == 200


async def test_flood_of_output_is_capped_and_the_exit_code_decides(make_client, repo):
    client = await make_client(runner__max_log_bytes=100_000)
    url, _ = repo("yes 'a line of output that repeats' | head -c 50000000\nexit 0\n")
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id, timeout=120)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded"
    assert len(results.encode()) < 110_000
    assert "[output truncated:" in results
