"""Replicas at the storage level: leases, adoption, the fence, and what a replica lets go of —
on PostgreSQL, where replicas share a database (SQLite has one process: see the last test)."""
import pytest
from peewee import Select

from storage import deployments as queries
from storage import replicas
from storage.db import clock, database, open_database
from storage.errors import NotOwner
from storage.models import Deployment, Replica, Result
from storage.status import Status

LEASE = 30.0


@pytest.fixture
def db(postgres_url):
    database_ = open_database(postgres_url)
    with database_.connection_context():
        yield database_


def now() -> float:
    """The database's clock."""
    return Select(columns=[clock()]).bind(database).scalar()


def claimed(owner: str) -> Deployment:
    queries.create("https://example.com/app.git", "main")
    return queries.claim_next(owner)


def silence(replica_id: str, seconds: float) -> None:
    """Make the replica's last heartbeat that long ago (as if it stopped that long ago)."""
    Replica.update(heartbeat=now() - seconds).where(Replica.id == replica_id).execute()


def test_a_live_replicas_work_is_not_adopted_and_a_silent_ones_is_adopted_once(db):
    replicas.join("a", "host", 1)
    replicas.join("b", "host", 2)
    deployment = claimed("a")
    assert deployment.owner == "a"
    assert replicas.adopt("b", LEASE, []) == []  # a's lease runs
    silence("a", LEASE - 1)
    assert replicas.adopt("b", LEASE, []) == []
    silence("a", LEASE + 1)
    adopted = replicas.adopt("b", LEASE, [])
    assert [(d.id, d.owner, d.claim) for d in adopted] == [(deployment.id, "b", 2)]
    assert replicas.adopt("b", LEASE, [deployment.id]) == []  # b carries it now
    replicas.join("c", "host", 3)
    assert replicas.adopt("c", LEASE, []) == []  # b is alive


def test_a_replica_that_left_has_its_work_adopted_at_once(db):
    replicas.join("a", "host", 1)
    replicas.join("b", "host", 2)
    deployment = claimed("a")
    replicas.leave("a")
    assert [d.id for d in replicas.adopt("b", LEASE, [])] == [deployment.id]
    assert [r.id for r in replicas.live(LEASE)] == ["b"]


def test_deployments_from_before_replicas_are_adopted_by_the_first(db):
    """A database upgraded with a deployment Running: it has no owner, and is adopted."""
    old = Deployment.create(url="https://example.com/app.git", branch="main",
                            status=Status.RUNNING.value)
    replicas.join("a", "host", 1)
    assert [d.id for d in replicas.adopt("a", LEASE, [])] == [old.id]
    assert queries.get(old.id).owner == "a"


def test_only_running_deployments_are_adopted(db):
    replicas.join("a", "host", 1)
    for status in (Status.PENDING, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED):
        Deployment.create(url="https://example.com/app.git", branch="main",
                          status=status.value, owner="gone")
    assert replicas.adopt("a", LEASE, []) == []


def test_the_fence_refuses_every_write_of_a_replica_that_lost_the_deployment(db):
    replicas.join("a", "host", 1)
    replicas.join("b", "host", 2)
    deployment = claimed("a")
    replicas.fenced("a", deployment.id, 1, queries.append_output, deployment.id, "one\n", None, None)
    silence("a", LEASE + 1)
    replicas.adopt("b", LEASE, [])
    for write in (lambda: queries.append_output(deployment.id, "two\n", None, None),
                  lambda: queries.transition(deployment.id, Status.SUCCEEDED),
                  lambda: queries.record(deployment.id, exit_code=0),
                  replicas.check):
        with pytest.raises(NotOwner):
            replicas.fenced("a", deployment.id, 1, write)
    # a comes back and renews its lease: the deployment stays b's.
    replicas.beat("a")
    with pytest.raises(NotOwner):
        replicas.fenced("a", deployment.id, 1, queries.transition, deployment.id, Status.FAILED)
    assert [r.text for r in Result.select().where(Result.deployment == deployment.id)] == ["one\n"]
    assert queries.get(deployment.id).status == Status.RUNNING.value
    replicas.fenced("b", deployment.id, 2, queries.transition, deployment.id, Status.SUCCEEDED)
    assert queries.get(deployment.id).status == Status.SUCCEEDED.value


