"""One contract, every backend: the Backend methods themselves, on real engines (the machine's
Docker engine; a real two-node swarm with a registry)."""
import asyncio
import contextlib
import time
import uuid

import aiohttp
import docker
import pytest
from aiohttp import web

from runner import docker_backend, swarm_backend
from runner.base import Limits, LogCursor
from runner.docker_backend import DockerBackend
from runner.errors import EngineUnavailable, RunnerError
from runner.swarm_backend import SwarmBackend
from tests.conftest import free_port
from tests.images import BASE_IMAGE

LIMITS = Limits(memory="64m", cpus=0.5, pids=64)
# One image for every test: what a container does comes from its SCRIPT.
DOCKERFILE = f'FROM {BASE_IMAGE}\nCOPY . /app\nCMD ["sh", "-c", "eval \\"$SCRIPT\\""]\n'
REPOSITORY = f"speed-contract-{uuid.uuid4().hex[:8]}"
BACKENDS = ["docker", "swarm"]


def make_backend(name: str, swarm=None, constraints: tuple[str, ...] = ()):
    if name == "docker":
        return DockerBackend()
    return SwarmBackend(manager=swarm.swarm_host, registry=swarm.registry,
                        callback_host=swarm.callback_host, constraints=constraints,
                        network=swarm.network)


@pytest.fixture(scope="module")
def images():
    """The image each backend built, by backend: built once, by the first test that needs it."""
    return {}


@pytest.fixture(scope="module", autouse=True)
def remove_images(docker_client, images):
    yield
    # One listing (images.list() inspects each image, and another run may remove one meanwhile).
    for image in docker_client.api.images():
        for tag in image.get("RepoTags") or []:
            if REPOSITORY in tag:
                with contextlib.suppress(docker.errors.NotFound):
                    docker_client.api.remove_image(tag, force=True)


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    return request.param


@pytest.fixture
def swarm_if_needed(request, backend_name):
    return request.getfixturevalue("swarm") if backend_name == "swarm" else None


@pytest.fixture
async def backend(backend_name, swarm_if_needed, base_image):
    return make_backend(backend_name, swarm_if_needed)


@pytest.fixture
async def image(backend, backend_name, images, tmp_path):
    """The contract's image, built by this backend (once a session)."""
    if backend_name not in images:
        (tmp_path / "Dockerfile").write_text(DOCKERFILE)
        output: list[str] = []

        async def sink(text: str) -> None:
            output.append(text)

        tag = f"{REPOSITORY}:1-{backend_name}"
        image_id = await backend.build(str(tmp_path), tag, sink, LIMITS)
        assert image_id.startswith("sha256:")
        assert "COPY . /app" in "".join(output)  # the build's log reached the sink
        images[backend_name] = tag
    return images[backend_name]


@pytest.fixture
async def run(backend, image):
    """Create (and optionally start) a container of the contract's image running a script;
    every one made is cleaned up after the test."""
    made: list[tuple] = []

    async def make(script: str, *, start: bool = True, port: int | None = None,
                   limits: Limits = LIMITS, labels: dict | None = None, on=None) -> str:
        on = on or backend
        labels = {"speed.instance": "contract", "speed.test": uuid.uuid4().hex, **(labels or {})}
        name = f"speed-contract-{uuid.uuid4().hex[:12]}"
        container = await on.create(name, image, {"SCRIPT": script}, labels, limits, port)
        made.append((on, container))
        if start:
            await on.start(container)
        return container

    yield make
    await asyncio.gather(*(on.cleanup(container) for on, container in made))


async def output_of(backend, container, after=None, follow=False) -> list[tuple[int, str]]:
    async with contextlib.aclosing(backend.logs(container, after, follow)) as pieces:
        return [piece async for piece in pieces]


