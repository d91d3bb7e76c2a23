"""kill -9 of SPEED at any moment (mid-clone, mid-build, while a container runs, while its output
is stored) ends every deployment with its true outcome; nothing reruns. SIGTERM exits cleanly,
starts nothing new, and hands running and queued deployments to the next start.

Every test ends with a SPEED running, which the invariant (tests/invariants.py) is checked on."""
import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import DOCKERFILE, free_port
from tests.process import ROOT, SpeedProcess, speed_processes
from tests.tcp_proxy import HoldingProxy, transfers_a_pack

pytestmark = pytest.mark.slow


@pytest.fixture
def proxy(git_server):
    """The test git server behind a proxy that can hold the clone's pack transfer."""
    holding = HoldingProxy(git_server.base_url)
    yield holding
    holding.close()


@pytest.fixture
def speed(tmp_path, docker_client, base_image):
    """make(**runner) starts SPEED as a process; after the test the invariant holds for it."""
    with speed_processes(tmp_path, docker_client) as make:
        yield make


def test_running_container_is_reattached_and_keeps_streaming(speed, repo):
    """Fault: kill -9 while the container runs (Drone's zombie builds). Asserts: after restart
    it Succeeds, each line and one start stored; a 2nd kill -9 changes nothing (Nomad)."""
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
    """Fault: kill -9 while the container runs; it exits 3 while SPEED is down. Asserts: after
    restart the deployment is Failed with exit code 3 and both of its lines stored once."""
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
    """Fault: kill -9 while the container runs, then the container is removed while SPEED is down.
    Asserts: after restart, Failed with 'interrupted: the container vanished' (no zombie)."""
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
    """Fault: kill -9 during the image build, before any container. Asserts: after restart it is
    deployed again ('deploying again'), Succeeds, and its container's output appears once."""
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


def test_kill_during_clone_deploys_again_and_the_orphaned_git_exits(speed, repo, proxy):
    """Fault: kill -9 while git is mid-clone (a proxy holds the pack transfer, so the kill lands
    after the ref listing and before any object arrived). Asserts: at the kill the deployment is
    Running with a git clone under way and nothing checked out, no commit, no container; once
    the server answers, no git process of the dead SPEED is left running (its clone runs in a
    session of its own, so it may outlive SPEED until then); after restart the deployment is
    deployed again, Succeeds with its commit, and its container started and ran once."""
    bot = speed()
    url, commit = repo("echo cloned-and-ran\n")
    proxy.hold(transfers_a_pack)
    deployment_id = bot.start_deployment(proxy.url(url))
    proxy.wait_held(1)
    bot.wait_output(deployment_id, "[speed] cloning")  # output is stored in batches
    assert bot.info(deployment_id)["status"] == "Running"
    assert "checked out" not in bot.results(deployment_id)
    clone = bot.git_processes()
    assert any(" clone " in p.command for p in clone), clone
    bot.kill9()
    row = bot.row(deployment_id)
    assert (row["status"], row["commit"], row["container_id"]) == ("Running", None, None)
    proxy.release()
    bot.wait_until(lambda: not any(p.running() for p in clone), timeout=30)
    bot.start()
    info = bot.wait_finished(deployment_id)
    results = bot.results(deployment_id)
    assert (info["status"], info["commit"]) == ("Succeeded", commit), results
    assert "deploying again" in results
    assert results.count("[speed] starting the container") == 1
    assert results.count("cloned-and-ran\n") == 1
    assert proxy.held_total == 1


def test_kill_during_a_stalled_clone_leaves_no_git_past_git_timeout(speed, repo, proxy):
    """Fault: kill -9 while git is mid-clone from a server that then never answers (the proxy
    keeps holding that one request). Asserts: the restart deploys it again (the new clone is not
    held) and it Succeeds; and no git of the dead SPEED still runs runner.git_timeout (+10 s
    slack) after the kill, as git runs "with a timeout" (README, Security model)."""
    git_timeout = 10
    bot = speed(git_timeout=git_timeout)
    url, _ = repo("echo ran\n")
    proxy.hold(transfers_a_pack, limit=1)
    deployment_id = bot.start_deployment(proxy.url(url))
    proxy.wait_held(1)
    clone = bot.git_processes()
    assert any(" clone " in p.command for p in clone), clone
    killed_at = time.monotonic()
    bot.kill9()
    bot.start()
    assert bot.wait_finished(deployment_id)["status"] == "Succeeded"
    bound = killed_at + git_timeout + 10
    running = []
    while time.monotonic() < bound:
        running = [p for p in clone if p.running()]
        if not running:
            break
        time.sleep(0.1)
    if running:
        raise AssertionError(f"{git_timeout + 10} s after the kill these still run: {running}")


