"""Builds run within the deployment's limits, and cancel and timeout stop them at once."""
import re

import pytest

from tests.conftest import BASE_IMAGE, instance_of, results_of, wait_finished, wait_for

pytestmark = pytest.mark.usefixtures("app_invariants")

STEP = f"FROM {BASE_IMAGE}\nRUN {{}}\nCMD [\"true\"]\n"


async def start(client, url: str) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


def build_steps_running(docker_client, marker: str) -> list[dict]:
    """The build's step containers still running a command that contains marker."""
    return [c for c in docker_client.api.containers() if marker in (c.get("Command") or "")]


async def test_a_build_step_gets_the_containers_memory_cpu_and_process_limits(make_client, repo):
    """Attack: a RUN step saw no memory, pids or CPU limit (the run container had them).
    Asserts: a step sees the deployment's memory limit and CPU quota in its cgroup; a step that
    starts more processes than runner.pids allows is refused ("can't fork") and the build fails;
    one that allocates past the memory limit is killed and the build fails."""
    client = await make_client(runner__memory="96m", runner__cpus=0.5, runner__pids=24)
    show = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us "
            "2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max")
    url, _ = repo("true\n", dockerfile=STEP.format(show))
    deployment_id = await start(client, url)
    assert (await wait_finished(client, deployment_id))["status"] == "Succeeded"
    shown = await results_of(client, deployment_id)
    assert str(96 * 1024 * 1024) in shown, shown
    assert re.search(r"^50000\b", shown, re.M), shown  # half of a 100 ms period

    forks = 'i=0; while [ $i -lt 60 ]; do sleep 30 & i=$((i+1)); done; echo "forked $i"'
    url, _ = repo("true\n", dockerfile=STEP.format(forks))
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id, timeout=90)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Failed", results
    assert "forked 60" not in results and re.search(r"can't fork|Resource temporarily", results)

    # tail keeps a line-less stream in memory until the limit kills it.
    hog = "head -c 300000000 /dev/zero | tail -c 250000000 >/dev/null && echo survived"
    url, _ = repo("true\n", dockerfile=STEP.format(hog))
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id, timeout=90)
    assert info["status"] == "Failed" and info["reason"].endswith("returned a non-zero code: 137")
    assert "\nsurvived\n" not in await results_of(client, deployment_id)


@pytest.mark.parametrize("stop", ["cancel", "timeout"])
async def test_cancel_and_timeout_stop_a_build_at_once_and_leave_no_image(
        make_client, repo, docker_client, stop):
    """Attack: `RUN sleep 40`, then /cancel (or a 10 s timeout): the deployment finished but the
    build ran its full 40 s and tagged the image afterwards. Asserts: the step's container is
    gone within 10 s of the outcome (long before the sleep would end) and no image of the
    deployment is tagged."""
    client = await make_client(runner__timeout=15 if stop == "timeout" else 120)
    marker = f"sleep 4{len(stop)}"  # a command only this test runs
    url, _ = repo("true\n", dockerfile=STEP.format(f'echo "step $((1+1)) started"; {marker}'))
    deployment_id = await start(client, url)
    await wait_for(lambda: _says(client, deployment_id, "step 2 started"), timeout=60)
    assert build_steps_running(docker_client, marker)
    if stop == "cancel":
        assert (await client.post(f"/cancel/{deployment_id}")).status == 200
    info = await wait_finished(client, deployment_id, timeout=60)
    assert info["status"] == ("Cancelled" if stop == "cancel" else "Failed"), info
    await wait_for(lambda: _gone(docker_client, marker), timeout=10)
    repository = f"speed-{instance_of(client)}"
    tags = [t for image in docker_client.api.images(repository) for t in image["RepoTags"]]
    assert not [t for t in tags if t.startswith(f"{repository}:{deployment_id}-")], tags


async def _says(client, deployment_id: int, text: str) -> bool:
    return text in await results_of(client, deployment_id)


async def _gone(docker_client, marker: str) -> bool:
    return not build_steps_running(docker_client, marker)
