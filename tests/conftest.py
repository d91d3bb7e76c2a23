"""Fixtures: a real Docker engine, real git over smart HTTP, real SQLite files, the real app."""
import asyncio
import contextlib
import pathlib
import socket
import sys
import threading
import time

import docker
import pytest

from bot.app import create_app
from bot.config import load
from bot.keys import worker_key
from tests.gitserver import GitServer
from tests.images import BASE_IMAGE, ensure_base_image

# The invariant check after fault tests (the app_invariants fixture).
pytest_plugins = ["tests.invariants"]

DOCKERFILE = f"FROM {BASE_IMAGE}\nCOPY . /app\nCMD [\"sh\", \"/app/run.sh\"]\n"


# Ports the tests listen on come from below the kernel's ephemeral range (32768-60999 here):
# a port free now in that range may be taken a moment later by one of the many outgoing
# connections (to containers, from the bridge's address) before SPEED binds it. Above the
# swarm's published ports (20000-29999).
TEST_PORTS = range(30000, 32768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, on any address, not handed out before in this process."""
    import random
    while True:
        port = random.choice(TEST_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


# The files that take longest, longest first (measured from `--durations` of whole runs). The
# Makefile runs xdist with --no-loadscope-reorder, so files go to the workers in collection
# order: by default xdist sends the files with most tests first, which left the slowest ones (a
# single 2-minute load test) to start last and end the run minutes after everything else.
# The replica fault tests (3 s leases) come after the load test's first minutes.
SLOWEST_FIRST = ("test_replica_load.py", "test_restart.py", "test_github.py",
                 "test_previews.py", "test_kill_during_writes.py", "test_openapi.py",
                 "test_replica_faults.py", "test_pipeline.py", "test_service_faults.py",
                 "test_container_limits.py", "test_results_stream.py", "test_callback_listener.py",
                 "test_load.py", "test_services.py", "test_swarm_pipeline.py",
                 "test_secret_keys.py", "test_build_limits.py", "test_secrets.py",
                 "test_smoke_pipeline.py")


def pytest_collection_modifyitems(config, items):
    """Slowest files first (SLOWEST_FIRST); a stable sort keeps each file's tests together and
    in order, and the other files in theirs."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Shortly before pytest-timeout fails a hung test, print what each asyncio task awaits:
    its report shows only the threads' stacks, where a hung event loop just polls."""
    timeout = float(item.config.getini("timeout") or 0)
    timer = threading.Timer(max(timeout - 20, 1), _print_pending_tasks) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer:
            timer.cancel()


def _print_pending_tasks() -> None:
    import gc
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    print(f"=== {len(tasks)} asyncio tasks pending", file=sys.stderr)
    for task in tasks:
        with contextlib.suppress(Exception):  # a task may move on while it is read
            print(f"--- {task.get_name()}", file=sys.stderr)
            awaiting = task.get_coro()
            while awaiting is not None:  # down the chain of awaits, where it waits
                frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "ag_frame", None)
                if frame is not None:
                    print(f"  {frame.f_code.co_filename}:{frame.f_lineno} in "
                          f"{frame.f_code.co_name}", file=sys.stderr)
                awaiting = (getattr(awaiting, "cr_await", None)
                            or getattr(awaiting, "ag_await", None))


@pytest.fixture(scope="session")
def docker_client():
    """The Docker engine; without one the run fails (make test starts it), it never skips."""
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure means no engine
        pytest.fail(f"no Docker engine answers ({e}); run `make test`, which starts one")
    return client


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    return ensure_base_image(docker_client)


# The SPEED instances the tests started; their containers and images go when the session ends
# (never another SPEED's that shares the engine).
TEST_INSTANCES: set[str] = set()


@pytest.fixture(scope="session", autouse=True)
def remove_test_instances_from_the_engine():
    yield
    if not TEST_INSTANCES:
        return
    api = docker.from_env().api
    # One listing of each, not one per instance: a worker starts hundreds of instances, and
    # the engine lists every image for each such call (minutes at the end of the run).
    for container in api.containers(all=True, filters={"label": "speed.instance"}):
        if (container.get("Labels") or {}).get("speed.instance") in TEST_INSTANCES:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container["Id"], force=True)
    for image in api.images():
        for tag in image.get("RepoTags") or []:
            if tag.partition(":")[0].removeprefix("speed-") in TEST_INSTANCES:
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_image(tag, force=True)


@pytest.fixture(scope="session")
def git_server(tmp_path_factory):
    server = GitServer(tmp_path_factory.mktemp("git"))
    yield server
    server.close()


@pytest.fixture
def repo(git_server, base_image, request):
    """A repository whose run.sh is the given script; returns (url, commit)."""
    counter = {"n": 0}

    def make(script: str, branch: str = "main", dockerfile: str | None = DOCKERFILE,
             extra: dict[str, str] | None = None) -> tuple[str, str]:
        counter["n"] += 1
        name = f"{request.node.name}-{counter['n']}".replace("[", "-").replace("]", "")
        files = {"run.sh": script, **(extra or {})}
        if dockerfile is not None:
            files["Dockerfile"] = dockerfile
        return git_server.url(name), git_server.commit(name, files, branch=branch)

    return make


def speed_config(tmp_path: pathlib.Path, **overrides):
    """A configuration for one SPEED instance of its own: database, workdir, callback port."""
    values = {
        "database__url": f"sqlite:///{tmp_path / 'speed.db'}",
        "runner__workdir": str(tmp_path / "work"),
        "runner__allowed_urls": ["http://127.0.0.1:*", "https://*", "ssh://*"],
        "runner__callback_port": free_port(),
        "runner__timeout": 60,
        # Never the machine's own Caddy (a `make run` may be using it): tests that want a proxy
        # name the private one of the caddy fixture.
        "proxy__admin": f"http://127.0.0.1:{free_port()}",
    }
    values.update(overrides)
    return load(None, **values)