def test_kill_during_clone_leaves_no_workspace_behind(speed, repo, proxy, tmp_path):
    """Fault: kill -9 while git is mid-clone; the clone then completes on its own. Asserts: once
    the restarted SPEED has deployed it again (Succeeded) and nothing runs, runner.workdir holds
    no workspace: the dead process's clone was not left on disk."""
    bot = speed()
    url, _ = repo("echo ran\n")
    proxy.hold(transfers_a_pack)
    deployment_id = bot.start_deployment(proxy.url(url))
    proxy.wait_held(1)
    clone = bot.git_processes()
    bot.kill9()
    proxy.release()
    bot.wait_until(lambda: not any(p.running() for p in clone), timeout=30)
    bot.start()
    assert bot.wait_finished(deployment_id)["status"] == "Succeeded"
    workdir = tmp_path / "work"
    left = sorted(str(p.relative_to(workdir)) for p in workdir.glob("*/*"))
    if left:
        raise AssertionError(f"left in {workdir}: {left}")


def test_queued_deployments_survive_and_run_after_restart(speed, repo):
    """Fault: kill -9 with one deployment running and one Pending (max_concurrent 1). Asserts:
    after restart, cancelling the first lets the queued one run and Succeed; first Cancelled."""
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
    """Fault: kill -9 0-1.5 s after /start, in whichever phase that falls. Asserts: after restart
    the deployment is Failed with its exit code 4, each of its two lines stored once."""
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
    """Fault: SIGTERM while a container runs. Asserts: SPEED exits with code 0, and after the next
    start the deployment ends Succeeded with its last line stored once."""
    bot = speed()
    url, _ = repo("echo working\nsleep 2\necho finished-work\n")
    deployment_id = bot.start_deployment(url)
    bot.wait_output(deployment_id, "working\n")
    bot.stop()
    assert bot.process.returncode == 0
    assert bot.log_path.read_text().rstrip().endswith("INFO speed: stopped")
    bot.start()
    info = bot.wait_finished(deployment_id)
    assert info["status"] == "Succeeded"
    assert bot.results(deployment_id).count("finished-work\n") == 1


