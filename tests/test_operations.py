"""Operating SPEED: redeploy, waiting reasons, phase timings, live events, health and metrics."""
import json

from tests.conftest import results_of, wait_finished, wait_for


async def start(client, url: str) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201
    return (await response.json())["id"]


async def test_redeploy_runs_the_same_commit_again(client, repo, git_server):
    url, commit = repo('echo "at $SPEED_COMMIT"\n')
    first = await start(client, url)
    await wait_finished(client, first)
    git_server.commit(url.rsplit("/", 1)[1].removesuffix(".git"), {"new.txt": "moved on"})
    response = await client.post(f"/redeploy/{first}")
    assert response.status == 201
    second = (await response.json())["id"]
    info = await wait_finished(client, second)
    assert (info["status"], info["commit"], info["trigger"]) == ("Succeeded", commit, "redeploy")
    assert f"at {commit}" in await results_of(client, second)
    assert (await client.post("/redeploy/999")).status == 404


async def test_pending_deployment_says_why_it_waits(make_client, repo):
    client = await make_client(runner__max_concurrent=1)
    url, _ = repo("echo holding\nsleep 600\n")
    blocker, queued = await start(client, url), await start(client, url)

    async def blocker_running():
        return (await (await client.get(f"/info/{blocker}")).json())["status"] == "Running"

    await wait_for(blocker_running)
    info = await (await client.get(f"/info/{queued}")).json()
    assert info["status"] == "Pending"
    assert info["waiting_reason"] == ("position 1 in the queue; 1 of 1 deployments running "
                                      "(runner.max_concurrent)")
    listed = (await (await client.get("/deployments")).json())["deployments"]
    assert [d["waiting_reason"] is not None for d in listed] == [True, False]
    for deployment_id in (queued, blocker):
        await client.post(f"/cancel/{deployment_id}")


async def test_phase_timings_are_recorded(client, repo):
    url, _ = repo("echo timed\n")
    info = await wait_finished(client, await start(client, url))
    assert all(info["phases"][phase] >= 0 for phase in ("clone", "build", "run"))


async def test_events_stream_status_and_log_until_the_end(client, repo):
    url, _ = repo("echo first-event\nsleep 1\necho second-event\n")
    deployment_id = await start(client, url)
    response = await client.get(f"/deployments/{deployment_id}/events")
    assert response.headers["Content-Type"] == "text/event-stream"
    events, kind = [], None
    async for line in response.content:
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((kind, json.loads(line.removeprefix("data: "))))
    logs = "".join(data for kind, data in events if kind == "log")
    statuses = [data["status"] for kind, data in events if kind == "status"]
    assert logs == await results_of(client, deployment_id)
    assert "first-event" in logs and "second-event" in logs
    assert statuses[-1] == "Succeeded" and "Running" in statuses
    assert events[-1] == ("end", {"status": "Succeeded"})


async def test_events_resume_after_a_result(client, repo):
    url, _ = repo("echo resumed\n")
    deployment_id = await start(client, url)
    await wait_finished(client, deployment_id)
    text = await (await client.get(f"/deployments/{deployment_id}/events?after=1")).text()
    assert "id: 1\n" not in text and "resumed" in text


async def test_healthz_answers_when_database_and_engine_do(client):
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "checks": {"database": "ok", "docker": "ok"}}


async def test_without_an_engine_healthz_is_503_and_work_waits_for_it(make_client, repo,
                                                                       monkeypatch, tmp_path):
    """Fault: the Docker engine is unreachable at start-up. Asserts: /healthz 503 naming docker,
    a /start stays Pending, then Succeeds once the socket appears, and /healthz turns 200."""
    socket = tmp_path / "engine" / "docker.sock"  # the engine "appears" when this link does
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
    client = await make_client()
    response = await client.get("/healthz")
    body = await response.json()
    assert response.status == 503
    assert body["checks"]["database"] == "ok" and body["checks"]["docker"].startswith("failing")
    url, _ = repo("echo ran once the engine answered\n")
    deployment_id = await start(client, url)
    assert (await (await client.get(f"/info/{deployment_id}")).json())["status"] == "Pending"
    socket.parent.mkdir()
    socket.symlink_to("/var/run/docker.sock")
    assert (await wait_finished(client, deployment_id))["status"] == "Succeeded"
    assert (await client.get("/healthz")).status == 200


async def test_metrics_count_deployments_and_phases(client, repo):
    url, _ = repo("exit 2\n")
    await wait_finished(client, await start(client, url))
    text = await (await client.get("/metrics")).text()
    assert 'speed_deployments_finished_total{status="Failed"} 1.0' in text
    assert "speed_deployments_queued 0.0" in text
    assert 'speed_phase_duration_seconds_count{phase="build"} 1.0' in text


async def test_redeploy_checks_the_url_against_the_current_configuration(make_client):
    """Attack: redeploying a URL stored under looser allowed_urls. Asserts: after a restart with
    only https://* allowed, /redeploy is a 400 naming allowed_urls."""
    before = await make_client("shared")
    deployment_id = await start(before, "http://127.0.0.1:9/none.git")
    await before.post(f"/cancel/{deployment_id}")
    await before.close()
    after = await make_client("shared", runner__allowed_urls=["https://*"])
    response = await after.post(f"/redeploy/{deployment_id}")
    assert response.status == 400
    assert "allowed_urls" in (await response.json())["error"]
