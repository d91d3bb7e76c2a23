"""kill -9 of SPEED at any moment ends every deployment with its true outcome; nothing reruns."""
import time

import pytest

from tests.conftest import DOCKERFILE
from tests.process import speed_processes

pytestmark = pytest.mark.slow


@pytest.fixture
def speed(tmp_path, docker_client, base_image):
    """make(**runner) starts SPEED as a process; after the test the invariant holds for it."""
    with speed_processes(tmp_path, docker_client) as make:
        yield make


def test_running_container_is_reattached_and_keeps_streaming(speed, repo):
    bot = speed()
    url, _ = repo("echo before\nsleep 3\necho after\n")
    deployment_id = bot.start_deployment(url)
    bot.wait_output(deployment_id, "before\n")
    bot.kill9()
    bot.start()
    info = bot.wait_finished(deployment_id)
    results = bot.results(deployment_id)
    assert info["status"] == "Succeeded", results
    assert results.count("before\n") == 1 and results.count("after\n") == 1
    assert results.count("[speed] starting the container") == 1
    # A finished deployment stays as it is across another restart.
    bot.kill9()
    bot.start()
    assert bot.info(deployment_id) == info
    assert bot.results(deployment_id) == results


def test_container_that_exited_while_down_gets_its_exit_code(speed, repo, docker_client):
    bot = speed()
    url, _ = repo("echo first\nsleep 1\necho second\nexit 3\n")
    deployment_id = bot.start_deployment(url)
    bot.wait_output(deployment_id, "first\n")
    bot.kill9()
    container_id = bot.row(deployment_id)["container_id"]
    assert docker_client.api.wait(container_id)["StatusCode"] == 3
    bot.start()
    info = bot.wait_finished(deployment_id)
    results = bot.results(deployment_id)
    assert (info["status"], info["exit_code"]) == ("Failed", 3)
    assert results.count("first\n") == 1 and results.count("second\n") == 1


def test_vanished_container_fails_as_interrupted(speed, repo, docker_client):
    bot = speed()
    url, _ = repo("echo container-is-up\nsleep 600\n")
    deployment_id = bot.start_deployment(url)
    bot.wait_output(deployment_id, "container-is-up\n")
    bot.kill9()
    docker_client.api.remove_container(bot.row(deployment_id)["container_id"], force=True)
    bot.start()
    info = bot.wait_finished(deployment_id)
    assert info["status"] == "Failed"
    assert info["reason"] == "interrupted: the container vanished"


def test_interrupted_build_runs_again_from_the_start(speed, repo):
    bot = speed()
    dockerfile = DOCKERFILE + "RUN echo building-slowly && sleep 2\n"
    url, _ = repo("echo ran\n", dockerfile=dockerfile)
    deployment_id = bot.start_deployment(url)
    bot.wait_output(deployment_id, "building-slowly")
    bot.kill9()
    assert bot.row(deployment_id)["container_id"] is None
    bot.start()
    info = bot.wait_finished(deployment_id)
    results = bot.results(deployment_id)
    assert info["status"] == "Succeeded", results
    assert "deploying again" in results
    assert results.count("ran\n") == 1


def test_queued_deployments_survive_and_run_after_restart(speed, repo):
    bot = speed(max_concurrent=1)
    blocker_url, _ = repo("echo blocking\nsleep 600\n")
    blocker = bot.start_deployment(blocker_url)
    url, _ = repo("echo queued one ran\n")
    queued = bot.start_deployment(url)
    bot.wait_output(blocker, "blocking")
    assert bot.info(queued)["status"] == "Pending"
    bot.kill9()
    bot.start()
    assert bot.call("POST", f"/cancel/{blocker}")[0] == 200
    info = bot.wait_finished(queued)
    assert info["status"] == "Succeeded"
    assert "queued one ran" in bot.results(queued)
    assert bot.wait_finished(blocker)["status"] == "Cancelled"


@pytest.mark.parametrize("kill_after", [0.0, 0.3, 0.6, 0.9, 1.2, 1.5])
def test_kill_at_any_moment_ends_with_the_true_outcome(speed, repo, kill_after):
    bot = speed()
    url, _ = repo("echo one\nsleep 0.5\necho two\nexit 4\n")
    deployment_id = bot.start_deployment(url)
    time.sleep(kill_after)  # sampling a moment of the deployment's life, not waiting out a race
    bot.kill9()
    bot.start()
    info = bot.wait_finished(deployment_id)
    results = bot.results(deployment_id)
    assert (info["status"], info["exit_code"]) == ("Failed", 4), results
    assert results.count("one\n") == 1 and results.count("two\n") == 1


def test_sigterm_exits_cleanly_and_the_next_start_takes_over(speed, repo):
    bot = speed()
    url, _ = repo("echo working\nsleep 2\necho finished-work\n")
    deployment_id = bot.start_deployment(url)
    bot.wait_output(deployment_id, "working\n")
    bot.stop()
    assert bot.process.returncode == 0
    bot.start()
    info = bot.wait_finished(deployment_id)
    assert info["status"] == "Succeeded"
    assert bot.results(deployment_id).count("finished-work\n") == 1


@pytest.mark.parametrize("kill_at_line", [200, 1800, 3400])
def test_kill_during_output_writes_loses_and_repeats_nothing(speed, repo, kill_at_line):
    """kill -9 while output batches are being written: after restart every line is stored once."""
    bot = speed()
    url, _ = repo("i=0\nwhile [ $i -lt 4000 ]; do\n  echo \"line $i\"; i=$((i+1))\n"
                  "  [ $((i % 200)) -eq 0 ] && sleep 0.1\ndone\nexit 5\n")
    deployment_id = bot.start_deployment(url)
    bot.wait_output(deployment_id, f"line {kill_at_line}\n")
    bot.kill9()
    bot.start()
    info = bot.wait_finished(deployment_id)
    results = bot.results(deployment_id)
    assert (info["status"], info["exit_code"]) == ("Failed", 5), results[-500:]
    lines = [line for line in results.splitlines() if line.startswith("line ")]
    assert lines == [f"line {n}" for n in range(4000)]
