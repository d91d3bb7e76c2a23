"""Several SPEED replicas on one PostgreSQL database, as real processes: a replica killed or
stopped past its lease loses its deployments to another, which carries them on from where their
containers are; the stale one writes nothing; cancels and queued work reach whichever replica
runs or can run them."""
import contextlib
import glob
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import requests
from cryptography.fernet import Fernet

from tests.process import SpeedProcess
from tests.conftest import TEST_INSTANCES, TEST_POSTGRES_OPTIONS, ensure_postgres, free_port

pytestmark = pytest.mark.slow

LEASE = 3  # seconds: short, so a test waits a few seconds for an adoption, not thirty
LINES = 80


def counting(lines: int = LINES, pause: str = "0.1") -> str:
    """A job printing numbered lines at a steady pace, then exiting 0."""
    return f"i=1\nwhile [ $i -le {lines} ]; do echo line $i; i=$((i+1)); sleep {pause}; done\n"


def assert_every_line_once(results: str, lines: int = LINES) -> None:
    printed = [line for line in results.splitlines() if line.startswith("line ")]
    assert printed == [f"line {i}" for i in range(1, lines + 1)], results[-3000:]


@pytest.fixture
def replicas(tmp_path, postgres_url, docker_client, base_image):
    """make(name, **runner) starts a replica on the test's PostgreSQL database (or the one
    database_url names); all of them share one secrets key and one workdir, as replicas on one
    machine would."""
    key = Fernet.generate_key().decode()
    started: list[SpeedProcess] = []

    def make(name: str, database_url: str = postgres_url, **runner) -> SpeedProcess:
        folder = tmp_path / name
        folder.mkdir()
        runner.setdefault("lease", LEASE)
        runner.setdefault("workdir", str(tmp_path / "work"))
        replica = SpeedProcess(folder, free_port(), free_port(), sections={
            "database": {"url": database_url}, "secrets": {"key": key}}, **runner)
        replica.start()
        started.append(replica)
        TEST_INSTANCES.add(replica.instance)
        return replica

    try:
        yield make
        for replica in started:
            with contextlib.suppress(ProcessLookupError):
                replica.process.send_signal(signal.SIGCONT)
        if started:  # everything the replicas made is gone once their deployments finished
            labels = [f"speed.instance={replica.instance}" for replica in started]
            started[-1].wait_until(lambda: not any(docker_client.containers.list(
                all=True, filters={"label": label}, ignore_removed=True) for label in labels),
                timeout=30)
    finally:
        for replica in started:
            with contextlib.suppress(ProcessLookupError):
                replica.process.send_signal(signal.SIGCONT)
            replica.stop()


def owner(replica: SpeedProcess, deployment_id: int) -> str | None:
    return replica.sql("SELECT owner FROM deployment WHERE id = %s", (deployment_id,))[0][0]


def replica_id(replica: SpeedProcess) -> str:
    """The id of the replica's process (the newest replica row with its pid); one that names
    no replica while the process has not joined yet (it joins once its engine answers, after
    it began to serve: seen in a loaded run)."""
    rows = replica.sql("SELECT id FROM replica WHERE pid = %s ORDER BY started_at DESC LIMIT 1",
                       (replica.process.pid,))
    return rows[0][0] if rows else "(not joined yet)"


def test_a_killed_replicas_deployment_is_adopted_with_no_line_lost_or_doubled(replicas, repo):
    """Fault: kill -9 of the replica running a deployment. Asserts: another replica adopts it
    (at once: the dead process is on its machine), follows its container from the last line
    stored, and records its outcome; every line stored exactly once."""
    first = replicas("first")
    url, _ = repo(counting())
    deployment_id = first.start_deployment(url)
    first.wait_output(deployment_id, "line 5\n")
    second = replicas("second")  # joins while the first runs it: nothing to adopt yet
    assert owner(second, deployment_id) == replica_id(first)
    first.kill9()
    killed = time.monotonic()
    second.wait_until(lambda: owner(second, deployment_id) == replica_id(second), timeout=LEASE + 10)
    adopted_after = time.monotonic() - killed
    info = second.wait_finished(deployment_id)
    results = second.results(deployment_id)
    assert info["status"] == "Succeeded", results
    assert_every_line_once(results)
    assert results.count("[speed] starting the container") == 1
    assert adopted_after < LEASE + 10