def test_a_fenced_query_that_fails_writes_nothing(db):
    replicas.join("a", "host", 1)
    deployment = claimed("a")

    def half_then_fail():
        queries.append_output(deployment.id, "half\n", None, None)
        raise RuntimeError("crash midway")

    with pytest.raises(RuntimeError):
        replicas.fenced("a", deployment.id, 1, half_then_fail)
    assert Result.select().where(Result.deployment == deployment.id).count() == 0


def test_what_a_replica_no_longer_carries(db):
    replicas.join("a", "host", 1)
    replicas.join("b", "host", 2)
    running, cancelled, taken, requeued = (claimed("a") for _ in range(4))
    queries.transition(cancelled.id, Status.CANCELLED)
    Deployment.update(owner="b").where(Deployment.id == taken.id).execute()
    queries.requeue(requeued.id, "again")
    claims = {running.id: 1, cancelled.id: 1, taken.id: 1, requeued.id: 1}
    assert sorted(replicas.not_carried("a", claims)) == [
        (cancelled.id, True), (taken.id, False), (requeued.id, False)]
    # A run of an earlier claim of a deployment this replica carries again is let go too.
    assert replicas.not_carried("a", {running.id: 0}) == [(running.id, False)]
    assert replicas.not_carried("a", {}) == []


def test_a_requeued_deployment_has_no_owner_and_is_claimed_afresh(db):
    replicas.join("a", "host", 1)
    deployment = claimed("a")
    assert queries.requeue(deployment.id, "again").owner is None
    assert queries.claim_next("b").owner == "b"


def test_joining_forgets_long_gone_replicas_that_own_nothing_running(db):
    replicas.join("old-idle", "host", 1)
    replicas.join("old-owner", "host", 2)
    claimed("old-owner")
    for replica_id in ("old-idle", "old-owner"):
        silence(replica_id, replicas.FORGET_SECONDS + 60)
    replicas.join("new", "host", 3)
    assert sorted(r.id for r in Replica.select()) == ["new", "old-owner"]


def test_replicas_on_a_host_and_the_database_clock(db):
    before = now()
    replicas.join("a", "here", 10)
    replicas.join("b", "there", 11)
    replicas.join("c", "here", 12)
    replicas.leave("c")
    assert sorted(replicas.on_host("here", LEASE)) == [("a", 10)]
    heartbeat = Replica.get_by_id("a").heartbeat
    assert before - 1 <= heartbeat <= now() + 1  # seconds since the epoch, not days or ms


def test_a_claim_whose_answer_was_lost_is_taken_up_again_under_a_new_claim(db):
    """The claim committed but its answer never reached the replica (the connection broke):
    the replica owns a deployment it does not carry out, and takes it up again; the run of
    the old claim, if any, is fenced out."""
    replicas.join("a", "host", 1)
    deployment = claimed("a")
    assert replicas.adopt("a", LEASE, [deployment.id]) == []
    [again] = replicas.adopt("a", LEASE, [])
    assert (again.id, again.owner, again.claim) == (deployment.id, "a", 2)
    with pytest.raises(NotOwner):
        replicas.fenced("a", deployment.id, 1, replicas.check)
    replicas.fenced("a", deployment.id, 2, replicas.check)


def test_a_forgotten_replica_joins_again(db):
    replicas.join("a", "host", 1, slots=2)
    Replica.delete().execute()
    assert replicas.beat("a") is False
    replicas.join("a", "host", 1, slots=2)
    assert replicas.beat("a") is True
    assert replicas.capacity(LEASE) == (0, 1, 2)


def test_on_sqlite_a_starting_replica_ends_every_other_lease(tmp_path):
    """SQLite has one process: a replica starting finds only earlier processes of itself (in a
    container restarted, with pids of another namespace) and adopts their work at once."""
    database_ = open_database(f"sqlite:///{tmp_path / 'speed.db'}")
    with database_.connection_context():
        replicas.join("before", "another-namespace", 1)
        deployment = claimed("before")
        replicas.join("now", "this-namespace", 1)
        assert [r.id for r in replicas.live(LEASE)] == ["now"]
        assert [d.id for d in replicas.adopt("now", LEASE, [])] == [deployment.id]