async def poll(check, timeout: float = 30.0):
    """The first truthy value of check(), polled until timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.1)


async def test_an_engine_that_does_not_answer_is_engine_unavailable(backend_name, swarm_if_needed,
                                                                    monkeypatch, tmp_path):
    gone = f"unix://{tmp_path}/no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", gone)  # the docker backend's engine, the swarm's builder
    if backend_name == "docker":
        backend = DockerBackend()
    else:
        backend = SwarmBackend(gone, swarm_if_needed.registry)
    with pytest.raises(EngineUnavailable):
        await backend.ping()


async def test_a_job_runs_and_its_followed_output_ends_with_it(backend, run):
    container = await run("echo first; sleep 1; echo second")
    async with asyncio.timeout(30):
        followed = await output_of(backend, container, follow=True)
        state = await backend.wait(container)
    assert state.exited and state.exit_code == 0 and not state.oom_killed
    text = "".join(piece for _, piece in followed)
    # Following may end a moment before the last line lands (Docker 20.10): the pipeline reads
    # once more without following, as here.
    text += "".join(p for _, p in await output_of(backend, container, LogCursor(followed[-1][0]))
                    ) if followed and "second" not in text else ""
    assert "first\n" in text and "second\n" in text


async def test_a_created_container_does_not_run_until_started(backend, run):
    container = await run("echo ran", start=False)
    state = await backend.state(container)
    assert state is not None and state.never_started
    await backend.start(container)
    async with asyncio.timeout(30):
        assert (await backend.wait(container)).exit_code == 0


async def test_a_non_zero_exit_is_its_exit_code(backend, run):
    container = await run("echo failing >&2; exit 3")
    async with asyncio.timeout(30):
        state = await backend.wait(container)
    assert state.exit_code == 3 and not state.oom_killed
    assert "failing\n" in "".join(p for _, p in await output_of(backend, container))


async def test_out_of_memory_is_reported(backend, run):
    container = await run("x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived",
                          limits=Limits(memory="8m", cpus=0.5, pids=64))
    async with asyncio.timeout(30):
        state = await backend.wait(container)
    assert state.oom_killed and state.exit_code == 137


async def test_limits_reach_the_container(backend, run):
    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max "
              "/sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us")
    container = await run(script, limits=Limits(memory="48m", cpus=0.5, pids=37))
    async with asyncio.timeout(30):
        assert (await backend.wait(container)).exit_code == 0
    memory, pids, quota, period = "".join(p for _, p in await output_of(backend, container)).split()
    assert (int(memory), int(pids), int(quota) / int(period)) == (48 * 2**20, 37, 0.5)


async def test_kill_makes_wait_return(backend, backend_name, swarm_if_needed, run):
    labels = {"speed.test": uuid.uuid4().hex}
    container = await run("echo started; sleep 120", labels=labels)
    await poll(lambda: _printed(backend, container, "started"))
    began = time.monotonic()
    await backend.kill(container)
    async with asyncio.timeout(20):
        state = await backend.wait(container)
    assert state.exited and state.exit_code == 137 and not state.oom_killed
    assert time.monotonic() - began < 10
    assert running(backend_name, swarm_if_needed, labels) == []  # on no node
    await backend.kill(container)  # killing what ended already is no error


@pytest.mark.parametrize("backend_name", ["docker"])
async def test_a_sigkill_speed_did_not_send_under_a_memory_limit_is_out_of_memory(
        backend, run, docker_client):
    """Docker 20.10 flags OOMKilled only when the kernel's OOM event beats the exit (under load
    it does not), and a restart policy's next start forgets it: a SIGKILL from outside SPEED,
    as the OOM killer sends it, reads as out of memory (the swarm backend reads tasks so too)."""
    container = await run("echo started; sleep 120")
    await poll(lambda: _printed(backend, container, "started"))
    docker_client.api.kill(container)  # not backend.kill: someone else's SIGKILL
    async with asyncio.timeout(20):
        state = await backend.wait(container)
    assert state.exit_code == 137 and state.oom_killed


def running(backend_name: str, swarm, labels: dict) -> list[str]:
    """The running containers with labels on the backend's engines (each node's, for a swarm)."""
    engines = [None] if backend_name == "docker" else [swarm.swarm_host, swarm.worker_host]
    found = []
    for engine in engines:
        client = docker.from_env() if engine is None else docker.DockerClient(base_url=engine)
        selector = [f"{key}={value}" for key, value in labels.items()]
        found += [c["Id"] for c in client.api.containers(filters={"label": selector})]
    return found


async def _printed(backend, container, text: str) -> bool:
    return text in "".join(p for _, p in await output_of(backend, container))


async def _running(backend, container) -> bool:
    state = await backend.state(container)
    return state is not None and state.status == "running"


async def test_find_by_labels(backend, run):
    mark = uuid.uuid4().hex
    container = await run("true", start=False, labels={"speed.deployment": mark})
    found = await backend.find({"speed.instance": "contract", "speed.deployment": mark})
    assert list(found) == [container]
    # With all its labels: the sweep tells by them which deployment a container belongs to.
    assert found[container]["speed.deployment"] == mark
    assert await backend.find({"speed.deployment": uuid.uuid4().hex}) == {}


async def test_cleanup_removes_it_and_is_idempotent(backend, backend_name, swarm_if_needed, run):
    labels = {"speed.test": uuid.uuid4().hex}
    container = await run("echo started; sleep 60", labels=labels)
    await poll(lambda: _printed(backend, container, "started"))
    await backend.cleanup(container)
    assert await backend.state(container) is None
    assert running(backend_name, swarm_if_needed, labels) == []  # on no node
    await backend.cleanup(container)  # gone already: no error
    await backend.cleanup(image=f"{REPOSITORY}:never-built")


async def test_cleanup_ends_a_running_service(backend, backend_name, swarm_if_needed, run):
    labels = {"speed.test": uuid.uuid4().hex}
    release = await run("echo -n up > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
                        port=8080, labels=labels)
    assert await _serves(await backend.address(release, 8080)) == "up"
    await backend.cleanup(release)
    assert await backend.state(release) is None

    async def ended():  # the swarm stops a removed service's containers a moment later
        return not running(backend_name, swarm_if_needed, labels)

    await poll(ended, timeout=15)


async def test_a_service_serves_its_port_at_its_address(backend, run):
    container = await run("echo -n served > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
                          port=8080)
    address = await backend.address(container, 8080)
    assert address is not None
    assert await _serves(address) == "served"


async def _serves(address: str, timeout: float = 30.0) -> str:
    """The body at http://address/ once it answers."""
    async with aiohttp.ClientSession() as session:
        async def get():
            # A request that timed out is tried again too: on a loaded machine the first one to
            # a node's new port took over 2 s (seen once in a full run), the poll allows 30.
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(f"http://{address}/index.html",
                                       timeout=aiohttp.ClientTimeout(total=2)) as response:
                    return await response.text() if response.status == 200 else None
        return await poll(get, timeout)


