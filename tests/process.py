"""SPEED as a real process (python main.py), for tests that kill it."""
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time

import requests
import yaml

from tests.conftest import TEST_INSTANCES, free_port, postgres_sql
from tests.invariants import Target, check

ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class HostProcess:
    """A process on this host, told apart from a later one that reuses its pid by its start time."""
    pid: int
    started: int  # clock ticks after boot (/proc/<pid>/stat field 22)
    command: str

    def running(self) -> bool:
        """Whether it still runs: exists, is the same process, and is not a zombie."""
        stat = _stat(self.pid)
        return stat is not None and int(stat[19]) == self.started and stat[0] != "Z"


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; None once the process is gone."""
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()  # the command name may contain spaces or ")"


def descendants(pid: int) -> list[HostProcess]:
    """Every running process below pid (children, theirs, ...), whatever their session."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        stat = _stat(child)
        if stat is None or stat[0] == "Z":
            continue
        try:
            command = pathlib.Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        found.append(HostProcess(child, int(stat[19]), command.decode(errors="replace").strip()))
        todo += children.get(child, [])
    return found


class SpeedProcess:
    """One SPEED instance with its own database, workdir and ports; restartable."""

    def __init__(self, tmp_path: pathlib.Path, port: int, callback_port: int,
                 proxy: dict | None = None, sections: dict | None = None, **runner):
        """sections: whole sections of app.yaml to use (database and secrets, for replicas
        sharing a PostgreSQL database)."""
        self.db_path = tmp_path / "speed.db"
        self.log_path = tmp_path / "speed.log"
        self.config_path = tmp_path / "app.yaml"
        self.base_url = f"http://127.0.0.1:{port}"
        sections = sections or {}
        self.database_url = sections.get("database", {}).get("url", f"sqlite:///{self.db_path}")
        config = {
            "server": {"host": "127.0.0.1", "port": port},
            "database": {"url": self.database_url},
            "runner": {"workdir": str(tmp_path / "work"), "callback_port": callback_port,
                       "allowed_urls": ["http://127.0.0.1:*"], "timeout": 120, **runner},
            # Never the machine's own Caddy unless the test names one (the caddy fixture's).
            "proxy": proxy or {"admin": f"http://127.0.0.1:{free_port()}"},
            **{name: section for name, section in sections.items() if name != "runner"},
        }
        self.config_path.write_text(yaml.safe_dump(config))
        self.timeout = config["runner"]["timeout"]
        self.process: subprocess.Popen | None = None

    def start(self, preexec_fn=None) -> None:
        """Start it (preexec_fn runs in the child before SPEED: e.g. to lower a limit there
        only) and wait until it answers."""
        log = open(self.log_path, "a")
        self.process = subprocess.Popen([sys.executable, "main.py", "--config", str(self.config_path)],
                                        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SPEED exited: {self.log_path.read_text()[-2000:]}")
            try:
                requests.get(f"{self.base_url}/deployments", timeout=1)
                self.instance = self._instance()
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("SPEED did not start within 30 s")

    def _instance(self) -> str:
        return self.sql("SELECT value FROM setting WHERE key = 'instance_id'")[0][0]

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Rows of one statement on its database (SQLite's ? or PostgreSQL's %s for params),
        on a connection of its own."""
        if not self.database_url.startswith("postgresql"):
            with sqlite3.connect(self.db_path) as db:
                return db.execute(statement, params).fetchall()
        return postgres_sql(self.database_url, statement, params)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def sigterm(self) -> float:
        """Send SIGTERM; return when it was sent (time.monotonic()) for wait_exit."""
        assert self.process is not None
        sent = time.monotonic()
        self.process.terminate()
        return sent

    def wait_exit(self, since: float, timeout: float = 20.0) -> tuple[int | None, float]:
        """The exit code (None if still running after timeout) and the seconds from since to the
        exit (or to giving up)."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=max(since + timeout - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - since

    def git_processes(self) -> list[HostProcess]:
        """The git processes this SPEED started that run now (git runs in a session of its own,
        so these are found by parentage, not by process group)."""
        assert self.process is not None
        return [p for p in descendants(self.process.pid) if p.command.split(" ", 1)[0]
                .rsplit("/", 1)[-1].startswith("git")]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        response = requests.request(method, self.base_url + path, timeout=10,
                                    data=None if body is None else json.dumps(body))
        return response.status_code, response.json()

    def start_deployment(self, url: str, branch: str = "main") -> int:
        status, body = self.call("POST", "/start", {"url": url, "branch": branch})
        assert status == 201, body
        return body["id"]

    def info(self, deployment_id: int) -> dict:
        return self.call("GET", f"/info/{deployment_id}")[1]

    def results(self, deployment_id: int) -> str:
        return self.call("GET", f"/results/{deployment_id}")[1]["results"]

    def row(self, deployment_id: int) -> dict:
        """The deployment's row read straight from the database file."""
        with sqlite3.connect(self.db_path) as db:
            db.row_factory = sqlite3.Row
            return dict(db.execute("SELECT * FROM deployment WHERE id = ?", (deployment_id,)).fetchone())

    def target(self) -> Target:
        """This instance as the invariant checker sees it."""
        return Target(self.db_path, self.instance, self.timeout)

    def wait_until(self, check, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout} s; log:\n"
                             f"{self.log_path.read_text()[-3000:]}")

    def wait_finished(self, deployment_id: int, timeout: float = 60.0) -> dict:
        return self.wait_until(lambda: (i := self.info(deployment_id))["status"] in
                               ("Succeeded", "Failed", "Cancelled") and i, timeout)

    def wait_output(self, deployment_id: int, text: str, timeout: float = 60.0) -> None:
        try:
            self.wait_until(lambda: text in self.results(deployment_id), timeout)
        except AssertionError as e:
            raise AssertionError(f"{text!r} not in the results: {self.info(deployment_id)}\n"
                                 f"{self.results(deployment_id)[-3000:]}\n{e}") from None


@contextlib.contextmanager
def speed_processes(tmp_path: pathlib.Path, docker_client):
    """Yield make(**runner) starting SpeedProcesses; on exit check those running, stop all."""
    processes = []

    def make(preexec_fn=None, proxy: dict | None = None, **runner) -> SpeedProcess:
        process = SpeedProcess(tmp_path, free_port(), free_port(), proxy, **runner)
        process.start(preexec_fn)
        processes.append(process)
        TEST_INSTANCES.add(process.instance)
        return process

    try:
        yield make
        running = [process for process in processes if process.process.poll() is None]
        assert running, "no SPEED runs at the end of the test: the invariant cannot be checked"
        for process in running:
            check(process.target(), docker_client)
    finally:
        for process in processes:
            process.stop()
