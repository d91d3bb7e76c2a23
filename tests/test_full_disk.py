"""A full disk under the workspace or the database fails only what it must, loses nothing stored,
and work resumes once space returns. Real tmpfs mounts, a real SQLite file, real Docker and git."""
import asyncio
import errno
import logging
import os
import pathlib
import sqlite3
import subprocess

import pytest

from storage import deployments as queries
from storage.store import Store, StorageFull
from tests.conftest import instance_of, results_of, wait_finished, wait_for

pytestmark = pytest.mark.slow

WORKLOAD = "echo deployed\n"


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems under tmp_path; unmounted at teardown whatever happened."""
    mounted = []

    def mount(name: str, size: str) -> pathlib.Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        # Lazy: the app's database may still be open if the test failed before it closed.
        subprocess.run(["umount", "--lazy", str(path)], check=False)


@pytest.fixture(autouse=True)
def invariants_inside_the_mounts(tmpfs, app_invariants):
    """The invariant check after each test, while its mounts (and databases) are still there."""


def fill(directory: pathlib.Path) -> pathlib.Path:
    """Take every free byte of directory's file system; deleting the returned file gives it back."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        while True:
            os.write(fd, bytes(64 * 1024))  # a short write takes the last pages, then ENOSPC
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return filler


def integrity(database: pathlib.Path) -> str:
    with sqlite3.connect(database) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


async def start(client, url: str) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def test_full_workspace_fails_the_deployment_with_the_reason_then_work_resumes(
        tmpfs, make_client, repo):
    """Fault: runner.workdir's disk is full. Asserts: the deployment fails saying no space, git's
    message is in its results, nothing is left behind; once freed, the next deployment succeeds."""
    workdir = tmpfs("work", "1m")
    client = await make_client(runner__workdir=str(workdir))
    url, _ = repo(WORKLOAD)
    filler = fill(workdir)

    failed_id = await start(client, url)
    info = await wait_finished(client, failed_id)
    results = await results_of(client, failed_id)
    assert info["status"] == "Failed", results
    assert "no space left on device" in info["reason"]
    assert "No space left on device" in results
    # The half-made clone was removed (the replica's own folder stays while it runs).
    assert [p.name for p in workdir.rglob("*") if p.name != "filler"
            and not p.name.startswith("replica-")] == []

    filler.unlink()
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded", results
    assert "[speed] cloning" in results and "deployed\n" in results


async def test_full_database_refuses_writes_with_a_clear_error_and_loses_nothing(
        tmpfs, make_client, repo):
    """Fault: the database's disk is full. Asserts: each write is stored whole or refused whole
    with 507 JSON naming the full disk (SPEED may still make room in its own files: the WAL is
    folded in and started over in the background), and writes are refused before the disk's
    2 MB are taken again; reads answer, the file passes integrity_check; once freed, a new
    deployment is stored and succeeds."""
    database = tmpfs("db", "2m") / "speed.db"
    client = await make_client(database__url=f"sqlite:///{database}")
    url, _ = repo(WORKLOAD)
    first_id = await start(client, url)
    assert (await wait_finished(client, first_id))["status"] == "Succeeded"
    first_results = await results_of(client, first_id)
    filler = fill(database.parent)

    def refused(response, body: dict) -> bool:
        if response.status != 507:
            return False
        assert "disk is full" in body["error"]
        return True

    stored = []
    for n in range(200):  # 16 KiB each: 3 MB in all, more than the whole disk
        text = f"chunk {n} " + "x" * 16384 + "\n"
        response = await client.post(f"/add_results/{first_id}", json={"results": text})
        if refused(response, await response.json()):
            break
        assert response.status == 200
        stored.append(text)
    else:
        raise AssertionError("a full disk took 3 MB of results")
    started = []
    for path, body in [("/start", {"url": url, "branch": "main"}),
                       (f"/redeploy/{first_id}", None)]:
        response = await client.post(path, json=body)
        answer = await response.json()
        if not refused(response, answer):
            assert response.status == 201, (path, answer)
            started.append(answer["id"])
    assert (await client.get(f"/info/{first_id}")).status == 200

    filler.unlink()
    listed = (await (await client.get("/deployments")).json())["deployments"]
    assert sorted(d["id"] for d in listed) == [first_id, *started]
    assert await results_of(client, first_id) == first_results + "".join(stored)
    assert integrity(database) == "ok"
    # The connection is usable again: the next write is stored and the worker runs it.
    deployment_id = await start(client, url)
    assert (await wait_finished(client, deployment_id))["status"] == "Succeeded"