async def test_a_failing_service_is_restarted_a_bounded_number_of_times(backend, backend_name, run):
    container = await run("echo run; exit 5", port=8080)

    async def ended():
        state = await backend.state(container)
        return state if state and state.exited else None

    state = await poll(ended, timeout=60)
    restarts = {"docker": docker_backend.RESTARTS, "swarm": swarm_backend.RESTARTS}[backend_name]
    assert (state.exit_code, state.last_exit, state.restarts) == (5, 5, restarts)
    assert "".join(p for _, p in await output_of(backend, container)) == "run\n" * (restarts + 1)


async def test_another_backend_reattaches_by_labels(backend_name, swarm_if_needed, run):
    """What a replica that takes over a deployment does: a backend of its own finds the
    container by its labels, reads its output and waits for its exit."""
    mark = uuid.uuid4().hex
    container = await run("echo one; sleep 1; echo two; exit 6", labels={"speed.deployment": mark})
    adopter = make_backend(backend_name, swarm_if_needed)
    assert list(await adopter.find({"speed.deployment": mark})) == [container]
    async with asyncio.timeout(30):
        assert (await adopter.wait(container)).exit_code == 6
    assert "".join(p for _, p in await output_of(adopter, container)) == "one\ntwo\n"


async def test_a_reused_image_runs_under_its_new_tag(backend, image, run, docker_client):
    tag = f"{REPOSITORY}:2-{uuid.uuid4().hex[:6]}"
    assert await backend.reuse_image([f"{REPOSITORY}:gone", image], tag) == image
    assert await backend.reuse_image([f"{REPOSITORY}:gone"], f"{REPOSITORY}:3-x") is None
    labels = {"speed.test": uuid.uuid4().hex}
    container = await backend.create(f"speed-contract-{uuid.uuid4().hex[:12]}", tag,
                                     {"SCRIPT": "echo reused"}, labels, LIMITS)
    try:
        await backend.start(container)
        async with asyncio.timeout(30):
            assert (await backend.wait(container)).exit_code == 0
        assert "".join(p for _, p in await output_of(backend, container)) == "reused\n"
    finally:
        await backend.cleanup(container, image=tag)
    # Every local name of it goes (the swarm backend's registry name too); the built one stays.
    tags = [t for i in docker_client.api.images() for t in i.get("RepoTags") or []]
    assert [t for t in tags if t.endswith(tag)] == [] and image in tags


