"""SPEED's storage on PostgreSQL (issue 11): migrations from empty and in place, replicas starting
side by side, every kind of query, ids past the columns' range, and one real deployment."""
import threading

import pytest
from cryptography.fernet import Fernet
from peewee import PostgresqlDatabase
from playhouse.db_url import parse
from playhouse.migrations import Runner

from bot.keys import store_key
from storage import deployments as queries
from storage import feeds, outbox, secrets, sessions
from storage.db import (MIGRATION_LOCK, MIGRATIONS, POSTGRES_MAX_ID, database, max_id,
                        open_database, upgrade)
from storage.errors import Finished, IllegalTransition, NotFound, ResultsFull
from storage.models import Deployment
from storage.status import Status
from tests import test_outbox, test_output_batches, test_releases, test_statements
from tests.conftest import postgres_sql as sql
from tests.conftest import results_of, wait_finished

# Every test of the release state machine (tests/test_releases.py) runs here again, on
# PostgreSQL: pytest collects them from this module, where `db` is this module's fixture.
# So do those of GitHub's outbox (tests/test_outbox.py: its triggers are the dialect's own), of
# output batches stored once, and of storage.statements.
globals().update({name: test for module in (test_releases, test_outbox, test_output_batches,
                                            test_statements)
                  for name, test in vars(module).items() if name.startswith("test_")})

MIGRATION_NAMES = sorted(p.stem for p in MIGRATIONS.glob("0*.py"))
GITHUB = "https://github.com/acme/app.git"


@pytest.fixture
def db(postgres_url):
    """This thread's models on a new PostgreSQL database, migrated."""
    database_ = open_database(postgres_url)
    with database_.connection_context():
        yield database_


