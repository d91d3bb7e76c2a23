"""Rows 5-8: SPEED's GET /info, webhook replies and memory against bench/minimal_server.py."""
import asyncio
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import aiohttp
import docker

from bench import deliveries, wrk
from bench.common import (WEBHOOK_SECRET, accept_webhooks, alive, app_and_sleeper,
                          load_average, pair, remove_leftovers, rss_mib)
from tests.conftest import free_port
from tests.gitserver import GitServer
from tests.images import ensure_base_image
from tests.process import ROOT, SpeedProcess

WRK_SECONDS = 3
WRK_ROUNDS = 3  # interleaved, SPEED and the raw variants in turn: a shift in load hits all
DELIVERIES = 300
WEBHOOK_ROUNDS = 3  # of DELIVERIES each, SPEED and the raw pair in turn
IN_FLIGHT = 16
QUEUED = 1000
IDLE_SECONDS = 2  # after start-up, before the idle RSS: what start-up began has settled


class MinimalServer:
    """bench/minimal_server.py run with this python, on a database of its own."""

    def __init__(self, folder: pathlib.Path):
        folder.mkdir(parents=True)
        self.folder, self.port = folder, free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.folder / "server.log", "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.minimal_server", "--port", str(self.port),
             "--database", str(self.folder / "minimal.db"), "--secret", WEBHOOK_SECRET],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.folder / "server.log").read_text()[-2000:])
            try:
                urllib.request.urlopen(f"{self.base_url}/info/1", timeout=5).read()
                return
            except OSError:  # not listening yet (URLError is one)
                time.sleep(0.05)
        raise RuntimeError("the minimal server did not answer within 30 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


async def _many(method: str, urls: list[str], in_flight: int, json: dict | None = None) -> list:
    """The same request to each url, in_flight at a time: each answer's (status, body)."""
    gate = asyncio.Semaphore(in_flight)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:

        async def one(url: str) -> tuple[int, dict]:
            async with gate, session.request(method, url, json=json) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(url) for url in urls))


def _cancel(bot: SpeedProcess, ids: list[int]) -> float:
    """POST /cancel for each id, 8 at a time: the seconds it took."""
    started = time.perf_counter()
    answers = asyncio.run(_many("POST", [f"{bot.base_url}/cancel/{i}" for i in ids], 8))
    refused = [a for a in answers if a[0] != 200]
    assert not refused, f"{len(refused)} cancellations refused, e.g. {refused[:3]}"
    return round(time.perf_counter() - started, 3)


def _statuses(bot: SpeedProcess, ids: list[int]) -> dict[str, int]:
    """How many of ids are in each status, read from SPEED's database."""
    found: dict[str, int] = {}
    for first in range(0, len(ids), 500):  # SQLite's bound on parameters
        chunk = ids[first:first + 500]
        for status, count in bot.sql("SELECT status, count(*) FROM deployment WHERE id IN "
                                     f"({','.join('?' * len(chunk))}) GROUP BY status", chunk):
            found[status] = found.get(status, 0) + count
    return found


def _info(bot: SpeedProcess, minimal: MinimalServer, deployment: int) -> dict:
    """Row 5: wrk on GET /info, 8 connections then one, SPEED and the minimal server's."""
    # WRK_ROUNDS rounds, the three in turn: a change in the machine's load hits all alike.
    urls = {"speed": f"{bot.base_url}/info/{deployment}",
            "raw": f"{minimal.base_url}/info/1",
            "raw_on_loop": f"{minimal.base_url}/info-on-loop/1"}
    found = {}
    for shape, (threads, connections) in {"c8": (2, 8), "c1": (1, 1)}.items():
        runs = {name: [] for name in urls}
        for _ in range(WRK_ROUNDS):
            for name, url in urls.items():
                runs[name].append(wrk.run(url, threads, connections, WRK_SECONDS))
        found[shape] = {name: {**_median_run(all_runs), "req_per_s_each": [
            round(r["requests_per_s"]) for r in all_runs]} for name, all_runs in runs.items()}
        bad = {name: r for name, all_runs in runs.items() for r in all_runs
               if r.get("non_2xx") or r.get("socket_errors")}
        if bad:  # errors answer faster than /info: such a run's numbers flatter it
            found[shape]["errors"] = bad
            print(f"bench: wrk saw errors ({shape}): {bad}", file=sys.stderr)
    alive(bot)
    return found