def test_a_killed_replicas_swarm_job_is_adopted_and_followed_on_its_node(replicas, repo, swarm):
    """Fault: kill -9 of the replica running a job on the swarm (runner.backend: swarm). Asserts:
    another replica, reaching the same swarm through its manager, adopts it, follows the task's
    output from the last line stored and records its outcome; every line once; the job's
    service is gone afterwards."""
    import docker

    on_swarm = dict(backend="swarm", registry=swarm.registry, swarm_host=swarm.swarm_host,
                    callback_host=swarm.callback_host)
    first = replicas("first", **on_swarm)
    try:
        url, _ = repo(counting())
        deployment_id = first.start_deployment(url)
        first.wait_output(deployment_id, "line 5\n")
        second = replicas("second", **on_swarm)
        first.kill9()
        second.wait_until(lambda: owner(second, deployment_id) == replica_id(second),
                          timeout=LEASE + 10)
        info = second.wait_finished(deployment_id)
        results = second.results(deployment_id)
        assert info["status"] == "Succeeded", results
        assert_every_line_once(results)
        assert results.count("[speed] starting the container") == 1
        manager = docker.DockerClient(base_url=swarm.swarm_host)
        second.wait_until(lambda: not manager.services.list(
            filters={"label": f"speed.instance={first.instance}"}), timeout=30)
    finally:
        local = docker.from_env()
        repository = f"{swarm.registry}/speed-{first.instance}"
        for image in local.images.list(name=repository):
            for tag in image.tags:  # its own only: the same image may carry other tests' tags
                if tag.startswith(repository + ":"):
                    local.images.remove(tag, force=True)


def stopped_and_adopted(replicas, repo, lines: int, seen: int):
    """The first replica runs a counting job; it is stopped (SIGSTOP) past its lease, and the
    second adopts the job and stores up to line `seen`. (first, second, deployment id)."""
    first = replicas("first")
    url, _ = repo(counting(lines=lines))
    deployment_id = first.start_deployment(url)
    first.wait_output(deployment_id, "line 5\n")
    second = replicas("second")
    first.process.send_signal(signal.SIGSTOP)
    second.wait_until(lambda: owner(second, deployment_id) == replica_id(second),
                      timeout=LEASE + 10)
    second.wait_output(deployment_id, f"line {seen}\n")  # the second follows it now
    return first, second, deployment_id


def test_a_replica_stopped_past_its_lease_writes_nothing_when_it_goes_on(replicas, repo):
    """Fault: SIGSTOP of the replica running a deployment, past its lease, then SIGCONT while
    the container still runs. Asserts: another replica adopted it; the stale one, following the
    same container again, stores not one line and no outcome (fenced), says it let go, and
    then works on as a replica like any other."""
    first, second, deployment_id = stopped_and_adopted(replicas, repo, lines=120, seen=60)
    first.process.send_signal(signal.SIGCONT)
    first.wait_until(lambda: "another replica carries it on" in first.log_path.read_text(),
                     timeout=LEASE + 10)
    info = second.wait_finished(deployment_id)
    results = second.results(deployment_id)
    assert info["status"] == "Succeeded", results
    assert_every_line_once(results, lines=120)
    assert results.count("[speed] Succeeded") == 1
    # The stale replica renewed its lease and takes work again.
    other, _ = repo("echo from the first again\n")
    again = first.start_deployment(other)
    assert first.wait_finished(again)["status"] == "Succeeded"


def test_a_cancel_sent_to_any_replica_stops_the_container_where_it_runs(replicas, repo,
                                                                         docker_client):
    first = replicas("first")
    url, _ = repo("echo started\nsleep 300\n")
    deployment_id = first.start_deployment(url)
    first.wait_output(deployment_id, "started\n")
    second = replicas("second")
    status, body = second.call("POST", f"/cancel/{deployment_id}")
    assert (status, body["status"]) == (200, "Cancelled"), body
    cancelled = time.monotonic()

    def stopped():  # ids are per database: other tests' deployment 1 runs too
        return not docker_client.containers.list(filters={"status": "running", "label": [
            f"speed.instance={first.instance}", f"speed.deployment={deployment_id}"]})

    first.wait_until(stopped, timeout=10)
    # Seen by the first replica at its next heartbeat (every second): well within 2 s here.
    assert time.monotonic() - cancelled < 10
    assert first.info(deployment_id)["status"] == "Cancelled"


def test_work_queued_on_a_busy_replica_is_started_by_an_idle_one(replicas, repo):
    busy = replicas("busy", max_concurrent=1)
    idle = replicas("idle", max_concurrent=1)
    long_url, _ = repo("echo long\nsleep 300\n")
    short_url, _ = repo("echo short\n")
    long_id = busy.start_deployment(long_url)
    busy.wait_until(lambda: owner(busy, long_id) is not None)
    # Whichever replica took the long one, the short one queued on it runs on the other.
    holder = busy if owner(busy, long_id) == replica_id(busy) else idle
    free = idle if holder is busy else busy
    short_id = holder.start_deployment(short_url)
    assert holder.wait_finished(short_id)["status"] == "Succeeded"
    assert owner(busy, short_id) == replica_id(free)
    assert holder.call("POST", f"/cancel/{long_id}")[0] == 200


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of the test's own, to stop and start: (url, stop(), start())."""
    folder = tempfile.mkdtemp(prefix="speed-test-postgres-")  # the postgres user must reach it
    port = free_port()
    url = ensure_postgres(port, folder)
    pg_ctl = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]

    def control(*action: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", pg_ctl, "-D", f"{folder}/data", "-w",
                        *action], check=True, cwd="/", capture_output=True, timeout=60)

    def start() -> None:  # as scripts/ensure-postgres.sh starts it
        control("-l", f"{folder}/postgres.log", "-o", f"-p {port} -k {folder}/run -c "
                f"listen_addresses=127.0.0.1 {TEST_POSTGRES_OPTIONS}", "start")

    try:
        yield url, lambda: control("stop", "-m", "fast"), start
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            control("stop", "-m", "immediate")
        shutil.rmtree(folder, ignore_errors=True)