async def test_database_filling_during_a_deployment_delays_its_records_and_loses_none(
        tmpfs, make_client, repo, docker_client, caplog):
    """Fault: the database's disk fills while a container prints. Asserts: the pipeline waits for
    space, then the deployment ends Succeeded with every line stored exactly once."""
    caplog.set_level(logging.WARNING, logger="storage.store")
    database = tmpfs("db", "2m") / "speed.db"
    client = await make_client(database__url=f"sqlite:///{database}")
    # The container prints one line, then waits for /tmp/go (made by the test) to print the rest.
    url, _ = repo("echo line-0\nuntil [ -e /tmp/go ]; do sleep 0.05; done\n"
                  "for i in $(seq 1 100); do echo line-$i; done\n")
    deployment_id = await start(client, url)

    async def first_line_stored():
        return "line-0\n" in await results_of(client, deployment_id)

    await wait_for(first_line_stored)
    filler = fill(database.parent)
    container = docker_client.containers.list(filters={"label": [
        f"speed.instance={instance_of(client)}", f"speed.deployment={deployment_id}"]})[0]
    assert container.exec_run(["touch", "/tmp/go"]).exit_code == 0

    async def waiting_for_space():
        return any("disk is full" in r.getMessage() for r in caplog.records
                   if r.levelno == logging.WARNING and r.name == "storage.store")

    await wait_for(waiting_for_space)
    assert (await asyncio.to_thread(docker_client.api.wait, container.id))["StatusCode"] == 0
    info = await (await client.get(f"/info/{deployment_id}")).json()
    assert info["status"] == "Running"  # its exit cannot be recorded yet

    filler.unlink()
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert (info["status"], info["exit_code"]) == ("Succeeded", 0), results
    assert all(results.count(f"line-{i}\n") == 1 for i in range(101)), results
    assert results.count("[speed] Succeeded: exit code 0") == 1
    assert integrity(database) == "ok"


async def test_start_on_a_full_database_disk_is_refused_by_name_then_succeeds(
        tmpfs, make_client, repo):
    """Fault: SPEED starts while the database's disk is full. Asserts: it refuses naming the full
    disk (not SQLite's "disk I/O error"); once freed it starts with everything stored intact."""
    database = tmpfs("db", "2m") / "speed.db"
    url = f"sqlite:///{database}"
    client = await make_client("first", database__url=url)
    deployment_id = await start(client, repo(WORKLOAD)[0])
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    await client.close()  # a clean stop folds the WAL in: reopening must make its files anew
    filler = fill(database.parent)

    with pytest.raises(StorageFull):
        await make_client("second", database__url=url)

    filler.unlink()
    client = await make_client("third", database__url=url)
    assert await (await client.get(f"/info/{deployment_id}")).json() == info
    assert await results_of(client, deployment_id) == results
    assert integrity(database) == "ok"


async def test_queue_resumes_when_space_returns(tmpfs, make_client, repo, caplog, tmp_path):
    """Fault: SPEED starts with a deployment queued and the database's disk full. Asserts: once
    space returns, the queued deployment runs and succeeds."""
    caplog.set_level(logging.WARNING, logger="storage.store")
    database = tmpfs("db", "2m") / "speed.db"
    url, _ = repo(WORKLOAD)
    # Queued by an earlier process; kept open so its WAL files stay, as while SPEED runs.
    earlier = Store(f"sqlite:///{database}")
    await earlier.run(queries.instance_id)
    queued = await earlier.run(queries.create, url, "main")
    filler = fill(database.parent)
    # Its secrets key lives elsewhere: with none, SPEED would have to make one on the full disk.
    client = await make_client(database__url=f"sqlite:///{database}",
                               secrets__key_file=str(tmp_path / "secrets.key"))

    async def claim_waits():  # to join the replicas, the first write, before any claim
        return any("join waits for space" in r.getMessage() for r in caplog.records)

    await wait_for(claim_waits, timeout=30)
    filler.unlink()
    assert (await wait_finished(client, queued.id))["status"] == "Succeeded"
    earlier.close()