async def test_pruning_keeps_the_newest_and_the_spared(backend, image, docker_client):
    repository = f"speed-prune-{uuid.uuid4().hex[:8]}"
    for number in range(1, 5):
        assert await backend.reuse_image([image], f"{repository}:{number}-ab") == image
    try:
        async def spared() -> set[str]:
            return {f"{repository}:1-ab"}

        await backend.prune_images(repository, 2, spared)
        tags = {t for i in docker_client.api.images() for t in i.get("RepoTags") or []
                if repository in t}
        names = {t.rpartition("/")[2] for t in tags}  # the swarm's registry names too
        assert names == {f"{repository}:{n}-ab" for n in (1, 3, 4)}, tags
    finally:
        for tag in {t for i in docker_client.api.images() for t in i.get("RepoTags") or []
                    if repository in t}:
            docker_client.api.remove_image(tag)


async def test_output_resumes_after_a_cursor_without_repeats(backend, run):
    container = await run("for i in $(seq 1 40); do echo line$i; done")
    async with asyncio.timeout(30):
        await backend.wait(container)
    pieces = await output_of(backend, container)
    assert "".join(p for _, p in pieces) == "".join(f"line{i}\n" for i in range(1, 41))
    cursor = None
    for at, _ in pieces[:15]:
        cursor = cursor.after(at) if cursor else LogCursor(at)
    rest = await output_of(backend, container, cursor)
    assert [p for _, p in rest] == [p for _, p in pieces[15:]]


# The swarm's own: placement on both nodes, reaching SPEED from every node, a drained node.