def test_replicas_wait_for_a_restarted_database_and_lose_nothing(replicas, repo, private_postgres):
    """Fault: PostgreSQL stops for longer than a lease while a deployment runs and another is
    queued, then starts again. Asserts: what was asked meanwhile is refused (503: nothing
    acknowledged); once it is back the running deployment goes on with every line once on the
    replica that ran it (no other adopted it: every lease ran out together, none was lost), the
    queued one runs, and the refused one does not exist."""
    url, stop, start = private_postgres
    first = replicas("first", database_url=url)
    second = replicas("second", database_url=url)
    running_url, _ = repo(counting(lines=60))
    queued_url, _ = repo("echo queued ran\n")
    running = first.start_deployment(running_url)
    first.wait_output(running, "line 5\n")
    stop()
    try:
        # The running deployment's output waits to be stored (as does the lease).
        first.wait_until(lambda: "waits for it" in first.log_path.read_text(), timeout=20)
        status, body = second.call("POST", "/start", {"url": queued_url, "branch": "main"})
        assert status == 503 and "database cannot be reached" in body["error"], body
        time.sleep(LEASE + 1)  # the fault: the database away for longer than a lease
    finally:
        start()
    queued = second.start_deployment(queued_url)
    assert second.wait_finished(queued)["status"] == "Succeeded"
    info = first.wait_finished(running)
    results = first.results(running)
    assert info["status"] == "Succeeded", results
    assert_every_line_once(results, lines=60)
    assert first.sql("SELECT count(*) FROM deployment") == [(2,)]
    # Claimed once, never adopted (an adoption claims it again).
    assert first.sql("SELECT claim FROM deployment WHERE id = %s", (running,)) == [(1,)]


def test_any_replica_shows_the_whole_cluster(replicas, repo):
    """Two replicas of one slot each, both busy: a third deployment's waiting reason and the
    metrics say so on either replica."""
    first = replicas("first", max_concurrent=1)
    second = replicas("second", max_concurrent=1)
    url, _ = repo("echo started\nsleep 300\n")
    busy = [first.start_deployment(url), second.start_deployment(url)]
    first.wait_until(lambda: all(first.info(i)["status"] == "Running" for i in busy))
    waiting = first.start_deployment(url)
    for replica in (first, second):
        assert replica.info(waiting)["waiting_reason"] == (
            "position 1 in the queue; 2 of 2 deployments running on 2 replicas "
            "(runner.max_concurrent of each)")
        metrics = requests.get(f"{replica.base_url}/metrics", timeout=10).text
        assert "speed_cluster_deployments_running 2.0" in metrics
        assert "speed_replicas 2.0" in metrics
        assert "speed_deployments_queued 1.0" in metrics
    for deployment_id in (waiting, *busy):
        assert second.call("POST", f"/cancel/{deployment_id}")[0] == 200


def test_a_deployment_given_back_to_a_stale_replica_has_every_line_once(replicas, repo):
    """Fault: the first replica is stopped past its lease, the second adopts and is killed, the
    first goes on and takes the deployment back. Asserts: its old run (of the first claim) is
    fenced out and let go; the new run stores every line exactly once."""
    first, second, deployment_id = stopped_and_adopted(replicas, repo, lines=150, seen=40)
    first_id = replica_id(first)
    second.kill9()  # the adopter dies while the first is still stopped
    first.process.send_signal(signal.SIGCONT)
    first.wait_until(lambda: owner(first, deployment_id) == first_id, timeout=LEASE + 10)
    info = first.wait_finished(deployment_id)
    results = first.results(deployment_id)
    assert info["status"] == "Succeeded", results
    assert_every_line_once(results, lines=150)


def test_a_cancel_while_the_owner_is_dead_stops_its_container(replicas, repo, monkeypatch,
                                                             docker_client):
    """Fault: the replica running a deployment dies (in a pid namespace of its own, as one on
    another machine looks), and the deployment is cancelled on another before the lease ran
    out. Asserts: its container is stopped and removed all the same, within a lease or so."""
    import tests.process as process_module
    popen = subprocess.Popen
    monkeypatch.setattr(process_module.subprocess, "Popen", lambda args, **kw: popen(
        ["unshare", "--pid", "--fork", "--kill-child", *args], **kw))
    first = replicas("first")
    monkeypatch.setattr(process_module.subprocess, "Popen", popen)
    url, _ = repo("echo started\nsleep 300\n")
    deployment_id = first.start_deployment(url)
    first.wait_output(deployment_id, "started\n")
    second = replicas("second")
    first.kill9()
    status, body = second.call("POST", f"/cancel/{deployment_id}")
    assert (status, body["status"]) == (200, "Cancelled"), body
    second.wait_until(lambda: not docker_client.containers.list(all=True, filters={"label": [
        f"speed.instance={first.instance}", f"speed.deployment={deployment_id}"]},
        ignore_removed=True), timeout=2 * LEASE + 10)
