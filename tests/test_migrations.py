"""The schema is versioned: a database made by an earlier release upgrades in place."""
import sqlite3

from playhouse.migrations import Runner
from peewee import SqliteDatabase

from storage import deployments as queries
from storage.db import MIGRATIONS, open_database


def first_release_database(path) -> None:
    """A database as SPEED's first release left it: its tables (0001 is their frozen copy), no
    migration history, a finished deployment with its token and image, and a queued one."""
    db = SqliteDatabase(str(path))
    runner = Runner(db, directory=str(MIGRATIONS), table_name="schema_migration")
    runner.up("0001_initial")
    db.execute_sql("DROP TABLE schema_migration")
    db.execute_sql("INSERT INTO setting (key, value) VALUES ('instance_id', 'abcdef012345')")
    for status, built in (("Failed", "2026-11-01 10:00:00"), ("Pending", None)):
        db.execute_sql(
            "INSERT INTO deployment (url, branch, status, trigger, token_hash, built_at, "
            "infrastructure_failure, log_bytes, created_at) VALUES "
            "('https://github.com/acme/app.git', 'main', ?, 'push', 'f00d', ?, 0, 12, "
            "'2026-11-01 09:59:00')", (status, built))
    db.execute_sql("INSERT INTO result (deployment_id, text, created_at) VALUES "
                   "(1, 'old output\n', '2026-11-01 10:00:01')")
    db.close()


def test_a_first_release_database_upgrades_in_place_and_keeps_everything(tmp_path):
    """Upgrade: today's code opens a first-release database. Asserts: every deployment and
    result is kept; the new columns exist with their defaults; the finished deployment's token
    is void and its image keeps its old name (still reusable); opening again changes nothing."""
    path = tmp_path / "old.db"
    first_release_database(path)
    db = open_database(f"sqlite:///{path}")
    with db.connection_context():
        finished, queued = queries.get(1), queries.get(2)
        assert (finished.status, finished.token_hash, finished.attempts) == ("Failed", None, 0)
        assert finished.image == "speed-abcdef012345:1"
        assert (queued.status, queued.token_hash, queued.image) == ("Pending", "f00d", None)
        assert queries.results_text(1) == "old output\n"
        assert queries.claim_next("r1").id == 2
    db.close()
    history = sqlite3.connect(path).execute("SELECT name FROM schema_migration").fetchall()
    assert sorted(name for (name,) in history) == sorted(p.stem for p in MIGRATIONS.glob("0*.py"))
    assert open_database(f"sqlite:///{path}") is not None  # nothing left to apply


def test_a_new_database_gets_every_migration(tmp_path):
    """Fresh: a new database is made by the same migrations, recorded in its history."""
    path = tmp_path / "new.db"
    db = open_database(f"sqlite:///{path}")
    with db.connection_context():
        deployment = queries.create("https://example.com/a.git", "main")
        assert (deployment.attempts, deployment.image) == (0, None)
    db.close()
    applied = sqlite3.connect(path).execute("SELECT name FROM schema_migration").fetchall()
    assert len(applied) == len(list(MIGRATIONS.glob("0*.py")))


def test_a_database_of_the_release_before_replicas_keeps_its_running_deployment(tmp_path):
    """Upgrade: a database of the release before replicas (migrations to 0006) with a deployment
    Running when it stopped. Asserts: it keeps its row and output, has no owner, and the first
    replica to start adopts it (as the one process used to reattach it)."""
    from storage import replicas

    path = tmp_path / "services.db"
    db = SqliteDatabase(str(path))
    Runner(db, directory=str(MIGRATIONS), table_name="schema_migration").up(
        "0006_environments_and_releases")
    db.execute_sql("INSERT INTO deployment (url, branch, status, trigger, infrastructure_failure, "
                   "log_bytes, log_seen, attempts, fork, container_id, created_at) VALUES "
                   "('https://example.com/app.git', 'main', 'Running', 'manual', 0, 7, 1, 1, 0, "
                   "'c0ffee', '2026-11-28 10:00:00')")
    db.execute_sql("INSERT INTO result (deployment_id, text, created_at) VALUES "
                   "(1, 'line 1\n', '2026-11-28 10:00:01')")
    db.close()
    db = open_database(f"sqlite:///{path}")
    with db.connection_context():
        running = queries.get(1)
        assert (running.status, running.owner, running.container_id) == ("Running", None, "c0ffee")
        assert queries.results_text(1) == "line 1\n"
        replicas.join("first", "host", 1)
        assert [(d.id, d.owner) for d in replicas.adopt("first", 30, [])] == [(1, "first")]
    db.close()


def test_a_database_of_the_release_before_the_outbox_sends_what_it_had_not_reported(tmp_path):
    """Upgrade: a database of the release before GitHub's outbox (to 0007): a deployment of the
    last day whose outcome had not reached GitHub (its reporter stopped), one that had, and one
    of last week. Asserts: only the first is in the outbox, with its outcome; the rows change
    as before from then on."""
    import datetime

    from storage import outbox
    from storage.status import Status

    path = tmp_path / "replicas.db"
    db = SqliteDatabase(str(path))
    Runner(db, directory=str(MIGRATIONS), table_name="schema_migration").up(
        "0007_replicas_and_owners")
    now = datetime.datetime.utcnow()
    for reported, finished in (("running", now), ("success", now),
                               ("running", now - datetime.timedelta(days=7))):
        db.execute_sql(
            "INSERT INTO deployment (url, branch, \"commit\", repo_full_name, status, trigger, "
            "infrastructure_failure, log_bytes, log_seen, attempts, fork, claim, reported, "
            "created_at, finished_at) VALUES ('https://github.com/acme/app.git', 'main', ?, "
            "'acme/app', 'Succeeded', 'push', 0, 0, 0, 1, 0, 1, ?, ?, ?)",
            ("a" * 40, reported, str(finished), str(finished)))
    db.close()
    db = open_database(f"sqlite:///{path}")
    with db.connection_context():
        assert [outbox.of(n) for n in (1, 2, 3)] == [[("success", "waiting")], [], []]
        fresh = queries.create("https://github.com/acme/app.git", "main", commit="b" * 40,
                               repo_full_name="acme/app")
        queries.transition(fresh.id, Status.CANCELLED, reason="cancelled")
        assert [key for key, _ in outbox.of(fresh.id)] == ["queued", "cancelled"]
    db.close()