def test_migrations_make_an_empty_database_and_run_once(db, postgres_url):
    assert isinstance(db, PostgresqlDatabase) and max_id() == POSTGRES_MAX_ID
    assert set(db.get_tables()) >= {"deployment", "result", "delivery", "setting", "session",
                                    "secret", "environment", "release", "schema_migration"}
    assert upgrade(db) == []  # a second start applies nothing
    assert open_database(postgres_url) is not None
    applied = sql(postgres_url, "SELECT name FROM schema_migration ORDER BY name")
    assert [name for (name,) in applied] == MIGRATION_NAMES
    # The migration lock is released: another session takes it at once.
    assert sql(postgres_url, "SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK,)) == [(True,)]


def test_replicas_starting_side_by_side_migrate_one_at_a_time(postgres_url):
    """Found in the field: tables created at the same moment race in PostgreSQL's catalog
    (duplicate key ... pg_type_typname_nsp_index). Every replica starts; the schema is made once."""
    replicas = 6
    barrier, errors = threading.Barrier(replicas), []

    def start() -> None:
        try:
            barrier.wait()
            open_database(postgres_url)
            database.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    applied = sql(postgres_url, "SELECT name FROM schema_migration ORDER BY name")
    assert [name for (name,) in applied] == MIGRATION_NAMES


def test_a_first_release_database_upgrades_in_place(postgres_url):
    """The migrations' own SQL (db.param, ||, CAST, booleans) on PostgreSQL, with rows to move."""
    first = PostgresqlDatabase(**parse(postgres_url))
    Runner(first, directory=str(MIGRATIONS), table_name="schema_migration").up("0001_initial")
    first.execute_sql("DROP TABLE schema_migration")
    first.execute_sql("INSERT INTO setting (key, value) VALUES ('instance_id', 'abcdef012345')")
    for status, built, pull in (("Failed", "2026-11-01 10:00:00", None), ("Pending", None, 7)):
        first.execute_sql(
            "INSERT INTO deployment (url, branch, status, trigger, token_hash, built_at, "
            "infrastructure_failure, log_bytes, created_at, pull_request, repo_full_name, "
            "log_cursor) VALUES (%s, 'main', %s, 'push', 'f00d', %s, false, 12, "
            "'2026-11-01 09:59:00', %s, 'acme/app', 5)",
            ("https://github.com/fork/app.git", status, built, pull))
    first.execute_sql("INSERT INTO result (deployment_id, text, created_at) VALUES "
                      "(1, 'old output\n', '2026-11-01 10:00:01')")
    first.close()
    db = open_database(postgres_url)
    with db.connection_context():
        finished, queued = queries.get(1), queries.get(2)
        assert (finished.token_hash, finished.log_seen) == (None, 1)
        assert finished.image == "speed-abcdef012345:1"
        assert (queued.token_hash, queued.fork, finished.fork) == ("f00d", True, False)
        assert queries.results_text(1) == "old output\n"
    applied = sql(postgres_url, "SELECT name FROM schema_migration ORDER BY name")
    assert [name for (name,) in applied] == MIGRATION_NAMES


def test_the_queue_claims_in_order_and_moves_by_the_state_machine(db):
    first = queries.create(GITHUB, "main", trigger="push", repo_full_name="Acme/App")
    second = queries.create(GITHUB, "dev")
    assert queries.pending_ids() == [first.id, second.id]
    claimed = queries.claim_next("r1")
    assert (claimed.id, claimed.status, claimed.attempts) == (first.id, "Running", 1)
    assert claimed.started_at is not None and claimed.fork is False
    assert queries.requeue(first.id, "[speed] back in the queue").status == "Pending"
    assert queries.claim_next("r1").id == first.id and queries.get(first.id).attempts == 2
    assert queries.claim_next("r1").id == second.id
    assert queries.claim_next("r1") is None
    done = queries.transition(first.id, Status.SUCCEEDED, note="[speed] done", exit_code=0)
    assert (done.status, done.exit_code, done.token_hash) == ("Succeeded", 0, None)
    assert done.finished_at >= done.started_at
    with pytest.raises(IllegalTransition):
        queries.transition(first.id, Status.FAILED)
    assert queries.counts() == {"Pending": 0, "Running": 1, "Succeeded": 1, "Failed": 0,
                                "Cancelled": 0}
    assert [d.id for d in Deployment.select().where(Deployment.status == "Running")] == [second.id]
    assert queries.latest_for("acme/app").id == first.id  # any case: fn.LOWER
    assert [d.id for d in queries.listing(repo="ACME/app")] == [second.id, first.id]
    assert queries.listing(repo="acme\0") == []  # PostgreSQL refuses a NUL in a query
    assert [d.id for d in queries.listing(status=Status.SUCCEEDED)] == [first.id]
    assert [d.id for d in queries.listing(before=second.id)] == [first.id]
    again = queries.redeploy(first.id)
    assert (again.trigger, again.branch, again.status) == ("redeploy", "main", "Pending")
    assert queries.instance_id() == queries.instance_id()
    # A deployment claimed MAX_ATTEMPTS times without its container starting fails instead.
    queries.claim_next("r1")
    queries.record(again.id, attempts=queries.MAX_ATTEMPTS)
    failed = queries.requeue(again.id, "[speed] again")
    assert (failed.status, failed.infrastructure_failure) == ("Failed", True)


def test_output_is_stored_in_order_within_its_limit(db):
    deployment = queries.create(GITHUB, "main")
    queries.claim_next("r1")
    assert queries.append_output(deployment.id, "one\n", (10, 1), 12) == (4, 0)
    assert queries.append_output(deployment.id, "two\nthree\n", (20, 2), 12) == (12, 2)
    queries.add_result(deployment.id, "x" * 5, limit=100)
    queries.report_progress(deployment.id, "half way", limit=100, unfinished_only=True)
    with pytest.raises(ResultsFull):
        queries.add_result(deployment.id, "y" * 100, limit=100)
    stored = queries.get(deployment.id)
    assert (stored.log_cursor, stored.log_seen, stored.progress) == (20, 2, "half way")
    text = "one\ntwo\nthrexxxxx\nhalf way\n"
    assert queries.results_text(deployment.id) == text
    results = queries.results_after(deployment.id)
    assert "".join(t for _, t in results) == text
    assert queries.results_after(deployment.id, results[1][0]) == results[2:]
    assert queries.results_page(deployment.id, 0, rows=10, chars=5) == results[:2]
    many = feeds.results_of_many({deployment.id: results[0][0], 10**6: 0}, limit=2)
    assert many == {deployment.id: results[1:3], 10**6: []}
    assert feeds.rows([deployment.id, 10**6]).keys() == {deployment.id}
    queries.transition(deployment.id, Status.FAILED, reason="bad\nexit")
    assert queries.get(deployment.id).reason == "bad\\nexit"  # one line, as on SQLite
    with pytest.raises(Finished):
        queries.add_result(deployment.id, "late", limit=1000, unfinished_only=True)
    assert queries.finished(deployment.id)


def test_deliveries_are_recorded_once_and_supersede_older_pushes(db):
    fields = dict(url=GITHUB, branch="main", trigger="push", repo_full_name="acme/app")
    _, new, older, _ = queries.record_delivery("guid-1", "push", fields, "queued")
    assert new and older.status == "Pending"
    delivery, new, created, superseded = queries.record_delivery("guid-2", "push", fields, "queued",
                                                                 supersede=True)
    assert new and [d.id for d in superseded] == [older.id]
    assert queries.get(older.id).status == "Cancelled"
    again = queries.record_delivery("guid-2", "push", fields, "queued", supersede=True)
    assert (again[0].id, again[1], again[2]) == (delivery.id, False, None)
    assert queries.known_deliveries(["guid-1", "guid-3"]) == {"guid-1"}
    pull = queries.create(GITHUB, "feature", trigger="pull_request", repo_full_name="acme/app",
                          pull_request=4, github_deployment_id=99)
    cancelled = queries.close_pull_request("ACME/app", 4)
    assert [d.id for d in cancelled] == [pull.id]
    assert outbox.of(pull.id)[-1] == ("inactive", "waiting")
    queries.record(created.id, commit="c" * 40, image="img:1",
                   built_at=created.created_at, settings="{}")
    later = queries.create(GITHUB, "main")
    assert queries.name_image(later.id, "img:2", GITHUB, "c" * 40) == [("img:1", "{}")]
    assert queries.get(later.id).image == "img:2"


def test_ids_past_the_columns_range_are_not_found(db, postgres_url):
    """PostgreSQL's serial ids stop at 2**31 - 1: a larger id names nothing, and is answered
    NotFound, never with PostgreSQL's "integer out of range"."""
    sql(postgres_url, "ALTER SEQUENCE deployment_id_seq RESTART WITH %s", (POSTGRES_MAX_ID,))
    last = queries.create(GITHUB, "main")
    assert last.id == POSTGRES_MAX_ID and queries.get(POSTGRES_MAX_ID).id == last.id
    for wrong in (POSTGRES_MAX_ID + 1, 2**40, 2**63 - 1, 2**63, 10**30, 0, -1):
        for query in (queries.get, queries.results_text, lambda i: queries.transition(
                i, Status.CANCELLED), lambda i: queries.add_result(i, "x", limit=10),
                      queries.finished):
            with pytest.raises(NotFound):
                query(wrong)
    assert queries.results_after(2**40) == [] and queries.listing(before=2**63 - 1) != []


def test_secrets_are_kept_replaced_listed_and_reencrypted(db):
    assert secrets.put("TOKEN", "cipher-1", ["github.com/acme/*"], [], False, "ab12") is True
    assert secrets.put("TOKEN", "cipher-2", ["github.com/acme/app"], ["main"], True, "cd34") is False
    secrets.put("OTHER", "cipher-3", ["*"], [], False, "ab12")
    token = secrets.named(["TOKEN", "NONE"])["TOKEN"]
    assert (token.value, token.pull_requests, token.updated_by) == ("cipher-2", True, "cd34")
    assert token.updated_at >= token.created_at
    assert [s.name for s in secrets.listing()] == ["OTHER", "TOKEN"]
    sealed = queries.create(GITHUB, "main", secrets_sealed="cipher-4")
    assert secrets.ciphertexts() == {"secret OTHER": "cipher-3", "secret TOKEN": "cipher-2",
                                     f"deployment {sealed.id}": "cipher-4"}
    assert secrets.reencrypt(lambda text: text.replace("cipher", "new")) == 3
    assert set(secrets.ciphertexts().values()) == {"new-2", "new-3", "new-4"}
    secrets.delete("OTHER")
    with pytest.raises(NotFound):
        secrets.delete("OTHER")


def test_sessions_expire_and_end(db):
    cookie = sessions.create("token-one", seconds=60)
    assert sessions.valid(cookie, ["token-one"]) and not sessions.valid(cookie, ["token-two"])
    assert sessions.token_hash_of(cookie) == sessions.fingerprint("token-one")
    expired = sessions.create("token-one", seconds=-1)
    assert not sessions.valid(expired, ["token-one"]) and sessions.token_hash_of(expired) is None
    sessions.create("token-one", seconds=60)  # adding one prunes the expired
    assert not sessions.Session.select().where(
        sessions.Session.cookie_hash == sessions.fingerprint(expired)).exists()
    sessions.delete(cookie)
    assert not sessions.valid(cookie, ["token-one"])


async def test_speed_on_postgresql_deploys_end_to_end(make_client, repo, postgres_url):
    client = await make_client(database__url=postgres_url,
                               secrets__key=[Fernet.generate_key().decode()])
    store = client.app[store_key]
    assert await store.run(lambda: isinstance(database.obj, PostgresqlDatabase))
    url, commit = repo("echo hello from postgres\nexit 3\n")
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201, await response.text()
    deployment_id = (await response.json())["id"]
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert (info["status"], info["commit"]) == ("Failed", commit), results
    assert "hello from postgres" in results
    assert await store.run(lambda: Deployment.get_by_id(deployment_id).exit_code) == 3
    listing = await (await client.get("/deployments")).json()
    assert deployment_id in [d["id"] for d in listing["deployments"]]
    for wrong in (POSTGRES_MAX_ID + 1, 2**63 - 1):
        for path in (f"/info/{wrong}", f"/results/{wrong}"):
            assert (await client.get(path)).status == 404, path
        assert (await client.post(f"/cancel/{wrong}")).status == 404
        assert (await client.post(f"/add_results/{wrong}", json={"results": "x"})).status == 404
    for wrong in (POSTGRES_MAX_ID + 1, 2**70):
        response = await client.post("/update", json={"id": wrong, "new_results": "x"})
        assert response.status == 404, await response.text()


def _replicas(url: str, count: int, work) -> list:
    """work() run at once by count threads, each with its own connection (as replicas would)."""
    results, barrier, errors = [None] * count, threading.Barrier(count), []

    def replica(n: int) -> None:
        connection = open_database(url)
        try:
            with connection.connection_context():
                barrier.wait()
                results[n] = work()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def test_replicas_claiming_at_once_each_get_their_own_deployment(db, postgres_url):
    """Claims are conditional and skip what another replica is claiming: four replicas at once
    with four deployments queued claim all four, none twice (on PostgreSQL, a replica that lost
    the race for the oldest got nothing while work waited)."""
    for _ in range(4):
        queries.create(GITHUB, "main")
    for _ in range(10):
        claimed = _replicas(postgres_url, 4, lambda: queries.claim_next("r1"))
        assert sorted(d.id for d in claimed if d) == sorted(
            i for (i,) in sql(postgres_url, "SELECT id FROM deployment WHERE status = 'Running'"))
        assert all(claimed), claimed
        sql(postgres_url, "UPDATE deployment SET status = 'Pending'")


def test_transitions_at_once_have_exactly_one_winner(db, postgres_url):
    """A state change is conditional on the state it was decided from: of a cancel and a
    success racing on one Running deployment, exactly one is recorded, the other refused."""
    for _ in range(10):
        deployment = queries.create(GITHUB, "main", status=Status.RUNNING.value)

        def race(n=[0]):  # noqa: B006 - a counter shared by the racing threads
            n[0] += 1
            new = Status.CANCELLED if n[0] % 2 else Status.SUCCEEDED
            try:
                return queries.transition(deployment.id, new).status
            except IllegalTransition:
                return "refused"

        outcomes = _replicas(postgres_url, 2, race)
        assert sorted(outcomes).count("refused") == 1, outcomes
        (status,) = sql(postgres_url, "SELECT status FROM deployment WHERE id = %s",
                        (deployment.id,))[0]
        assert status in outcomes


def test_one_delivery_received_by_replicas_at_once_is_recorded_once(db, postgres_url):
    """The same GitHub delivery reaching two replicas at once: one records it and its deployment,
    the other answers as for a redelivery (before: a unique-key error, a 500)."""
    for n in range(10):
        guid = f"delivery-{n}"
        answers = _replicas(postgres_url, 2, lambda: queries.record_delivery(
            guid, "push", {"url": GITHUB, "branch": "main", "commit": "a" * 40}, "deploying"))
        assert sorted(new for _, new, _, _ in answers) == [False, True]
        assert {delivery.deployment_id for delivery, _, _, _ in answers} == {
            i for (i,) in sql(postgres_url, "SELECT deployment_id FROM delivery WHERE guid = %s",
                              (guid,))}
    assert sql(postgres_url, "SELECT count(*) FROM deployment") == [(10,)]


def test_replicas_adopting_at_once_each_take_their_own_orphans(db, postgres_url):
    """Adoption is conditional and skips rows another replica is adopting: four replicas adopt
    twenty orphans at once, each exactly once."""
    from storage import replicas
    for replica_id in ("gone", "r0", "r1", "r2", "r3"):
        replicas.join(replica_id, "host", 1)
    for _ in range(20):
        queries.create(GITHUB, "main")
        queries.claim_next("gone")
    replicas.leave("gone")
    names = iter(("r0", "r1", "r2", "r3"))
    lock = threading.Lock()

    def adopt():
        with lock:
            me = next(names)
        return me, replicas.adopt(me, 30, [])

    adopted = _replicas(postgres_url, 4, adopt)
    taken = [(d.id, me) for me, rows in adopted for d in rows]
    assert sorted(i for i, _ in taken) == sorted(
        i for (i,) in sql(postgres_url, "SELECT id FROM deployment WHERE status = 'Running'"))
    assert sorted(taken) == sorted(sql(postgres_url, "SELECT id, owner FROM deployment"))


def test_every_replica_hears_of_deployments_queued_and_finished(db, postgres_url):
    """The trigger announces each deployment queued (however it was made) and each one finished;
    a Notices listener hears them, and goes on hearing after its connection was ended."""
    import queue

    from storage.notices import Notices
    heard: queue.Queue = queue.Queue()
    notices = Notices(postgres_url, lambda deployment_id, status: heard.put((deployment_id, status)))
    notices.start()
    try:
        def next_heard():
            return heard.get(timeout=10)

        def listening():  # LISTEN is issued once its connection is up
            return sql(postgres_url, "SELECT count(*) FROM pg_stat_activity WHERE "
                       "datname = current_database() AND query LIKE 'LISTEN%%'")[0][0] == 1

        _until(listening)
        queued = queries.create(GITHUB, "main")
        assert next_heard() == (queued.id, Status.PENDING)
        claimed = queries.claim_next("r1")  # Running: nothing to say
        queries.transition(claimed.id, Status.CANCELLED)
        assert next_heard() == (queued.id, Status.CANCELLED)
        again = queries.redeploy(queued.id)
        assert next_heard() == (again.id, Status.PENDING)
        # The server ends its session (as a restart would): it listens again on a new one.
        sql(postgres_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
            "datname = current_database() AND query LIKE 'LISTEN%%'")
        _until(listening)
        later = queries.create(GITHUB, "main")
        assert next_heard() == (later.id, Status.PENDING)
        assert heard.empty()
    finally:
        notices.close()


def test_notices_are_heard_on_a_descriptor_past_1023(db, postgres_url):
    """SPEED raises its open files limit: a busy replica's listening connection may get a
    descriptor select() cannot wait on (its ValueError ended the thread). Asserts: with every
    descriptor below 1100 taken, a listener still hears a deployment queued."""
    import os
    import queue
    import resource

    from storage.notices import Notices
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (
        4096 if hard == resource.RLIM_INFINITY else min(max(soft, 4096), hard), hard))
    taken = []
    heard: queue.Queue = queue.Queue()
    notices = Notices(postgres_url, lambda deployment_id, status: heard.put((deployment_id, status)))
    try:
        while not taken or taken[-1] < 1100:
            taken.append(os.open(os.devnull, os.O_RDONLY))
        notices.start()
        _until(lambda: sql(postgres_url, "SELECT count(*) FROM pg_stat_activity WHERE "
                           "datname = current_database() AND query LIKE 'LISTEN%%'")[0][0] == 1)
        queued = queries.create(GITHUB, "main")
        assert heard.get(timeout=10) == (queued.id, Status.PENDING)
    finally:
        notices.close()
        for descriptor in taken:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _until(check, timeout: float = 10.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_one_start_request_sent_to_three_replicas_at_once_queues_once(db, postgres_url):
    """POST /start with one Idempotency-Key reaching three replicas at once: one deployment, and
    the two others answered with it (their INSERT waited for the first one's commit)."""
    made = _replicas(postgres_url, 3, lambda: queries.create_once("key-1", "h", GITHUB, "main"))
    assert sorted(again for _, again in made) == [False, True, True]
    assert len({deployment.id for deployment, _ in made}) == 1
    assert sql(postgres_url, "SELECT count(*) FROM deployment") == [(1,)]


def test_one_replica_takes_a_report_that_three_take_at_once(db, postgres_url):
    """The outbox's rows are taken by a conditional write: of three replicas at once, one sends."""
    from storage import outbox
    from storage.models import Report
    deployment = queries.create(url=GITHUB, branch="main", commit="a" * 40,
                                repo_full_name="acme/app")
    report = Report.get(deployment_id=deployment.id)
    taken = _replicas(postgres_url, 3, lambda: outbox.take(report.id, threading.current_thread().name))
    assert sorted(taken) == [False, False, True]
    assert Report.get_by_id(report.id).state == outbox.SENDING


