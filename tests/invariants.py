"""The invariant every fault test ends with, for a SPEED process or an in-process app."""
# The database is intact; a deployment is finished exactly when it has a finished_at; every
# deployment reaches a final status within its timeout plus a reconcile window (the checker cancels
# nothing, it waits); every container labelled for the instance names one existing deployment, at
# most one container each, and none is left once all finished but those of releases that serve; and, given the stand-in GitHub, the
# last commit status of each finished deployment's commit in its context is not `pending`.
import asyncio
import contextlib
import dataclasses
import datetime
import pathlib
import sqlite3
import time

import pytest

from bot.keys import config_key
from tests.conftest import instance_of

FINAL = ("Succeeded", "Failed", "Cancelled")
# Past a deployment's timeout: time for a restart to reconcile, containers to be removed and
# reports to reach GitHub (retries back off up to a few seconds).
RECONCILE_WINDOW = 30.0
POLL = 0.1


@dataclasses.dataclass(frozen=True)
class Target:
    """One SPEED instance as the checker sees it: its database, its instance id, runner.timeout."""
    db_path: pathlib.Path
    instance: str
    timeout: float


def target_of_app(client) -> Target:
    """The Target of an in-process app made by make_client."""
    config = client.app[config_key]
    return Target(pathlib.Path(config.database.url.removeprefix("sqlite:///")),
                  instance_of(client), config.runner.timeout)


def check(target: Target, docker_client, github=None, window: float = RECONCILE_WINDOW) -> None:
    """Assert the invariant, waiting (bounded) for deployments, clean-up and reports to settle."""
    # It blocks: call it from a thread when the SPEED or the FakeGitHub runs in this event loop.
    _assert_intact(target)
    rows = _wait_all_finished(target, docker_client, window)
    _wait(lambda: not _containers(target, docker_client), window,
          lambda: f"containers left behind: {_containers(target, docker_client)}")
    if github is not None:
        _wait(lambda: not _github_problems(github, rows), window,
              lambda: f"GitHub: {_github_problems(github, rows)}")
    _assert_intact(target)


async def check_app(client, docker_client, github=None) -> None:
    """check() for an app in this event loop, which keeps serving meanwhile."""
    await asyncio.to_thread(check, target_of_app(client), docker_client, github)


@dataclasses.dataclass
class AppInvariants:
    """What app_invariants checks besides the apps: the stand-in GitHub, once a test sets it."""
    github: object = None


@pytest.fixture
async def app_invariants(make_client, speed_clients, docker_client):
    """After the test, the invariant holds for every SPEED app it made with make_client."""
    options = AppInvariants()
    yield options  # make_client is set up first, so its clients are still open here
    by_database = {target_of_app(c).db_path: c for c in speed_clients}  # a restart reuses one
    for client in by_database.values():
        await check_app(client, docker_client, options.github)


def _rows(target: Target) -> dict[int, sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(target.db_path, timeout=10)) as db:
        db.row_factory = sqlite3.Row
        query = 'SELECT id, status, started_at, finished_at, repo_full_name, "commit" FROM deployment'
        return {row["id"]: row for row in db.execute(query)}


def _assert_intact(target: Target) -> None:
    with contextlib.closing(sqlite3.connect(target.db_path, timeout=10)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def _serving(target: Target) -> set[str]:
    """Containers of releases that serve (live, or draining): they outlive their deployments."""
    with contextlib.closing(sqlite3.connect(target.db_path, timeout=10)) as db:
        return {c for (c,) in db.execute("SELECT container_id FROM release WHERE state IN "
                                         "('live', 'draining') AND container_id IS NOT NULL")}


def _containers(target: Target, docker_client) -> list[tuple[str, str]]:
    """(id, speed.deployment label) of every container of this instance, running or not, but
    those of releases that serve."""
    found = docker_client.api.containers(
        all=True, filters={"label": f"speed.instance={target.instance}"})
    serving = _serving(target)
    return [(c["Id"][:12], c["Labels"].get("speed.deployment")) for c in found
            if c["Id"] not in serving]


def _epoch(stored: str) -> float:
    """A timestamp as peewee stores it (naive UTC) in seconds since the epoch."""
    return datetime.datetime.fromisoformat(stored).replace(tzinfo=datetime.timezone.utc).timestamp()


def _wait_all_finished(target: Target, docker_client, window: float) -> dict[int, sqlite3.Row]:
    """Poll until every deployment finished; assert the per-row invariants at every poll."""
    stalled_since = None
    while True:
        # Containers before rows: a row is always created before its container, so every
        # container listed here has its row in the read that follows.
        containers = _containers(target, docker_client)
        rows = _rows(target)
        for row in rows.values():
            assert (row["status"] in FINAL) == (row["finished_at"] is not None), dict(row)
        owners = [label for _, label in containers]
        assert len(owners) == len(set(owners)), f"two containers for one deployment: {containers}"
        assert all(label is not None and label.isdigit() and int(label) in rows
                   for label in owners), f"containers of no deployment: {containers}"
        running = [r for r in rows.values() if r["status"] == "Running"]
        pending = [r for r in rows.values() if r["status"] == "Pending"]
        if not running and not pending:
            return rows
        now = time.time()
        late = [dict(r) for r in running if r["started_at"] and
                now > _epoch(r["started_at"]) + target.timeout + window]
        assert not late, f"not finished within timeout {target.timeout} s + {window} s: {late}"
        # Pending deployments have no clock of their own; the queue must move, though.
        stalled_since = (stalled_since or now) if pending and not running else None
        assert stalled_since is None or now - stalled_since < window, \
            f"queued deployments never started: {[dict(r) for r in pending]}"
        time.sleep(POLL)


def _github_problems(github, rows: dict[int, sqlite3.Row]) -> list[str]:
    """Why GitHub does not yet show every finished deployment's outcome; [] once it does."""
    # A request still in flight at the stand-in may yet land a late status.
    if any(call.status is None for call in list(github.calls)):
        return ["a request is still in flight"]
    statuses = {(name.lower(), sha): list(posted)
                for (name, sha), posted in list(github.statuses.items())}
    problems = []
    for row in rows.values():
        if not (row["repo_full_name"] and row["commit"]):
            continue  # nothing GitHub could show: no repository on GitHub or no commit yet
        on_commit = statuses.get((row["repo_full_name"].lower(), row["commit"]), [])
        mine = [s for s in on_commit
                if (s.get("target_url") or "").rsplit("/", 1)[-1] == str(row["id"])]
        if not mine:
            problems.append(f"deployment {row['id']}: no status on {row['commit']}")
        for context in {s.get("context") for s in mine}:
            last = [s for s in on_commit if s.get("context") == context][-1]
            if last["state"] == "pending":
                history = [f"{s['state']} {s.get('description')}" for s in on_commit]
                problems.append(f"deployment {row['id']}: {context} stays pending; statuses "
                                f"in arrival order: {history}")
    return problems


def _wait(condition, timeout: float, describe) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled within {timeout} s: {describe()}")
        time.sleep(POLL)