@pytest.fixture
def speed_clients() -> list:
    """The clients make_client made in this test, for the invariant check (tests/invariants.py)."""
    return []


@pytest.fixture
def make_client(aiohttp_client, tmp_path, docker_client, base_image, speed_clients):
    """Start SPEED in this test's event loop with optional config overrides."""

    async def make(name: str = "speed", **overrides):
        directory = tmp_path / name
        directory.mkdir(exist_ok=True)
        client = await aiohttp_client(create_app(speed_config(directory, **overrides)))
        TEST_INSTANCES.add(instance_of(client))
        speed_clients.append(client)
        return client

    return make


@pytest.fixture
async def client(make_client):
    return await make_client()


async def wait_for(check, timeout: float = 60.0, interval: float = 0.05):
    """Poll an async check until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def wait_finished(client, deployment_id: int, timeout: float = 60.0) -> dict:
    """The deployment's /info once it reaches a final status."""

    async def finished():
        info = await (await client.get(f"/info/{deployment_id}")).json()
        return info if info["status"] in ("Succeeded", "Failed", "Cancelled") else None

    return await wait_for(finished, timeout)


def instance_of(client) -> str:
    """The instance id of the SPEED app behind a test client (its containers carry it)."""
    return client.app[worker_key].pipeline.settings.instance


async def results_of(client, deployment_id: int) -> str:
    return (await (await client.get(f"/results/{deployment_id}")).json())["results"]


@pytest.fixture(scope="session")
def caddy_process(tmp_path_factory):
    """A private Caddy (tests/caddy.py) for this worker; without one the run fails (make test
    installs Debian's caddy), it never skips and never downloads one."""
    from tests.caddy import Caddy, binary  # here: tests/caddy.py imports this module

    command = binary()
    if command is None:
        pytest.fail("caddy is not installed; run `make test`, which installs Debian's caddy")
    server = Caddy(tmp_path_factory.mktemp("caddy"), command)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def caddy(caddy_process):
    """This worker's Caddy, as it started: nothing an earlier test (or SPEED) put in it."""
    caddy_process.reset()
    return caddy_process


# PostgreSQL (issue 11): one server for the whole run, on a fixed port so that the xdist workers
# share it (scripts/ensure-postgres.sh starts it under a file lock, installing Debian's postgresql
# first when missing), and a fresh database of its own for each test.


# Durability the tests do not need: commits wait for no disk. No autovacuum: its workers, which
# the tests' role may not end, would hold up dropping a database.
TEST_POSTGRES_OPTIONS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                         "-c autovacuum=off")


def ensure_postgres(port: int, folder: str) -> str:
    """scripts/ensure-postgres.sh: a server on 127.0.0.1:port with its cluster in folder; its
    URL, as the tests' role (which may create databases). Without one (and no root to install
    it) the run fails, in CI or not: it never skips."""
    import os
    import subprocess

    script = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "ensure-postgres.sh"
    env = dict(os.environ, SPEED_PG_DIR=folder, SPEED_PG_USER="speed_test",
               SPEED_PG_DATABASE="speed_test", SPEED_PG_OPTIONS=TEST_POSTGRES_OPTIONS)
    try:
        done = subprocess.run([str(script), str(port)], env=env, capture_output=True,
                              text=True, timeout=900, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"scripts/ensure-postgres.sh could not run: {e}")
    if done.returncode != 0 or not done.stdout.strip():
        pytest.fail(f"no PostgreSQL for the tests on 127.0.0.1:{port} (scripts/ensure-postgres.sh "
                    f"installs Debian's postgresql as root; SPEED_TEST_PG_PORT picks another "
                    f"port):\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def postgres_sql(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on its own PostgreSQL connection (as another client would); its rows."""
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def tests_postgres() -> str:
    """The URL of the tests' (and the bench's) PostgreSQL server on SPEED_TEST_PG_PORT, started
    when it does not answer. The port is below the ephemeral range (there, an outgoing
    connection may hold it when the server starts: seen in CI) and the swarm's service ports."""
    import os
    import tempfile

    port = int(os.environ.get("SPEED_TEST_PG_PORT", "15433"))
    return ensure_postgres(port, os.path.join(tempfile.gettempdir(),
                                              f"speed-test-postgres-{port}"))


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The tests' PostgreSQL server. It stays up after the run, like the Docker engine, so the
    next run finds it at once."""
    return tests_postgres()


@pytest.fixture
def postgres_url(postgres_server):
    """database.url of a new, empty PostgreSQL database on the tests' server, dropped after the
    test (with whatever connections the test left open)."""
    import uuid

    import psycopg2

    name = f"speed_{uuid.uuid4().hex}"

    def admin(sql: str) -> None:
        connection = psycopg2.connect(postgres_server)
        try:
            connection.autocommit = True  # CREATE and DROP DATABASE refuse a transaction
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()

    admin(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server.rpartition('/')[0]}/{name}"
    for _ in range(100):
        try:
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except psycopg2.errors.InsufficientPrivilege:
            # An autovacuum worker of a server started before it was turned off: it ends soon.
            time.sleep(0.1)
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def swarm():
    """The tests' two-node swarm and registry (tests/swarm.py), started once and left up for
    the next run. Without it the run fails, in CI or not: it never skips."""
    from tests.swarm import ensure_swarm

    try:
        return ensure_swarm()
    except RuntimeError as e:
        pytest.fail(f"no swarm for the tests (scripts/ensure-swarm.sh, as root): {e}")
