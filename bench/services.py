"""Services in the bench: push-to-live time against the raw commands, and the proxy's latency.

measure() runs a SPEED process of its own behind a private Caddy (tests/caddy.py: its own admin
port, never 2019) and a git server of its own, and removes every container and image it made.
`python -m bench.services` runs only this part and prints what it measured."""
import datetime
import json
import os
import pathlib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import docker
import requests

from bench.common import remove_leftovers
from tests.caddy import Caddy, binary
from tests.conftest import free_port
from tests.gitserver import GitServer
from tests.images import BASE_IMAGE, ensure_base_image
from tests.process import SpeedProcess

ROUNDS = 6
POLL_SECONDS = 0.01  # both sides look every 10 ms: the raw one at the app, SPEED's at /info
PROXY_REQUESTS = 400  # sequential GETs each way, interleaved
WARM_UP_REQUESTS = 30

# busybox httpd serving /www, as tests/test_services.py builds it.
APP_DOCKERFILE = (f"FROM {BASE_IMAGE}\nCOPY www /www\nRUN chmod -R a+x /www/cgi-bin\n"
                  "CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n")
# drain 0: the old release is retired at once; the bench waits for that outside the timing, so
# no retirement overlaps the next round (the raw side removes its container untimed too).
SPEED_YML = "service:\n  port: 8080\n  drain: 0\n  health: %s\n"
EVENTS = "events"  # wait on the deployment's event stream instead of polling /info
# Each SPEED configuration (health check, seconds between two GET /info or EVENTS) deploys a
# repository (so an environment) of its own.
FAST = "{path: /healthz, interval: 0.1, passes: 1}"
CONFIGS = {
    # What the raw side effectively does: live at the first 200 of /healthz.
    "passes_1_interval_0.1": (FAST, POLL_SECONDS),
    # The default passes (2), at the smallest interval allowed.
    "passes_2_interval_0.1": ("{path: /healthz, interval: 0.1}", POLL_SECONDS),
    # Only the path set: the defaults of interval (0.2 s) and passes (2).
    "defaults_passes_2_interval_0.2": ("{path: /healthz}", POLL_SECONDS),
    # The first again, looking at /info every 100 ms: what the 10 ms polling itself costs
    # SPEED (its phases; the total then includes up to 100 ms more of looking).
    "passes_1_interval_0.1_info_every_0.1": (FAST, 0.1),
    # The first again, told by the deployment's event stream (no polling at all).
    "passes_1_interval_0.1_event_stream": (FAST, EVENTS),
}
RAW = "raw"


def _files(version: str, health: str) -> dict[str, str]:
    return {"Dockerfile": APP_DOCKERFILE, "www/index.html": f"{version}\n", "www/healthz": "ok\n",
            "www/cgi-bin/.keep": "", ".speed.yml": SPEED_YML % health}


