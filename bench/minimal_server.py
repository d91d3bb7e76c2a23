"""A minimal aiohttp + SQLite server: the raw pair of SPEED's GET /info/{id} and POST /webhook."""
# python -m bench.minimal_server --port P --database FILE --secret S. Its SQLite is set up as
# SPEED's (WAL, synchronous NORMAL) and used from one thread, as SPEED's database thread is;
# GET /info-on-loop/{id} reads on the event loop instead, to show what that thread costs.
import argparse
import asyncio
import concurrent.futures
import datetime
import hashlib
import hmac
import json
import sqlite3

from aiohttp import web

SCHEMA = """CREATE TABLE IF NOT EXISTS deployment (
    id INTEGER PRIMARY KEY, url TEXT NOT NULL, branch TEXT NOT NULL, repo_full_name TEXT,
    status TEXT NOT NULL, commit_sha TEXT, trigger TEXT, progress TEXT, reason TEXT,
    exit_code INTEGER, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,
    environment TEXT)"""
SEED_ROWS = 50  # a small table, finished deployments like the one SPEED's /info is read for
SELECT = "SELECT * FROM deployment WHERE id = ?"
INSERT = ("INSERT INTO deployment (url, branch, repo_full_name, status, commit_sha, trigger, "
          "created_at) VALUES (?, ?, ?, 'Pending', ?, 'push', ?)")


def connect(path: str) -> sqlite3.Connection:
    """A connection with SPEED's pragmas; rows as dicts."""
    db = sqlite3.connect(path, check_same_thread=False)  # made here, used by one thread only
    db.execute("PRAGMA journal_mode = wal")
    db.execute("PRAGMA synchronous = normal")
    db.execute("PRAGMA busy_timeout = 10000")
    db.row_factory = lambda cursor, row: {c[0]: v for c, v in zip(cursor.description, row)}
    return db


def seed(db: sqlite3.Connection) -> None:
    """The table, with SEED_ROWS finished deployments if it is empty."""
    with db:
        db.execute(SCHEMA)
        if db.execute("SELECT count(*) AS n FROM deployment").fetchone()["n"]:
            return
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        db.executemany(
            "INSERT INTO deployment (url, branch, repo_full_name, status, commit_sha, trigger, "
            "progress, reason, exit_code, created_at, started_at, finished_at) VALUES "
            "(?, 'main', 'bench/app', 'Succeeded', ?, 'api', NULL, 'exit code 0', 0, ?, ?, ?)",
            [(f"http://127.0.0.1:9/bench/app-{n}.git", hashlib.sha1(str(n).encode()).hexdigest(),
              now, now, now) for n in range(SEED_ROWS)])


def make_app(path: str, secret: str) -> web.Application:
    """The application: its two connections, the executor's and the loop's."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="db")
    db, loop_db = connect(path), connect(path)
    seed(db)

    async def in_thread(function, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)

    def select(deployment_id: int) -> dict | None:
        return db.execute(SELECT, (deployment_id,)).fetchone()

    def insert(values: tuple) -> int:
        with db:  # one transaction, committed
            return db.execute(INSERT, values).lastrowid

    def requested_id(request: web.Request) -> int:
        text = request.match_info["id"]
        if not (text.isascii() and text.isdigit() and len(text) < 19):
            raise web.HTTPNotFound()
        return int(text)

    async def info(request: web.Request) -> web.Response:
        row = await in_thread(select, requested_id(request))
        if row is None:
            raise web.HTTPNotFound()
        return web.json_response(row)

    async def info_on_loop(request: web.Request) -> web.Response:
        row = loop_db.execute(SELECT, (requested_id(request),)).fetchone()
        if row is None:
            raise web.HTTPNotFound()
        return web.json_response(row)

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Hub-Signature-256", ""), expected):
            raise web.HTTPUnauthorized()
        data = json.loads(body)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        new_id = await in_thread(insert, (
            data["repository"]["clone_url"], data["ref"].removeprefix("refs/heads/"),
            data["repository"]["full_name"], data["after"], now))
        return web.json_response({"id": new_id}, status=202)

    app = web.Application()
    app.add_routes([web.get("/info/{id}", info), web.get("/info-on-loop/{id}", info_on_loop),
                    web.post("/webhook", webhook)])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    # No access log: the minimal server does only what the answer needs.
    web.run_app(make_app(args.database, args.secret), host="127.0.0.1", port=args.port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