@pytest.mark.parametrize("backend_name", ["swarm"])
async def test_jobs_on_both_nodes_reach_the_callback_host(swarm, backend, run):
    hits: list[str] = []

    async def hit(request: web.Request) -> web.Response:
        hits.append(request.query["from"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/hit", hit)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, swarm.callback_host, port).start()
    try:
        callback = f"http://{await backend.callback_host()}:{port}/hit"
        containers = {}
        for node in (swarm.manager_node, swarm.worker_node):
            pinned = make_backend("swarm", swarm, constraints=(f"node.id=={node}",))
            containers[node] = (pinned, await run(f"wget -qO- '{callback}?from={node}'", on=pinned))
        async with asyncio.timeout(30):
            for node, (pinned, container) in containers.items():
                assert (await pinned.wait(container)).exit_code == 0
                assert await pinned.node(container) == node
    finally:
        await runner.cleanup()
    assert sorted(hits) == sorted([swarm.manager_node, swarm.worker_node])


@pytest.mark.parametrize("backend_name", ["swarm"])
async def test_deployments_on_one_node_cannot_reach_each_other(swarm, backend, run):
    """On the worker (the tests' manager engine keeps out of the host's iptables, so it cannot
    enforce this): a release's port answers at its node's address, never to a neighbour."""
    pinned = make_backend("swarm", swarm, constraints=(f"node.id=={swarm.worker_node}",))
    server = await run("hostname -i; echo -n private > /tmp/index.html; "
                       "exec httpd -f -p 8080 -h /tmp", port=8080, on=pinned)
    assert await _serves(await pinned.address(server, 8080)) == "private"
    own = (await poll(lambda: _printed(pinned, server, "."))) and "".join(
        p for _, p in await output_of(pinned, server)).split()[0]
    probe = await run(f"timeout 3 wget -qO- http://{own}:8080/index.html; echo rc=$?", on=pinned)
    async with asyncio.timeout(30):
        await pinned.wait(probe)
    seen = "".join(p for _, p in await output_of(pinned, probe))
    assert "private" not in seen and "rc=0" not in seen, seen


@pytest.mark.parametrize("backend_name", ["swarm"])
async def test_releases_on_both_nodes_serve_at_their_nodes_addresses(swarm, backend, run):
    script = "echo -n $(hostname) > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"
    served = {}
    for node in (swarm.manager_node, swarm.worker_node):
        pinned = make_backend("swarm", swarm, constraints=(f"node.id=={node}",))
        release = await run(script, port=8080, on=pinned)
        assert await poll(lambda: pinned.node(release)) == node
        address = await pinned.address(release, 8080)
        served[address.split(":")[0]] = await _serves(address)
    # Each at its own node's address, each a container of its own.
    assert len(served) == 2 and len(set(served.values())) == 2, served


@pytest.mark.parametrize("backend_name", ["swarm"])
async def test_a_job_on_a_node_drained_meanwhile_runs_to_its_end(swarm, backend, run, docker_client):
    """Swarm 20.10 leaves a running job's task alone when its node is drained (its desired
    state is complete, which draining does not change): the job ends as it would have, its
    whole output and exit code recorded; the next job runs on another node."""
    manager = docker.DockerClient(base_url=swarm.swarm_host).api
    pinned = make_backend("swarm", swarm, constraints=("node.labels.speed.node==worker",))
    container = await run("echo before; sleep 2; echo after; exit 4", on=pinned)
    await poll(lambda: _printed(pinned, container, "before"))  # its container runs
    worker = manager.inspect_node(swarm.worker_node)
    spec = {**worker["Spec"], "Availability": "drain"}
    manager.update_node(swarm.worker_node, worker["Version"]["Index"], spec)
    try:
        later = await run("echo next")
        async with asyncio.timeout(30):
            state = await pinned.wait(container)
            assert (await backend.wait(later)).exit_code == 0
        assert state.exit_code == 4
        assert "".join(p for _, p in await output_of(pinned, container)) == "before\nafter\n"
        assert await backend.node(later) == swarm.manager_node
    finally:
        worker = manager.inspect_node(swarm.worker_node)
        manager.update_node(swarm.worker_node, worker["Version"]["Index"],
                            {**worker["Spec"], "Availability": "active"})


@pytest.mark.parametrize("backend_name", ["swarm"])
async def test_a_release_whose_node_is_drained_is_restarting_and_comes_back_at_its_address(
        swarm, backend, run):
    """A release stays on its node (its address is the proxy's route): drained, its task is
    shut down and the next one waits, which state reports as restarting; once the node is
    active again the release serves at the very same address."""
    manager = docker.DockerClient(base_url=swarm.swarm_host).api
    pinned = make_backend("swarm", swarm, constraints=(f"node.id=={swarm.worker_node}",))
    release = await run("echo -n up > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
                        port=8080, on=pinned)
    address = await pinned.address(release, 8080)
    assert await _serves(address) == "up"
    _availability(manager, swarm.worker_node, "drain")
    try:
        async def restarting():
            state = await pinned.state(release)
            return state.status == "restarting" and state.restarts == 1

        await poll(restarting)
        assert await pinned.address(release, 8080) == address
    finally:
        _availability(manager, swarm.worker_node, "active")
    assert await _serves(address) == "up"
    assert await poll(lambda: _running(pinned, release))


def _availability(manager, node: str, availability: str) -> None:
    info = manager.inspect_node(node)
    manager.update_node(node, info["Version"]["Index"],
                        {**info["Spec"], "Availability": availability})


@pytest.mark.parametrize("backend_name", ["swarm"])
async def test_an_image_the_nodes_cannot_pull_is_a_clear_failure(backend, run):
    container = await backend.create(f"speed-contract-{uuid.uuid4().hex[:12]}",
                                     f"{REPOSITORY}:never-pushed", {}, {"speed.test": "x"}, LIMITS)
    try:
        await backend.start(container)
        with pytest.raises(RunnerError, match="gave no exit code: task rejected"):
            async with asyncio.timeout(60):
                await backend.wait(container)
    finally:
        await backend.cleanup(container)
