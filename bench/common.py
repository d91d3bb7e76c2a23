"""What the bench's parts share: the process readings, percentiles, a table row, the cleanup."""
import os
import pathlib
import subprocess
import sys
import threading
import time

import docker
import yaml

from tests.conftest import DOCKERFILE
from tests.gitserver import GitServer
from tests.process import ROOT, SpeedProcess

WEBHOOK_SECRET = "bench-webhook-secret"
TICKS = os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    """The machine's 1-minute load average: how far to trust what was measured alongside."""
    return round(os.getloadavg()[0], 2)


def _cpu_times() -> tuple[int, int]:
    """(idle, total) CPU time of the machine so far, in ticks (/proc/stat)."""
    ticks = [int(value) for value in pathlib.Path("/proc/stat").read_text().split("\n")[0]
             .split()[1:]]
    return ticks[3] + ticks[4], sum(ticks)  # idle and iowait


def wait_for_quiet(idle_share: float = 0.9, longest: float = 60.0) -> float:
    """Wait until the CPUs were idle idle_share of a second (what a part before left the engine
    to do, removing images, ends first), or longest seconds; the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < longest:
        idle, total = _cpu_times()
        time.sleep(1.0)
        idle_after, total_after = _cpu_times()
        if idle_after - idle >= idle_share * max(total_after - total, 1):
            break
    return round(time.monotonic() - started, 1)


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on: the command name may hold spaces or ")"."""
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of process pid itself and of its children it reaped."""
    fields = _stat(pid)
    # Fields 14-17 (utime, stime, cutime, cstime) are 11-14 once the first two are cut off.
    own = (int(fields[11]) + int(fields[12])) / TICKS
    children = (int(fields[13]) + int(fields[14])) / TICKS
    return {"own": own, "children": children, "total": own + children}


def rss_mib(pid: int) -> float:
    """The resident set of process pid (VmRSS), in MiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"process {pid} has no VmRSS (a zombie?)")


def percentile(samples: list[float], p: float) -> float:
    """The nearest-rank p-th percentile."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def pair(what: str, unit: str, raw: float, speed: float, aim: tuple | None = None,
         raw_is: str | None = None, raw_also: str | None = None) -> dict:
    """A table row: SPEED beside its raw pair, their ratio (SPEED / raw), and the aim met."""
    # aim: (of, op, value), of "ratio" or "speed", op "<=" or ">="; raw_is says what the pair
    # is when it is not the same measure of the raw side; raw_also names another raw variant.
    exact = speed / raw if raw else None
    ratio = round(exact, 3) if raw else None
    row = {"what": what, "unit": unit, "raw": raw, "speed": speed, "ratio": ratio}
    row.update({key: value for key, value in (("raw_is", raw_is), ("raw_also", raw_also))
                if value})
    if aim is not None:
        of, op, value = aim
        seen = exact if of == "ratio" else speed  # unrounded: 1.053 does not meet 1.05
        row["aim"] = {"of": of, "op": op, "value": value}
        row["met"] = seen is not None and (seen <= value if op == "<=" else seen >= value)
    return row


def accept_webhooks(bot: SpeedProcess) -> None:
    """Give a SPEED a webhook secret and a rule deploying pushes to burst-* branches."""
    config = yaml.safe_load(bot.config_path.read_text())
    config["github"] = {"webhook_secret": WEBHOOK_SECRET}
    config["repos"] = [{"match": "bench/*", "branches": ["burst-*"]}]
    bot.config_path.write_text(yaml.safe_dump(config))


def alive(bot: SpeedProcess) -> None:
    """Raise with the end of its log if SPEED exited."""
    if bot.process is None or bot.process.poll() is not None:
        tail = bot.log_path.read_text(errors="replace")[-3000:] if bot.log_path.exists() else ""
        raise RuntimeError(f"SPEED exited during the bench; its log ends:\n{tail}")


def remove_leftovers(bot: SpeedProcess) -> None:
    """Remove the containers and images a stopped SPEED left in the engine."""
    # SPEED keeps its images for reuse and rollback: the bench's would pile up run after run.
    instance = getattr(bot, "instance", None)
    if not instance:
        return
    api = docker.from_env().api
    for container in api.containers(all=True, filters={"label": f"speed.instance={instance}"}):
        api.remove_container(container["Id"], force=True)
    for image in api.images(f"speed-{instance}"):
        for tag in image.get("RepoTags") or []:
            if tag.startswith(f"speed-{instance}:"):  # not others' tags of the same image
                api.remove_image(tag, force=True)


def serve_git(root: str) -> None:
    """The git server's process: serve root, say where on stdout, and serve until killed."""
    server = GitServer(pathlib.Path(root))
    print(server.base_url, flush=True)
    threading.Event().wait()


class GitHost(GitServer):
    """tests/gitserver.py's GitServer, serving from a process of its own."""
    # The git commands it runs per clone are then children of neither the bench (whose reaped
    # children are the raw side's CPU) nor SPEED. Commits are still written from here.

    def __init__(self, root: pathlib.Path):  # noqa: the parent's own server is not wanted
        self._process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from bench.common import serve_git; "
             "serve_git(sys.argv[1])", str(root)],
            cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.base_url = self._process.stdout.readline().strip()
        if not self.base_url.startswith("http://"):
            self._process.kill()
            raise RuntimeError("the git server process did not say where it serves")
        self.root, self.work = root, root / "_work"

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(10)


def app_and_sleeper(git: GitServer) -> tuple[str, str, str]:
    """The bench's two repositories on git: an app that prints a line and exits, and one that
    sleeps (its deployment holds a slot, so what others queue stays queued); (the app's URL,
    its commit, the sleeper's URL)."""
    commit = git.commit("bench/app", {"Dockerfile": DOCKERFILE, "run.sh": "echo hello\n"})
    git.commit("bench/sleeper", {"Dockerfile": DOCKERFILE, "run.sh": "sleep 300\n"})
    return git.url("bench/app"), commit, git.url("bench/sleeper")
