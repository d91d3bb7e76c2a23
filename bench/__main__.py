"""python -m bench: time SPEED's deployments and API against raw git clone + docker build + run."""
import asyncio
import concurrent.futures
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp
import docker
import requests
import yaml

from bench import replicas, services
from tests.conftest import DOCKERFILE, free_port
from tests.gitserver import GitServer
from tests.images import ensure_base_image
from tests.process import SpeedProcess
from tests.webhooks import delivery_headers, encode, push_payload

ROUNDS = 10
WEBHOOK_SECRET = "bench-webhook-secret"
RESULTS = pathlib.Path(__file__).parent / "results.json"


def raw_deployment(url: str, work: pathlib.Path, n: int) -> float:
    """git clone --depth 1, docker build, docker run --rm: what SPEED does, by hand."""
    target = work / f"raw-{n}"
    started = time.perf_counter()
    subprocess.run(["git", "clone", "-q", "--depth", "1", "--single-branch", "--branch", "main",
                    "--", url, str(target)], check=True)
    subprocess.run(["docker", "build", "-q", "-t", f"speed-bench-raw:{n}", str(target)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["docker", "run", "--rm", f"speed-bench-raw:{n}"], check=True,
                   stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    subprocess.run(["docker", "rmi", "-f", f"speed-bench-raw:{n}"], stdout=subprocess.DEVNULL)
    return elapsed


def speed_deployment(bot: SpeedProcess, url: str) -> float:
    """POST /start, then poll /info every 10 ms until the deployment finished."""
    started = time.perf_counter()
    deployment_id = bot.start_deployment(url)
    while (info := bot.info(deployment_id))["status"] in ("Pending", "Running"):
        time.sleep(0.01)
    assert info["status"] == "Succeeded", bot.results(deployment_id)
    return time.perf_counter() - started


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def request_latencies(bot: SpeedProcess, url: str, count: int = 200) -> dict:
    """Latency of POST /start under 20 concurrent clients (the deployments queue behind)."""

    def one(_):
        started = time.perf_counter()
        response = requests.post(f"{bot.base_url}/start", json={"url": url, "branch": "main"},
                                 timeout=10)
        assert response.status_code == 201
        return time.perf_counter() - started, response.json()["id"]

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        samples, ids = zip(*pool.map(one, range(count)))
    return _cancel_and_summarise(bot, samples, ids)


def _cancel_and_summarise(bot: SpeedProcess, samples, ids) -> dict:
    """Cancel what the requests queued (leaving nothing running behind); their p50 and p99."""
    for deployment_id in ids:
        bot.call("POST", f"/cancel/{deployment_id}")
    for deployment_id in ids:
        bot.wait_finished(deployment_id)
    return {"requests": len(samples), "p50_ms": round(percentile(samples, 50) * 1000, 2),
            "p99_ms": round(percentile(samples, 99) * 1000, 2)}


def sequential_latencies(bot: SpeedProcess, url: str, count: int = 200) -> dict:
    """Latency of POST /start from one keep-alive client, one request after another."""
    samples, ids = [], []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            response = session.post(f"{bot.base_url}/start", json={"url": url, "branch": "main"},
                                    timeout=10)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 201
            ids.append(response.json()["id"])
            time.sleep(0.01)
    return _cancel_and_summarise(bot, samples, ids)


def quiet_latencies(bot: SpeedProcess, sleeper_url: str, url: str) -> dict:
    """sequential_latencies while the one worker slot holds a container that only sleeps: the
    same requests and queue, but no deployment being carried out."""
    sleeper = bot.start_deployment(sleeper_url)
    bot.wait_until(lambda: bot.row(sleeper)["container_started_at"])
    try:
        return sequential_latencies(bot, url)
    finally:
        bot.call("POST", f"/cancel/{sleeper}")
        bot.wait_finished(sleeper)


def webhook_latencies(bot: SpeedProcess, url: str, commit: str, count: int = 500) -> dict:
    """Reply latency of `count` signed push deliveries sent at once, each queueing a deployment."""

    async def burst() -> tuple[list[float], list[int], float]:
        bodies = [encode(push_payload("bench/app", url, ref=f"refs/heads/burst-{n}", after=commit))
                  for n in range(count)]
        signed = [(body, delivery_headers("push", body, WEBHOOK_SECRET)) for body in bodies]
        # No connection limit: GitHub opens a connection per delivery.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def deliver(body: bytes, headers: dict) -> tuple[float, int]:
                started = time.perf_counter()
                async with session.post(f"{bot.base_url}/webhook", data=body,
                                        headers=headers) as response:
                    assert response.status == 202, await response.text()
                    answer = await response.json()
                return time.perf_counter() - started, answer["id"]

            started = time.perf_counter()
            samples, ids = zip(*await asyncio.gather(*(deliver(*d) for d in signed)))
            return list(samples), list(ids), time.perf_counter() - started

    samples, ids, wall = asyncio.run(burst())
    for deployment_id in ids:  # leave nothing running behind
        bot.call("POST", f"/cancel/{deployment_id}")
    for deployment_id in ids:
        bot.wait_finished(deployment_id)
    return {"deliveries": count, "p50_ms": round(percentile(samples, 50) * 1000, 2),
            "p99_ms": round(percentile(samples, 99) * 1000, 2),
            "max_ms": round(max(samples) * 1000, 2), "burst_s": round(wall, 3)}


def accept_webhooks(bot: SpeedProcess) -> None:
    """Give the bench's SPEED a webhook secret and a rule deploying pushes to burst-* branches."""
    config = yaml.safe_load(bot.config_path.read_text())
    config["github"] = {"webhook_secret": WEBHOOK_SECRET}
    config["repos"] = [{"match": "bench/*", "branches": ["burst-*"]}]
    bot.config_path.write_text(yaml.safe_dump(config))


def main() -> int:
    ensure_base_image(docker.from_env())
    load = os.getloadavg()[0]  # the machine is shared: how busy it was says how far to trust this
    with tempfile.TemporaryDirectory() as scratch:
        work = pathlib.Path(scratch)
        git = GitServer(work / "git")
        url = git.url("bench/app")
        git.commit("bench/app", {"Dockerfile": DOCKERFILE, "run.sh": "echo hello\n"})
        sleeper_url = git.url("bench/sleeper")
        git.commit("bench/sleeper", {"Dockerfile": DOCKERFILE, "run.sh": "sleep 300\n"})
        bot = SpeedProcess(work, free_port(), free_port(), max_concurrent=1)
        accept_webhooks(bot)
        bot.start()
        try:
            speed_deployment(bot, url)  # warm both caches alike
            raw_deployment(url, work, 0)
            raw, speed, repeat = [], [], []
            for n in range(1, ROUNDS + 1):
                # A new commit each round: both sides clone and build it.
                commit = git.commit("bench/app", {"round.txt": str(n)})
                raw.append(raw_deployment(url, work, n))
                speed.append(speed_deployment(bot, url))
                # The same commit again: SPEED reuses its image, the raw commands redo it all.
                repeat.append(speed_deployment(bot, url))
            quiet = quiet_latencies(bot, sleeper_url, url)
            # Each request queues a deployment: the worker carries them out one after another.
            deploying = sequential_latencies(bot, url)
            latency = request_latencies(bot, url)
            # The newest commit, built already: the first deployments run while the burst lasts.
            webhook = webhook_latencies(bot, url, commit)
        finally:
            bot.stop()
            git.close()
    # Services: push-to-live against the raw commands, and the proxy's latency (bench/services.py).
    service = services.measure()
    # Replicas: SQLite against 1 and 3 PostgreSQL replicas (bench/replicas.py).
    cluster = replicas.measure()
    raw_median = statistics.median(raw)
    results = {
        "load_average_1m": round(load, 2),
        "rounds": ROUNDS,
        "raw_median_s": round(raw_median, 3),
        "speed_new_commit_median_s": round(statistics.median(speed), 3),
        "ratio_new_commit": round(statistics.median(speed) / raw_median, 2),
        "speed_repeat_commit_median_s": round(statistics.median(repeat), 3),
        "ratio_repeat_commit": round(statistics.median(repeat) / raw_median, 2),
        "start_latency_sequential_worker_quiet": quiet,
        "start_latency_sequential_while_deploying": deploying,
        "start_latency": latency,
        "webhook_latency": webhook,
        **service,
        **cluster,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
