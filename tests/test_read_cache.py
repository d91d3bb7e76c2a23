"""Answers served from memory (storage/cache.py) are never older than the database: any commit,
by SPEED or by another connection, makes the next read compute afresh; /info's ETag gets a 304."""
import sqlite3

import pytest

from storage.cache import ReadCache
from storage.db import SQLITE_PRAGMAS
from tests.conftest import wait_finished
from tests.test_api import CLOSED, start

WRITE = "INSERT INTO note (text) VALUES ('x')"


def _database(path) -> sqlite3.Connection:
    """An SQLite database in WAL mode, as SPEED keeps it, with a table to write to."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA journal_mode = {SQLITE_PRAGMAS['journal_mode']}")
    db.execute("CREATE TABLE note (text TEXT)")
    return db


def _counting():
    """A computation that answers how many times it ran."""
    runs = []

    async def compute():
        runs.append(1)
        return len(runs)

    return compute


@pytest.fixture
def watched(tmp_path):
    """An SQLite database with a writer of its own, and a ReadCache watching it."""
    writer = _database(tmp_path / "speed.db")
    cache = ReadCache(f"sqlite:///{tmp_path / 'speed.db'}")
    yield writer, cache
    cache.close()
    writer.close()


async def test_an_answer_is_reused_until_another_connection_commits(watched):
    writer, cache = watched
    compute = _counting()
    assert [await cache.get("k", compute) for _ in range(3)] == [1, 1, 1]
    writer.execute(WRITE)
    assert await cache.get("k", compute) == 2
    writer.execute("BEGIN")
    writer.execute(WRITE)  # not committed yet: nothing changed for a reader
    assert await cache.get("k", compute) == 2
    writer.execute("COMMIT")
    assert await cache.get("k", compute) == 3


async def test_a_commit_during_the_computation_is_not_kept(watched):
    writer, cache = watched
    runs = []

    async def compute():
        runs.append(1)
        if len(runs) == 1:  # what it read may be from before this commit
            writer.execute(WRITE)
        return len(runs)

    assert [await cache.get("k", compute) for _ in range(3)] == [1, 2, 2]


async def test_answers_keep_says_depend_on_more_are_never_kept(watched):
    _, cache = watched
    compute = _counting()
    assert [await cache.get("k", compute, keep=lambda _: False) for _ in range(2)] == [1, 2]


async def test_postgresql_reads_are_never_kept():
    # No connection is made: a PostgreSQL store is read through its database thread only.
    cache, compute = ReadCache("postgresql://speed@127.0.0.1:1/speed"), _counting()
    assert [await cache.get("k", compute) for _ in range(2)] == [1, 2]
    cache.close()


async def _finished(client):
    """A deployment that failed at once (nothing to clone), and its /info answer once final."""
    deployment_id = await start(client, CLOSED)
    await wait_finished(client, deployment_id)
    return deployment_id, await client.get(f"/info/{deployment_id}")


async def test_info_answers_not_modified_to_its_etag_until_the_deployment_changes(
        make_client, tmp_path):
    client = await make_client()
    deployment_id, first = await _finished(client)
    etag = first.headers["ETag"]
    again = await client.get(f"/info/{deployment_id}", headers={"If-None-Match": etag})
    assert again.status == 304 and again.headers["ETag"] == etag and await again.read() == b""
    other = await client.get(f"/info/{deployment_id}", headers={"If-None-Match": '"other"'})
    assert other.status == 200 and await other.json() == await first.json()
    # Changed behind SPEED's back, by another connection: the next answer shows it.
    with sqlite3.connect(tmp_path / "speed" / "speed.db") as db:
        db.execute("UPDATE deployment SET progress = 'changed outside' WHERE id = ?",
                   (deployment_id,))
    changed = await client.get(f"/info/{deployment_id}", headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    assert (await changed.json())["progress"] == "changed outside"


async def test_info_answers_304_only_to_its_own_etag_or_a_bare_star(make_client):
    client = await make_client()
    deployment_id, first = await _finished(client)
    etag = first.headers["ETag"]
    statuses = {}
    for presented in ("*", f'"other", {etag}', f"W/{etag}", '"*"', 'W/"*"', '"other"', "garbage"):
        response = await client.get(f"/info/{deployment_id}", headers={"If-None-Match": presented})
        statuses[presented] = response.status
    assert statuses == {"*": 304, f'"other", {etag}': 304, f"W/{etag}": 304, '"*"': 200,
                        'W/"*"': 200, '"other"': 200, "garbage": 200}
