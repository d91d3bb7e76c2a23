"""Replicas: webhook and API throughput and queue-to-start latency, for the SQLite default (one
process) and for 1 and 3 replicas on one PostgreSQL database."""
import asyncio
import os
import pathlib
import statistics
import tempfile
import time
import uuid

import aiohttp
import psycopg2
import yaml
from cryptography.fernet import Fernet

from bench.common import app_and_sleeper
from tests.conftest import free_port, tests_postgres
from tests.gitserver import GitServer
from tests.process import SpeedProcess
from tests.webhooks import delivery_headers, encode, push_payload

WEBHOOK_SECRET = "bench-webhook-secret"
DELIVERIES = 300
STARTS = 300
CLIENTS = 20  # concurrent API clients
QUEUE_ROUNDS = 15


def _database(server: str) -> str:
    """A new database on the PostgreSQL server, for one setup."""
    name = f"speed_bench_{uuid.uuid4().hex[:12]}"
    connection = psycopg2.connect(server)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()
    return f"{server.rpartition('/')[0]}/{name}"


def _replicas(work: pathlib.Path, count: int, database_url: str | None) -> list[SpeedProcess]:
    """count SPEED processes (one slot each) on database_url, or one on its own SQLite file."""
    sections = {}
    if database_url:
        sections = {"database": {"url": database_url},
                    "secrets": {"key": Fernet.generate_key().decode()}}
    started = []
    for n in range(count):
        folder = work / f"replica-{n}"
        folder.mkdir(parents=True)
        replica = SpeedProcess(folder, free_port(), free_port(), sections=sections,
                               max_concurrent=1, workdir=str(work / "clones"))
        config = yaml.safe_load(replica.config_path.read_text())
        config["github"] = {"webhook_secret": WEBHOOK_SECRET}
        config["repos"] = [{"match": "bench/*", "branches": ["burst-*"]}]
        replica.config_path.write_text(yaml.safe_dump(config))
        replica.start()
        started.append(replica)
    return started


async def _burst(requests: list[tuple[str, bytes, dict]]) -> tuple[list[float], float]:
    """Send every (url, body, headers) POST at once, CLIENTS at a time: latencies and wall time."""
    gate = asyncio.Semaphore(CLIENTS)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def send(url: str, body: bytes, headers: dict) -> float:
            async with gate:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    assert response.status in (201, 202), await response.text()
                    await response.read()
                return time.perf_counter() - started

        started = time.perf_counter()
        samples = await asyncio.gather(*(send(*request) for request in requests))
        return list(samples), time.perf_counter() - started


def _summary(samples: list[float], wall: float) -> dict:
    ordered = sorted(samples)
    return {"requests": len(samples), "per_second": round(len(samples) / wall, 1),
            "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000, 2)}


def _measure(replicas: list[SpeedProcess], url: str, sleeper_url: str, commit: str) -> dict:
    # Every slot holds a sleeping container: what the bursts queue stays queued, and the
    # machine does no deploying meanwhile.
    sleepers = [replica.start_deployment(sleeper_url) for replica in replicas]
    replicas[0].wait_until(lambda: all(replicas[0].info(i)["status"] == "Running" for i in sleepers))
    webhooks = []
    for n in range(DELIVERIES):
        body = encode(push_payload("bench/app", url, ref=f"refs/heads/burst-{n}", after=commit))
        webhooks.append((f"{replicas[n % len(replicas)].base_url}/webhook", body,
                         delivery_headers("push", body, WEBHOOK_SECRET)))
    webhook = _summary(*asyncio.run(_burst(webhooks)))
    start_body = f'{{"url": "{url}", "branch": "main"}}'.encode()
    starts = [(f"{replicas[n % len(replicas)].base_url}/start", start_body,
               {"Content-Type": "application/json"}) for n in range(STARTS)]
    api = _summary(*asyncio.run(_burst(starts)))
    # What the bursts queued is not the bench's to run: cancelled in the database at once.
    replicas[0].sql("UPDATE deployment SET status = 'Cancelled', finished_at = started_at "
                    "WHERE status = 'Pending'")
    for replica, sleeper in zip(replicas, sleepers):
        replica.call("POST", f"/cancel/{sleeper}")
        replica.wait_finished(sleeper)
    # Queue to start: each deployment sent to the next replica, the cluster idle otherwise.
    waits = []
    for n in range(QUEUE_ROUNDS):
        replica = replicas[n % len(replicas)]
        deployment_id = replica.start_deployment(url)
        replica.wait_finished(deployment_id)
        waits.append(_queue_wait(replica, deployment_id))
    return {"webhook": webhook, "api_start": api,
            "queue_to_start_ms": {"p50": round(statistics.median(waits) * 1000, 1),
                                  "max": round(max(waits) * 1000, 1)}}


def _queue_wait(replica: SpeedProcess, deployment_id: int) -> float:
    """Seconds from a deployment's creation to its claim, as the database recorded them."""
    created, started = replica.sql(
        f"SELECT created_at, started_at FROM deployment WHERE id = {int(deployment_id)}")[0]
    if isinstance(created, str):  # SQLite keeps them as text
        from datetime import datetime
        created, started = datetime.fromisoformat(created), datetime.fromisoformat(started)
    return (started - created).total_seconds()


def measure() -> dict:
    """The three setups, each on a new database; the machine's load before and after."""
    server = tests_postgres()
    results = {"load_average_1m_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as scratch:
        work = pathlib.Path(scratch)
        git = GitServer(work / "git")
        url, commit, sleeper_url = app_and_sleeper(git)
        try:
            for name, count, database in (("sqlite_1_process", 1, None),
                                          ("postgresql_1_replica", 1, _database(server)),
                                          ("postgresql_3_replicas", 3, _database(server))):
                replicas = _replicas(work / name, count, database)
                try:
                    results[name] = _measure(replicas, url, sleeper_url, commit)
                finally:
                    for replica in replicas:
                        replica.stop()
        finally:
            git.close()
    results["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    return {"replicas": results}


if __name__ == "__main__":
    import json
    print(json.dumps(measure(), indent=2))
