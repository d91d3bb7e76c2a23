"""The Docker engine restarting mid-deployment pauses SPEED's work; it never loses or reruns it."""
import asyncio
import os
import pathlib
import signal
import subprocess
import time

import pytest

from tests.conftest import DOCKERFILE, instance_of, results_of, wait_finished, wait_for

# serial: it restarts the one engine every other test uses, so it runs alone (see Makefile).
pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.usefixtures("app_invariants")]

ROOT = pathlib.Path(__file__).resolve().parent.parent
PIDFILE = pathlib.Path("/var/run/docker.pid")


def running(pid: int) -> bool:
    """Whether the process runs (a zombie no longer does)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stop_engine() -> None:
    """Stop dockerd the way an upgrade or a crash-restart does, and wait until it is gone."""
    pid = int(PIDFILE.read_text())
    os.kill(pid, signal.SIGTERM)
    while running(pid):
        time.sleep(0.1)


def start_engine() -> None:
    subprocess.run([str(ROOT / "scripts/ensure-docker.sh")], check=True, capture_output=True)


@pytest.fixture
def engine(docker_client):
    """An engine with live restore on, which runs again after the test whatever happened."""
    if not docker_client.info()["LiveRestoreEnabled"]:
        # An engine started before scripts/ensure-docker.sh asked for live restore.
        stop_engine()
        start_engine()
    assert docker_client.info()["LiveRestoreEnabled"], "dockerd runs without --live-restore"
    yield
    start_engine()


async def start(client, url: str) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201
    return (await response.json())["id"]


async def output_contains(client, deployment_id: int, text: str) -> None:
    async def check():
        return text in await results_of(client, deployment_id)
    await wait_for(check)


async def test_engine_restart_while_the_container_runs_keeps_every_line_and_the_exit_code(
        make_client, repo, engine, docker_client):
    """Fault: dockerd restarts while a container runs. Asserts: SPEED says it waits, stays
    Running, then records exit 3, each line and one container start stored (no rerun)."""
    client = await make_client()
    # The container prints "after" and exits only when told to, once the engine is back.
    url, _ = repo("trap 'echo after; exit 3' USR1\necho before\nwhile true; do sleep 0.1; done\n")
    deployment_id = await start(client, url)
    await output_contains(client, deployment_id, "before\n")
    await asyncio.to_thread(stop_engine)
    await output_contains(client, deployment_id, "waiting for it to come back")
    assert (await (await client.get(f"/info/{deployment_id}")).json())["status"] == "Running"
    await asyncio.to_thread(start_engine)
    [container] = docker_client.api.containers(filters={"label": [
        f"speed.instance={instance_of(client)}", f"speed.deployment={deployment_id}"]})
    docker_client.api.kill(container["Id"], signal="USR1")
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert (info["status"], info["exit_code"]) == ("Failed", 3), results
    assert results.count("before\n") == 1 and results.count("after\n") == 1
    assert results.count("[speed] starting the container") == 1


async def test_container_exiting_while_the_engine_is_away_gets_its_exit_code(
        make_client, repo, engine, docker_client):
    """Fault: the container exits 4 while dockerd is down. Asserts: SPEED says it waits, then
    records Failed with exit code 4 (output printed meanwhile is unchecked: Docker may drop it)."""
    client = await make_client()
    url, _ = repo("trap 'exit 4' USR1\necho before\nwhile true; do sleep 0.1; done\n")
    deployment_id = await start(client, url)
    await output_contains(client, deployment_id, "before\n")
    [container] = docker_client.api.containers(filters={"label": [
        f"speed.instance={instance_of(client)}", f"speed.deployment={deployment_id}"]})
    pid = docker_client.api.inspect_container(container["Id"])["State"]["Pid"]
    await asyncio.to_thread(stop_engine)
    await output_contains(client, deployment_id, "waiting for it to come back")
    # With the engine down, signal the container's main process directly (a host process).
    os.kill(pid, signal.SIGUSR1)
    await wait_for(lambda: asyncio.to_thread(lambda: not running(pid)))
    await asyncio.to_thread(start_engine)
    info = await wait_finished(client, deployment_id)
    assert (info["status"], info["exit_code"]) == ("Failed", 4)


async def test_engine_restart_during_the_build_deploys_again(make_client, repo, engine):
    """Fault: dockerd restarts during the image build. Asserts: it is deployed again ('deploying
    again'), Succeeds with its output once, and a new deployment then Succeeds too."""
    client = await make_client()
    dockerfile = DOCKERFILE + "RUN echo building-slowly && sleep 2\n"
    url, _ = repo("echo ran\n", dockerfile=dockerfile)
    deployment_id = await start(client, url)
    await output_contains(client, deployment_id, "building-slowly")
    await asyncio.to_thread(stop_engine)
    await output_contains(client, deployment_id, "waiting for it to come back")
    await asyncio.to_thread(start_engine)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded", results
    assert "deploying again" in results
    assert results.count("ran\n") == 1
    # The bot went on serving: a new deployment runs normally after the outage.
    info = await wait_finished(client, await start(client, url))
    assert info["status"] == "Succeeded"