def _wall() -> datetime.datetime:
    """Now as SPEED stores its timestamps (naive UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _stamp(text: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(text) if text else None


def _between(start: datetime.datetime | None, end: datetime.datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) process pid used so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for_events(session: requests.Session, url: str) -> dict:
    """Read a deployment's Server-Sent Events until a status event says it finished: the
    deployment as /info shows it."""
    kind, info = None, None
    with session.get(url, stream=True, timeout=60) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "status":
                info = json.loads(line.removeprefix("data: "))
                if info["status"] not in ("Pending", "Running"):
                    return info
            elif kind == "end" and not line:
                break
    raise RuntimeError(f"the event stream ended without a final status: {info}")


def _get(url: str, host: str | None = None) -> requests.Response | None:
    """One GET on a fresh connection; None if it got no answer."""
    try:
        return requests.get(url, headers={"Host": host} if host else None, timeout=2)
    except requests.RequestException:
        return None


def container_times(container_id: str) -> dict[str, datetime.datetime]:
    """When the engine created the container and when its process started (Created and
    State.StartedAt: the engine's clock, the machine's)."""
    info = docker.from_env().api.inspect_container(container_id)

    def parse(stamp: str) -> datetime.datetime:
        whole, _, fraction = stamp.rstrip("Z").partition(".")
        return datetime.datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}")

    return {"create": parse(info["Created"]), "start": parse(info["State"]["StartedAt"])}


def raw_push_to_live(url: str, work: pathlib.Path, tag: str) -> dict:
    """git clone --depth 1, docker build, docker run -d -p, then GET /healthz every 10 ms until
    it answers 200: the deployment by hand. Its container and image go afterwards, untimed."""
    target, port = work / tag.replace(":", "-"), free_port()
    container = None
    bench_cpu = time.process_time()
    started = time.perf_counter()
    try:
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--single-branch", "--branch", "main",
                        "--", url, str(target)], check=True)
        cloned = time.perf_counter()
        subprocess.run(["docker", "build", "-q", "-t", tag, str(target)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        built, run_began = time.perf_counter(), _wall()
        container = subprocess.run(
            ["docker", "run", "-d", "-p", f"127.0.0.1:{port}:8080", tag], check=True,
            capture_output=True, text=True).stdout.strip()
        running = time.perf_counter()
        deadline = running + 60
        while (answer := _get(f"http://127.0.0.1:{port}/healthz")) is None \
                or answer.status_code != 200:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the raw container never answered on {port}")
            time.sleep(POLL_SECONDS)
        live = time.perf_counter()
        bench_cpu = time.process_time() - bench_cpu
        engine = container_times(container)
        # docker run -d until the engine created the container, then started it; then the CLI.
        returned = run_began + datetime.timedelta(seconds=running - built)
        split = {"run_to_create": _between(run_began, engine.get("create")),
                 "create_to_start": _between(engine.get("create"), engine.get("start")),
                 "start_to_cli_return": _between(engine.get("start"), returned)}
    finally:
        if container:
            subprocess.run(["docker", "rm", "-f", container], stdout=subprocess.DEVNULL)
        subprocess.run(["docker", "rmi", "-f", tag], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return {"total": live - started, "clone": cloned - started, "build": built - cloned,
            "run": running - built, "first_200": live - running, **split,
            "bench_cpu": bench_cpu}


class ServiceBench:
    """A SPEED process behind a private Caddy, and what it takes to read its timings."""

    def __init__(self, work: pathlib.Path):
        command = binary()
        if command is None:
            raise RuntimeError("caddy is not installed (make test-system installs Debian's)")
        (work / "caddy").mkdir()
        self.caddy = Caddy(work / "caddy", command)
        (work / "speed").mkdir()
        self.bot = SpeedProcess(work / "speed", free_port(), free_port(),
                                proxy={"admin": self.caddy.admin, "listen": self.caddy.listen},
                                max_concurrent=1)

    def start(self) -> None:
        self.caddy.start()
        self.bot.start()

    def push_to_live(self, url: str, version: str, poll: float | str = POLL_SECONDS) -> dict:
        """POST /start, then GET /info every poll seconds until Succeeded (one keep-alive
        connection), or with poll EVENTS read the deployment's event stream until it says so;
        the deployment's phases, and the CPU time SPEED's process and the bench's used
        meanwhile."""
        bot = self.bot
        with requests.Session() as session:  # keep-alive: a poll costs both sides less
            session.get(f"{bot.base_url}/deployments", timeout=10)  # connected before the clock
            posted, speed_cpu, bench_cpu = _wall(), _cpu(bot.process.pid), time.process_time()
            started = time.perf_counter()
            response = session.post(f"{bot.base_url}/start", json={"url": url, "branch": "main"},
                                    timeout=10)
            assert response.status_code == 201, response.text
            deployment_id = response.json()["id"]
            if poll == EVENTS:
                info = _wait_for_events(
                    session, f"{bot.base_url}/deployments/{deployment_id}/events")
            else:
                while (info := session.get(f"{bot.base_url}/info/{deployment_id}", timeout=10)
                       .json())["status"] in ("Pending", "Running"):
                    time.sleep(poll)
            elapsed, seen = time.perf_counter() - started, _wall()
        speed_cpu = _cpu(bot.process.pid) - speed_cpu
        bench_cpu = time.process_time() - bench_cpu
        if info["status"] != "Succeeded":
            raise RuntimeError(f"deployment {deployment_id}: {info['status']} ({info['reason']})\n"
                               f"{bot.results(deployment_id)[-3000:]}")
        live_url = info["reason"].removeprefix("live at ")
        host = live_url.removeprefix("http://").split("/", 1)[0].split(":")[0]
        # Succeeded means the proxy serves the new release: check it, untimed.
        answer = _get(f"http://{self.caddy.listen}/", host)
        served = answer is not None and answer.status_code == 200 and answer.text.strip() == version
        phases = self.phases(deployment_id, posted, seen)
        self.wait_retired(host)
        return {"total": elapsed, "served_new_version_at_once": served, "host": host,
                "deployment": deployment_id, "speed_cpu": speed_cpu, "bench_cpu": bench_cpu,
                **phases}

    def phases(self, deployment_id: int, posted: datetime.datetime,
               seen: datetime.datetime) -> dict:
        """Where the time went, from the database's timestamps (and Caddy's log for the route
        change): see the keys' comments in measure()."""
        row = self.bot.row(deployment_id)
        with sqlite3.connect(self.bot.db_path) as db:
            container_id, live_since = db.execute(
                "SELECT container_id, live_since FROM release WHERE deployment_id = ?",
                (deployment_id,)).fetchone()
        created, claimed = _stamp(row["created_at"]), _stamp(row["started_at"])
        cloned, built = _stamp(row["cloned_at"]), _stamp(row["built_at"])
        container_started = _stamp(row["container_started_at"])
        live, finished = _stamp(live_since), _stamp(row["finished_at"])
        routed = self.route_posted(container_started, live)
        engine = container_times(container_id)
        return {
            "post_to_created": _between(posted, created),
            "queue": _between(created, claimed),
            "clone": _between(claimed, cloned),
            "build": _between(cloned, built),
            "release_and_start_container": _between(built, container_started),
            # ... of which: until the engine created the container (its Created), then until
            # its process started (State.StartedAt), then until the database recorded that.
            "built_to_create": _between(built, engine.get("create")),
            "create_to_start": _between(engine.get("create"), engine.get("start")),
            "start_to_recorded": _between(engine.get("start"), container_started),
            "health_wait": _between(container_started, routed or live),
            "route_change_and_go_live": _between(routed, live) if routed else None,
            "finish": _between(live, finished),
            "seen_by_poll": _between(finished, seen),
        }

    def route_posted(self, after: datetime.datetime | None,
                     before: datetime.datetime | None) -> datetime.datetime | None:
        """When Caddy received SPEED's route change (its admin log's first config write
        between after and before), as naive UTC."""
        if not after or not before:
            return None
        for line in self.caddy.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") != "received request" or entry.get("method") != "POST":
                continue
            at = datetime.datetime.fromtimestamp(entry["ts"], datetime.timezone.utc) \
                .replace(tzinfo=None)
            if after <= at <= before:
                return at
        return None

    def wait_retired(self, host: str, timeout: float = 30) -> None:
        """Until the environment has no release starting or draining (drain 0: the one replaced
        is stopped at once), so the next round does not share the machine with its removal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, body = self.bot.call("GET", "/environments")
            busy = [r for e in body["environments"] if e["url"].split("/")[2].split(":")[0] == host
                    for r in e["releases"] if r["state"] in ("starting", "healthy", "draining")]
            if not busy:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{host}: a release was not retired within {timeout} s")

    def live_upstream(self, host: str) -> str:
        """The published address (127.0.0.1:port) of the live release serving host."""
        _, body = self.bot.call("GET", "/environments")
        (environment,) = [e for e in body["environments"]
                          if e["url"].split("/")[2].split(":")[0] == host]
        with sqlite3.connect(self.bot.db_path) as db:
            (upstream,) = db.execute("SELECT upstream FROM release WHERE id = ?",
                                     (environment["live"]["id"],)).fetchone()
        return upstream

    def stop(self) -> None:
        """Stop SPEED and Caddy; remove what this SPEED left in the engine (its live releases
        outlive it on purpose, and their images are kept for rollback)."""
        try:
            self.bot.stop()
        finally:
            self.caddy.stop()
            remove_leftovers(self.bot)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def proxy_latency(caddy_listen: str, host: str, upstream: str,
                  count: int = PROXY_REQUESTS) -> dict:
    """GET / through Caddy (Host header) and straight to the container's published port, one
    request after another, interleaved, each on a keep-alive session of its own."""
    direct_url, proxied_url = f"http://{upstream}/", f"http://{caddy_listen}/"
    samples = {"direct": [], "proxied": []}
    headers = {}
    with requests.Session() as direct, requests.Session() as proxied:
        def one(session: requests.Session, url: str, extra: dict | None) -> tuple[float, dict]:
            began = time.perf_counter()
            response = session.get(url, headers=extra, timeout=5)
            took = time.perf_counter() - began
            assert response.status_code == 200, (url, response.status_code, response.text)
            return took, response.headers

        for _ in range(WARM_UP_REQUESTS):
            one(direct, direct_url, None)
            one(proxied, proxied_url, {"Host": host})
        for n in range(count):
            # Alternate which goes first, so neither always follows the other.
            order = [("direct", direct, direct_url, None),
                     ("proxied", proxied, proxied_url, {"Host": host})]
            for name, session, url, extra in order if n % 2 else reversed(order):
                took, seen = one(session, url, extra)
                samples[name].append(took)
                headers[name] = seen.get("Connection")

    def summary(values: list[float]) -> dict:
        return {f"p{p}_ms": round(percentile(values, p) * 1000, 3) for p in (50, 90, 99)}

    direct, proxied = summary(samples["direct"]), summary(samples["proxied"])
    return {
        "requests_each": count,
        "direct": direct,
        "through_caddy": proxied,
        "added_p50_ms": round(proxied["p50_ms"] - direct["p50_ms"], 3),
        "added_p90_ms": round(proxied["p90_ms"] - direct["p90_ms"], 3),
        "added_p99_ms": round(proxied["p99_ms"] - direct["p99_ms"], 3),
        # busybox httpd closes every connection: direct, each GET is a new TCP connection;
        # through Caddy the client's connection is kept and Caddy opens one to the app per GET.
        "connection_header": headers,
    }


def _medians(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, float) or v is None]
    found = {}
    for key in keys:
        values = [run[key] for run in runs if run.get(key) is not None]
        found[key] = round(statistics.median(values), 3) if values else None
    return found


def measure(rounds: int = ROUNDS) -> dict:
    """Push-to-live of a busybox-httpd service, SPEED against the raw commands, `rounds` new
    commits each; then the proxy's added latency per request. Returns the results' keys."""
    ensure_base_image(docker.from_env())
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        work = pathlib.Path(scratch)
        git = GitServer(work / "git")
        bench = ServiceBench(work)
        urls = {name: git.url(f"bench/web-{n}") for n, name in enumerate([RAW, *CONFIGS])}
        health = {RAW: FAST, **{name: yml for name, (yml, _) in CONFIGS.items()}}
        runs: dict[str, list[dict]] = {name: [] for name in urls}
        served_late = 0
        try:
            bench.start()
            commits = 0

            def deploy(name: str) -> dict:
                nonlocal commits
                # A new commit for every deployment, content no build has seen: neither side
                # gets the other's build cache.
                commits += 1
                version = f"{name} {commits}"
                git.commit(f"bench/web-{list(urls).index(name)}", _files(version, health[name]))
                if name == RAW:
                    return raw_push_to_live(urls[name], work, f"speed-bench-svc-raw:{commits}")
                return bench.push_to_live(urls[name], version, CONFIGS[name][1])

            for name in urls:  # warm up: each environment's first release, the networks
                deploy(name)
            names = list(urls)
            for n in range(rounds):
                # Rotate who goes first: a trend in the machine's load hits all alike.
                for name in names[n % len(names):] + names[:n % len(names)]:
                    run = deploy(name)
                    runs[name].append(run)
                    served_late += name != RAW and not run["served_new_version_at_once"]
            host = runs["passes_1_interval_0.1"][-1]["host"]
            latency = proxy_latency(bench.caddy.listen, host, bench.live_upstream(host))
        finally:
            bench.stop()
            git.close()
    raw = _medians(runs[RAW])
    push = {
        "load_average_1m_before": round(load_before, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "rounds": rounds,
        "raw_poll_s": POLL_SECONDS,
        "raw_median_s": raw["total"],
        # clone, build (docker build -q), run (until docker run -d returned; the container's
        # Created and State.StartedAt split it: run_to_create, create_to_start,
        # start_to_cli_return), first_200 (GET /healthz every 10 ms until it answered 200);
        # bench_cpu: the CPU time the bench's own process used meanwhile.
        "raw_phases_median_s": raw,
        "speed": {},
        "deployments_not_serving_the_new_version_when_succeeded": served_late,
    }
    for name, (yml, poll) in CONFIGS.items():
        phases = _medians(runs[name])
        push["speed"][name] = {
            "health": yml,
            "waits_by": "GET /deployments/{id}/events (Server-Sent Events)" if poll == EVENTS
            else f"GET /info every {poll:g} s",
            "median_s": phases.pop("total"),
            "ratio": round(statistics.median(r["total"] for r in runs[name]) / raw["total"], 2),
            # post_to_created: POST /start until its row; queue: until the worker claimed it;
            # clone: ls-remote + clone + .speed.yml; build; release_and_start_container:
            # the release row, create, inspect, start; health_wait: until the route change
            # reached Caddy; route_change_and_go_live: Caddy's reload + the database; finish:
            # live until Succeeded; seen_by_poll: Succeeded until GET /info said so;
            # speed_cpu, bench_cpu: the CPU time SPEED's process and the bench's used meanwhile
            # (most of the bench's, and some of SPEED's, is the polling of /info).
            "phases_median_s": phases,
            "all_s": [round(r["total"], 3) for r in runs[name]],
        }
    push["raw_all_s"] = [round(r["total"], 3) for r in runs[RAW]]
    return {"service_push_to_live": push,
            "proxy_latency": {"load_average_1m": round(os.getloadavg()[0], 2), **latency}}


if __name__ == "__main__":
    json.dump(measure(int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS), sys.stdout, indent=2)
    print()
