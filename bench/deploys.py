"""Rows 1-4: deployments by SPEED against raw git clone + docker build + docker run --rm."""
import pathlib
import resource
import statistics
import subprocess
import tempfile
import time

import docker
import requests

from bench.common import GitHost, alive, cpu_seconds, load_average, pair, remove_leftovers
from speedcli.api import Api
from speedcli.stream import deployment_events
from tests.conftest import DOCKERFILE, free_port
from tests.images import ensure_base_image
from tests.process import SpeedProcess

ROUNDS = 10
PARALLEL_COMMITS = 20
PARALLEL = 4
PARALLEL_ROUNDS = 3
# After a deployment finished SPEED still removes its container and prunes images: its CPU is
# read this much later, so that work is counted (what SPEED spends idle in that time, see
# speed_idle_cpu_per_s in the results, is counted too).
SETTLE_SECONDS = 0.5
RAW_SCRIPT = pathlib.Path(__file__).with_name("raw-deploy.sh")


def _children_cpu() -> float:
    """CPU seconds (user + system) of the children this process reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def raw_deployment(url: str, work: pathlib.Path, n: int) -> tuple[float, float]:
    """git clone --depth 1, docker build, docker run --rm by hand: wall time, commands' CPU."""
    # The CPU is git's and the docker CLI's (reaped children); the engine's is not counted.
    target, tag = work / f"raw-{n}", f"speed-bench-raw:{n}"
    cpu = _children_cpu()
    started = time.perf_counter()
    subprocess.run(["git", "clone", "-q", "--depth", "1", "--single-branch", "--branch", "main",
                    "--", url, str(target)], check=True)
    subprocess.run(["docker", "build", "-q", "-t", tag, str(target)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["docker", "run", "--rm", tag], check=True, stdout=subprocess.DEVNULL)
    elapsed, cpu = time.perf_counter() - started, _children_cpu() - cpu
    subprocess.run(["docker", "rmi", "-f", tag], stdout=subprocess.DEVNULL)
    return elapsed, cpu


def finished(bot: SpeedProcess, deployment_id: int) -> dict:
    """The deployment's /info once its event stream says `end`: how `speed deploy` waits."""
    api = Api(bot.base_url)
    for _ in deployment_events(api, deployment_id):
        pass
    return api.get(f"/info/{deployment_id}")


def speed_deployment(session: requests.Session, bot: SpeedProcess, url: str) -> float:
    """POST /start, then follow the deployment's event stream until it ends."""
    started = time.perf_counter()
    response = session.post(f"{bot.base_url}/start", json={"url": url, "branch": "main"},
                            timeout=10)
    assert response.status_code == 201, response.text
    deployment_id = response.json()["id"]
    info = finished(bot, deployment_id)
    elapsed = time.perf_counter() - started
    assert info["status"] == "Succeeded", (info, bot.results(deployment_id)[-3000:])
    return elapsed


def raw_parallel(url: str, branches: list[str], work: pathlib.Path) -> float:
    """bench/raw-deploy.sh for each branch, PARALLEL at a time through xargs: its wall time."""
    lines = "".join(f"{url} {branch} {work / branch} speed-bench-raw:{branch}\n"
                    for branch in branches)
    started = time.perf_counter()
    subprocess.run(["xargs", f"-P{PARALLEL}", "-L1", "sh", str(RAW_SCRIPT)], input=lines,
                   text=True, check=True)
    elapsed = time.perf_counter() - started
    subprocess.run(["docker", "rmi", "-f", *(f"speed-bench-raw:{b}" for b in branches)],
                   stdout=subprocess.DEVNULL)
    return elapsed


def speed_parallel(bot: SpeedProcess, url: str, branches: list[str]) -> float:
    """POST /start for every branch at once: the wall time until all finished."""
    # The streams are followed one after another, oldest first: one connection at a time.
    with requests.Session() as session:
        session.get(f"{bot.base_url}/deployments?limit=1", timeout=10)  # connected beforehand
        started = time.perf_counter()
        pending = []
        for branch in branches:
            response = session.post(f"{bot.base_url}/start", json={"url": url, "branch": branch},
                                    timeout=10)
            assert response.status_code == 201, response.text
            pending.append(response.json()["id"])
        for deployment_id in pending:
            info = finished(bot, deployment_id)
            assert info["status"] == "Succeeded", (info, bot.results(deployment_id)[-3000:])
        return time.perf_counter() - started


def _rounds(bot: SpeedProcess, git: GitHost, url: str, work: pathlib.Path) -> dict:
    """Rows 1, 2 and 4: ROUNDS new commits, each deployed raw, by SPEED, and by SPEED again."""
    pid = bot.process.pid
    runs = {"raw": [], "speed": [], "repeat": [], "raw_cpu": [], "speed_cpu": [],
            "speed_cpu_own": []}
    with requests.Session() as session:
        speed_deployment(session, bot, url)  # warm both sides' caches alike
        raw_deployment(url, work, 0)
        idle = cpu_seconds(pid)["total"]
        time.sleep(2)
        idle_rate = (cpu_seconds(pid)["total"] - idle) / 2
        for n in range(1, ROUNDS + 1):
            # A new commit each round: both sides clone and build it.
            git.commit("bench/app", {"round.txt": str(n)})
            elapsed, cpu = raw_deployment(url, work, n)
            runs["raw"].append(elapsed)
            runs["raw_cpu"].append(cpu)
            before = cpu_seconds(pid)
            runs["speed"].append(speed_deployment(session, bot, url))
            time.sleep(SETTLE_SECONDS)
            after = cpu_seconds(pid)
            runs["speed_cpu"].append(after["total"] - before["total"])
            runs["speed_cpu_own"].append(after["own"] - before["own"])
            # The same commit again: SPEED reuses its image, the raw commands redo it all.
            runs["repeat"].append(speed_deployment(session, bot, url))
            alive(bot)
    runs["idle_cpu_per_s"] = idle_rate
    return runs


def _parallel(git: GitHost, url: str, work: pathlib.Path) -> dict:
    """Row 3: new commits PARALLEL at a time, raw and by a SPEED with that many slots, in
    PARALLEL_ROUNDS rounds, each side first in turn (one run each moved the ratio by a
    quarter)."""
    # Each side deploys new commits of its own (no build cache from the other); the base image
    # is shared.
    (work / "parallel").mkdir()
    bot = SpeedProcess(work / "parallel", free_port(), free_port(), max_concurrent=PARALLEL)
    bot.start()
    times = {"raw": [], "speed": []}
    try:
        with requests.Session() as session:
            speed_deployment(session, bot, url)  # this instance's networks and first build
        for n in range(PARALLEL_ROUNDS):
            # A branch per commit, so that each is some branch's newest, as the clone takes it.
            sides = {side: [f"{side}-par-{n}-{m}" for m in range(PARALLEL_COMMITS)]
                     for side in times}
            for branch in sides["raw"] + sides["speed"]:
                git.commit("bench/app", {"round.txt": branch}, branch=branch)
            # Each side first in turn: what the one before leaves the engine to do (images to
            # remove, the page cache) falls on both alike.
            for side in ("raw", "speed") if n % 2 == 0 else ("speed", "raw"):
                if side == "raw":
                    times["raw"].append(raw_parallel(url, sides["raw"], work))
                else:
                    times["speed"].append(speed_parallel(bot, url, sides["speed"]))
            alive(bot)
    finally:
        bot.stop()
        remove_leftovers(bot)
    return times


def measure() -> dict:
    """Rows 1-4 in one run: the results' deploys section."""
    ensure_base_image(docker.from_env())
    load_before = load_average()
    with tempfile.TemporaryDirectory() as scratch:
        work = pathlib.Path(scratch)
        git = GitHost(work / "git")
        url = git.url("bench/app")
        git.commit("bench/app", {"Dockerfile": DOCKERFILE, "run.sh": "echo hello\n"})
        (work / "rounds").mkdir()
        bot = SpeedProcess(work / "rounds", free_port(), free_port(), max_concurrent=1)
        bot.start()
        try:
            runs = _rounds(bot, git, url, work)
        finally:
            bot.stop()
            remove_leftovers(bot)
        try:
            parallel = _parallel(git, url, work)
        finally:
            git.close()
    medians = {key: statistics.median(runs[key]) for key in ("raw", "speed", "repeat")}
    parallel_medians = {side: statistics.median(times) for side, times in parallel.items()}
    # CPU: the rounds' total divided by the rounds.
    means = {key: statistics.mean(runs[key]) for key in ("raw_cpu", "speed_cpu", "speed_cpu_own")}
    rows = [
        pair("one deploy, new commit (median of %d)" % ROUNDS, "s", round(medians["raw"], 3),
             round(medians["speed"], 3), ("ratio", "<=", 1.03)),
        pair("same commit again (SPEED reuses its image)", "s", round(medians["raw"], 3),
             round(medians["repeat"], 3), ("ratio", "<=", 0.75),
             raw_is="row 1's: the raw commands redo it all"),
        pair(f"{PARALLEL_COMMITS} new commits, {PARALLEL} at a time (wall, median of "
             f"{PARALLEL_ROUNDS})", "s", round(parallel_medians["raw"], 3),
             round(parallel_medians["speed"], 3), ("ratio", "<=", 1.05)),
        pair("CPU per deploy outside the engine (mean)", "CPU-s", round(means["raw_cpu"], 3),
             round(means["speed_cpu"], 3), ("ratio", "<=", 1.1)),
    ]
    return {
        "load_average_1m_before": load_before,
        "load_average_1m_after": load_average(),
        "rows": rows,
        "rounds": ROUNDS,
        "how": {
            "raw": "git clone -q --depth 1 --single-branch, docker build -q, docker run --rm "
                   "(docker rmi afterwards, untimed)",
            "speed": "POST /start, then the deployment's event stream (GET "
                     "/deployments/<id>/events) followed until `end`, as `speed deploy` waits, "
                     "and GET /info; max_concurrent 1 (rows 1, 2, 4), 4 (row 3)",
            "parallel": f"{PARALLEL_ROUNDS} rounds, each side first in turn; in each, "
                        f"{PARALLEL_COMMITS} branches with a new commit each per side; raw: "
                        f"bench/raw-deploy.sh through xargs -P{PARALLEL}; SPEED: {PARALLEL_COMMITS}"
                        " POST /start at once, wall time until the last finished",
            "cpu": "SPEED: /proc/<pid>/stat utime+stime+cutime+cstime of the server (its git "
                   f"children included) from POST /start to {SETTLE_SECONDS} s after finished; "
                   "serving the event stream is part of that load (the client's own CPU is not "
                   "counted). Raw: getrusage(RUSAGE_CHILDREN) "
                   "around the commands (git, docker CLI). Neither counts the engine nor the "
                   "git server (a process of its own)",
        },
        "raw_s": [round(t, 3) for t in runs["raw"]],
        "speed_new_commit_s": [round(t, 3) for t in runs["speed"]],
        "speed_same_commit_s": [round(t, 3) for t in runs["repeat"]],
        "raw_cpu_s": [round(t, 3) for t in runs["raw_cpu"]],
        "speed_cpu_s": [round(t, 3) for t in runs["speed_cpu"]],
        # SPEED's own share of it (the rest is its reaped children: git).
        "speed_cpu_own_mean_s": round(means["speed_cpu_own"], 3),
        "speed_idle_cpu_per_s": round(runs["idle_cpu_per_s"], 4),
        "parallel_s": {side: [round(t, 3) for t in times] for side, times in parallel.items()},
    }