def test_a_second_speed_on_a_port_in_use_says_so_in_one_line(speed, tmp_path):
    """Found by a hostile user: a port in use ended start-up in a traceback. Asserts: exit code
    1 and one line naming the address; the SPEED already there serves on."""
    bot = speed()
    port = int(bot.base_url.rsplit(":", 1)[1])
    (tmp_path / "second").mkdir()
    second = SpeedProcess(tmp_path / "second", port, free_port())
    # Not second.start(): it would take the first SPEED's answers for the second's.
    ended = subprocess.run([sys.executable, "main.py", "--config", str(second.config_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    last = ended.stderr.rstrip().splitlines()[-1]
    assert ended.returncode == 1, ended.stderr[-2000:]
    assert last == (f"speed: cannot listen: error while attempting to bind on address "
                    f"('127.0.0.1', {port}): address already in use"), last
    assert "Traceback" not in ended.stderr
    assert bot.call("GET", "/deployments")[0] == 200


def _post_start(bot, url: str) -> tuple[str, int | None]:
    """POST /start: ("201", id); ("refused", None) if nothing listens; ("dropped: …", None) if
    the connection closed without an answer, ("no answer: …", None) if none came in 10 s."""
    try:
        status, body = bot.call("POST", "/start", {"url": url, "branch": "main"})
    except requests.Timeout as e:
        return f"no answer: {e}", None
    except requests.ConnectionError as e:
        reason = getattr(e.args[0], "reason", None)
        refused = isinstance(getattr(reason, "__cause__", None), ConnectionRefusedError)
        return ("refused" if refused else f"dropped: {e}"), None
    return str(status), body.get("id") if status == 201 else None


def _refuses(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return False
    except ConnectionRefusedError:
        return True


# Runs until the test creates /tmp/finish in its container, then exits 6.
BLOCKER = ("echo blocking\nwhile [ ! -e /tmp/finish ]; do sleep 0.1; done\n"
           "echo blocker-done\nexit 6\n")


def _blocker_and_queued(bot, repo) -> tuple[int, str, int, str]:
    """A deployment running (blocker; its container id) and one Pending behind it (its url)."""
    blocker = bot.start_deployment(repo(BLOCKER)[0])
    url, _ = repo("echo queued-ran\n")
    queued = bot.start_deployment(url)
    bot.wait_output(blocker, "blocking\n")
    assert bot.info(queued)["status"] == "Pending"
    return blocker, bot.row(blocker)["container_id"], queued, url


def _receive_until(connection: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = connection.recv(65536)
        assert chunk, f"closed before {marker!r}: {received!r}"
        received += chunk
    return received


def _finish(docker_client, container_id: str) -> None:
    docker_client.api.exec_start(docker_client.api.exec_create(container_id, "touch /tmp/finish"))


def _stored_ids(bot) -> set[int]:
    with contextlib.closing(sqlite3.connect(bot.db_path)) as db:
        return {row[0] for row in db.execute("SELECT id FROM deployment")}


def _assert_true_outcomes_once(bot, blocker: int, others: list[int]) -> None:
    """The blocker Failed with its exit code 6, the others Succeeded; one start, lines once."""
    info = bot.wait_finished(blocker)
    results = bot.results(blocker)
    assert (info["status"], info["exit_code"]) == ("Failed", 6), results
    assert results.count("blocking\n") == 1 and results.count("blocker-done\n") == 1
    assert results.count("[speed] starting the container") == 1
    for deployment_id in others:
        info = bot.wait_finished(deployment_id)
        results = bot.results(deployment_id)
        assert info["status"] == "Succeeded", results
        assert results.count("queued-ran\n") == 1
        assert results.count("[speed] starting the container") == 1


def test_sigterm_starts_nothing_new_and_hands_everything_to_the_next_start(
        speed, repo, docker_client):
    """Fault: SIGTERM with runner.max_concurrent 1, one deployment running, one queued, and
    /start requests arriving after the signal until they are refused. Asserts: SPEED exits 0
    within 10 s; the exiting process started nothing (the queued one and every acknowledged late
    one still Pending in the database file, no container of theirs) and left the running
    container running, its row Running; every late /start was refused, answered 201 and stored,
    or (caught between the signal and the listener closing) left without an answer and not
    stored, the last one refused; the next start reattaches to the running container; each
    deployment ends with its true outcome (blocker Failed with its exit code 6, the others
    Succeeded), each container started once and each line stored once."""
    bot = speed(max_concurrent=1)
    blocker, container_id, queued, url = _blocker_and_queued(bot, repo)

    sent = bot.sigterm()
    late = []  # /start after the signal: poll until the listener is gone
    bot.wait_until(lambda: late.append(_post_start(bot, url)) or late[-1][0] == "refused", 10)
    assert all(outcome in ("201", "refused") or outcome.startswith(("dropped", "no answer"))
               for outcome, _ in late), late
    acknowledged = [i for outcome, i in late if outcome == "201"]

    code, seconds = bot.wait_exit(sent, timeout=20)
    assert code == 0 and seconds < 10, (code, seconds, bot.log_path.read_text()[-2000:])
    assert _stored_ids(bot) == {blocker, queued, *acknowledged}, late
    for deployment_id in [queued, *acknowledged]:
        row = bot.row(deployment_id)
        assert (row["status"], row["started_at"], row["container_id"]) == ("Pending", None, None)
        assert not docker_client.api.containers(
            all=True, filters={"label": [f"speed.instance={bot.instance}",
                                         f"speed.deployment={deployment_id}"]})
    assert (bot.row(blocker)["status"], bot.row(blocker)["finished_at"]) == ("Running", None)
    assert docker_client.api.inspect_container(container_id)["State"]["Running"]

    bot.start()  # it takes the running container over, then finishes it
    bot.wait_until(lambda: f"reattaching deployment={blocker}\n" in bot.log_path.read_text())
    _finish(docker_client, container_id)
    _assert_true_outcomes_once(bot, blocker, [queued, *acknowledged])


@pytest.mark.parametrize("open_request", ["live-log-stream", "request-body-in-flight"])
def test_sigterm_with_an_open_request_exits_promptly_and_starts_nothing(
        speed, repo, docker_client, open_request):
    """Fault: SIGTERM (runner.max_concurrent 1, one deployment running, one queued) while a
    client holds a request open: the running deployment's live log (/deployments/<id>/events,
    as the dashboard and `speed logs -f` read it), or a /start whose headers were read (100
    Continue) and whose body comes after the signal. Asserts: SPEED exits 0 within 10 s of the
    signal; when the running deployment then ends, an exiting SPEED does not start the queued
    one; a /start acknowledged is stored, one dropped is not; after the restart every deployment
    ends with its true outcome once. (A SPEED still up after that is killed -9, as a supervisor
    would, and the outcomes are still checked.)"""
    bot = speed(max_concurrent=1)
    blocker, container_id, queued, url = _blocker_and_queued(bot, repo)
    port = int(bot.base_url.rsplit(":", 1)[1])
    held = socket.create_connection(("127.0.0.1", port), timeout=30)
    body = json.dumps({"url": url, "branch": "main"}).encode()
    if open_request == "live-log-stream":
        held.sendall(b"GET /deployments/%d/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % blocker)
        _receive_until(held, b"event: status")
    else:
        held.sendall(b"POST /start HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        assert _receive_until(held, b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue")

    sent = bot.sigterm()
    bot.wait_until(lambda: _refuses(port), 10)  # the listener is gone: shutting down
    if open_request == "request-body-in-flight":
        held.sendall(body)
    code, seconds = bot.wait_exit(sent, timeout=10)
    # The running deployment ends now: a SPEED still exiting must not start the queued one.
    _finish(docker_client, container_id)
    deadline = time.monotonic() + 10
    while (bot.process.poll() is None and bot.row(queued)["started_at"] is None
           and time.monotonic() < deadline):
        time.sleep(0.05)
    started_while_exiting = bot.row(queued)["started_at"] is not None
    if bot.process.poll() is None:
        bot.kill9()
    held.settimeout(5)
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := held.recv(65536):
            answer += chunk
    held.close()
    acknowledged = []
    if open_request == "request-body-in-flight" and answer.startswith(b"HTTP/1.1 201 "):
        acknowledged.append(json.loads(answer.partition(b"\r\n\r\n")[2])["id"])
    assert _stored_ids(bot) == {blocker, queued, *acknowledged}, answer

    bot.start()
    _assert_true_outcomes_once(bot, blocker, [queued, *acknowledged])
    if (code, seconds < 10, started_while_exiting) != (0, True, False):
        raise AssertionError(f"exit code {code} after {seconds:.1f} s (None: still up, killed -9); "
                       f"queued started while exiting: {started_while_exiting}")


@pytest.mark.parametrize("kill_at_line", [200, 1800, 3400])
def test_kill_during_output_writes_loses_and_repeats_nothing(speed, repo, kill_at_line):
    """Fault: kill -9 while a container's 4000 lines are being stored (at line 200, 1800 or 3400).
    Asserts: after restart Failed with exit code 5, lines 0-3999 each stored once, in order."""
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


def test_a_restart_in_a_new_pid_namespace_reattaches_at_once(speed, repo, monkeypatch):
    """Fault: SPEED in a container is restarted (a new pid namespace: the dead process's pid
    means nothing here). Asserts: on SQLite, one process by definition, the restarted SPEED
    takes over at once, not when the dead one's lease (30 s) runs out."""
    import subprocess

    import tests.process as process_module
    popen = subprocess.Popen
    monkeypatch.setattr(process_module.subprocess, "Popen", lambda args, **kw: popen(
        ["unshare", "--pid", "--fork", "--kill-child", *args], **kw))
    bot = speed()
    url, _ = repo("echo before\nsleep 4\necho after\n")
    deployment_id = bot.start_deployment(url)
    bot.wait_output(deployment_id, "before\n")
    owner = bot.row(deployment_id)["owner"]
    bot.kill9()
    bot.start()
    # Well within the 30 s lease: taken over at start-up.
    bot.wait_until(lambda: bot.row(deployment_id)["owner"] != owner, timeout=10)
    info = bot.wait_finished(deployment_id)
    results = bot.results(deployment_id)
    assert info["status"] == "Succeeded", results
    assert results.count("before\n") == 1 and results.count("after\n") == 1