def _median_run(runs: list[dict]) -> dict:
    """The run whose req/s is the median; its p50 replaced by the median of the runs' p50."""
    ordered = sorted(runs, key=lambda r: r["requests_per_s"])
    return {**ordered[len(ordered) // 2],
            "p50_ms": statistics.median(r["p50_ms"] for r in runs)}


def _median_summary(summaries: list[dict]) -> dict:
    """Each figure's median over the rounds (the 99th percentile of 300 is the third worst
    reply: one round's moved by half between runs); the rounds' own figures kept too."""
    figures = ("p50_ms", "p99_ms", "max_ms", "per_second")
    return {**{key: statistics.median(s[key] for s in summaries) for key in figures},
            "deliveries": summaries[0]["deliveries"], "in_flight": summaries[0]["in_flight"],
            "rounds": summaries}


def _webhooks(bot: SpeedProcess, minimal: MinimalServer, url: str, commit: str,
              sleeper_url: str, memory: dict) -> dict:
    """Rows 6 and 7: signed deliveries, one at a time, then IN_FLIGHT at a time."""
    # SPEED's one slot is held by a sleeping container: what the deliveries queue stays queued
    # (nothing is cloned or built meanwhile, which would skew the timing) and is cancelled after.
    sleeper = bot.start_deployment(sleeper_url)
    bot.wait_until(lambda: bot.row(sleeper)["container_started_at"])
    found, queued, first = {}, [], 0
    for shape, in_flight in (("one_at_a_time", 1), ("in_flight_16", IN_FLIGHT)):
        runs = {"speed": [], "raw": []}
        for n in range(WEBHOOK_ROUNDS):
            pushes = deliveries.signed_pushes(url, commit, DELIVERIES, first)
            first += DELIVERIES
            for side in ("speed", "raw") if n % 2 == 0 else ("raw", "speed"):
                if side == "speed":
                    summary, ids = deliveries.send(f"{bot.base_url}/webhook", pushes, in_flight)
                    queued += ids
                else:
                    summary, _ = deliveries.send(f"{minimal.base_url}/webhook", pushes,
                                                 in_flight)
                runs[side].append(summary)
            if shape == "one_at_a_time" and n == 0:
                memory["speed"]["after_300_deliveries"] = rss_mib(bot.process.pid)
                memory["raw"]["after_300_deliveries"] = rss_mib(minimal.process.pid)
        found[shape] = {side: _median_summary(summaries) for side, summaries in runs.items()}
        alive(bot)
    memory["speed"][f"after_{2 * WEBHOOK_ROUNDS * DELIVERIES}_deliveries"] = rss_mib(
        bot.process.pid)
    found["their_deployments_at_the_end"] = _statuses(bot, queued)
    found["cancel_their_deployments_s"] = _cancel(bot, queued)
    found["sleeper"] = sleeper
    return found


def _queued(bot: SpeedProcess, url: str, memory: dict) -> dict:
    """Row 8's queue: QUEUED POST /start behind the sleeper; the RSS, then all cancelled."""
    started = time.perf_counter()
    answers = asyncio.run(_many("POST", [f"{bot.base_url}/start"] * QUEUED, IN_FLIGHT,
                                {"url": url, "branch": "main"}))
    queue_s = round(time.perf_counter() - started, 3)
    assert all(status == 201 for status, _ in answers), [a for a in answers if a[0] != 201][:3]
    ids = [body["id"] for _, body in answers]
    time.sleep(1)  # what answering left to do in the background
    memory["speed"]["with_1000_queued"] = rss_mib(bot.process.pid)
    still = _statuses(bot, ids)
    cancel_s = _cancel(bot, ids)
    memory["speed"]["after_cancelling_them"] = rss_mib(bot.process.pid)
    alive(bot)
    return {"queue_1000_s": queue_s, "their_statuses_before_cancel": still,
            "cancel_1000_s": cancel_s}


def _rows(info: dict, hooks: dict, memory: dict) -> list[dict]:
    c8, c1 = info["c8"], info["c1"]
    one, many = hooks["one_at_a_time"], hooks["in_flight_16"]
    loop = (f"on the loop: {c8['raw_on_loop']['requests_per_s']:,.0f} req/s",
            f"on the loop: {c1['raw_on_loop']['p50_ms']:.3f} ms")
    return [
        pair("`GET /info/<id>` throughput, wrk -t2 -c8", "req/s",
             round(c8["raw"]["requests_per_s"]), round(c8["speed"]["requests_per_s"]),
             ("speed", ">=", 10_000), raw_also=loop[0]),
        pair("`GET /info/<id>` p50, one connection (wrk -t1 -c1)", "ms", c1["raw"]["p50_ms"],
             c1["speed"]["p50_ms"], ("speed", "<=", 0.2), raw_also=loop[1]),
        pair(f"signed push webhook, {DELIVERIES} one at a time, p50", "ms", one["raw"]["p50_ms"],
             one["speed"]["p50_ms"]),
        pair(f"signed push webhook, {DELIVERIES} one at a time, p99", "ms", one["raw"]["p99_ms"],
             one["speed"]["p99_ms"], ("speed", "<=", 5)),
        pair(f"{DELIVERIES} signed push webhooks, {IN_FLIGHT} in flight, p99", "ms",
             many["raw"]["p99_ms"], many["speed"]["p99_ms"], ("speed", "<=", 25)),
        pair(f"{DELIVERIES} signed push webhooks, {IN_FLIGHT} in flight, throughput",
             "deliveries/s", many["raw"]["per_second"], many["speed"]["per_second"],
             ("speed", ">=", 1000)),
        pair("RSS idle", "MiB", memory["raw"]["idle"], memory["speed"]["idle"],
             ("speed", "<=", 50)),
        pair(f"RSS after {DELIVERIES} deliveries", "MiB", memory["raw"]["after_300_deliveries"],
             memory["speed"]["after_300_deliveries"]),
        pair(f"RSS with {QUEUED:,} deployments queued", "MiB", memory["raw"]["idle"],
             memory["speed"]["with_1000_queued"], ("speed", "<=", 60),
             raw_is="the minimal server idle: it has no queue"),
    ]


def measure() -> dict:
    """Rows 5-8 in one run: the results' requests section."""
    ensure_base_image(docker.from_env())
    load_before = load_average()
    with tempfile.TemporaryDirectory() as scratch:
        work = pathlib.Path(scratch)
        git = GitServer(work / "git")
        url, commit, sleeper_url = app_and_sleeper(git)
        minimal = MinimalServer(work / "minimal")
        (work / "speed").mkdir()
        bot = SpeedProcess(work / "speed", free_port(), free_port(), max_concurrent=1)
        accept_webhooks(bot)
        try:
            minimal.start()
            bot.start()
            time.sleep(IDLE_SECONDS)
            memory = {"speed": {"idle": rss_mib(bot.process.pid)},
                      "raw": {"idle": rss_mib(minimal.process.pid)}}
            # The deployment /info is read for: a finished one (Succeeded), as is the
            # minimal server's row.
            deployment = bot.start_deployment(url)
            assert bot.wait_finished(deployment)["status"] == "Succeeded", bot.results(deployment)
            info = _info(bot, minimal, deployment)
            memory["speed"]["after_info_load"] = rss_mib(bot.process.pid)
            hooks = _webhooks(bot, minimal, url, commit, sleeper_url, memory)
            queue = _queued(bot, url, memory)
            bot.call("POST", f"/cancel/{hooks.pop('sleeper')}")
        finally:
            bot.stop()
            minimal.stop()
            git.close()
            remove_leftovers(bot)
    return {
        "load_average_1m_before": load_before,
        "load_average_1m_after": load_average(),
        "rows": _rows(info, hooks, memory),
        "how": {
            "info": f"wrk -t2 -c8 and wrk -t1 -c1, --latency, {WRK_SECONDS} s each, "
                    f"{WRK_ROUNDS} rounds interleaved (the median req/s and p50), on the same "
                    "2 cores as the server; SPEED's deployment is a finished one (Succeeded); "
                    "the raw pair is bench/minimal_server.py (aiohttp, SQLite WAL) reading one "
                    "row through a one-thread executor (info_on_loop: on the event loop)",
            "webhooks": f"{WEBHOOK_ROUNDS} rounds of {DELIVERIES} signed pushes (HMAC-SHA256) "
                        "per shape, SPEED and the minimal server each first in turn, the median "
                        "of each figure over the rounds; aiohttp client, "
                        "keep-alive connections opened before the clock; the minimal server "
                        "verifies, parses and inserts one row in a committed transaction through "
                        "its executor. Each SPEED delivery queues a deployment: SPEED's one slot "
                        "was held by a sleeping container throughout, so none ran (see "
                        "webhooks.their_deployments_at_the_end), and they were cancelled after",
            "memory": "VmRSS of the server process; SPEED idle is read "
                      f"{IDLE_SECONDS} s after it answered, before any work",
        },
        "info": info,
        "webhooks": hooks,
        "memory_mib": memory,
        "queue": queue,
    }
