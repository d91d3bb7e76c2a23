"""Replicas at the storage level: leases, adoption, the fence, and what a replica lets go of.
Run on SQLite here and again on PostgreSQL by tests/test_postgres.py."""
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
def db(tmp_path):
    database_ = open_database(f"sqlite:///{tmp_path / 'speed.db'}")
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
    assert replicas.adopt("b", LEASE) == []  # a's lease runs
    silence("a", LEASE - 1)
    assert replicas.adopt("b", LEASE) == []
    silence("a", LEASE + 1)
    adopted = replicas.adopt("b", LEASE)
    assert [(d.id, d.owner) for d in adopted] == [(deployment.id, "b")]
    assert replicas.adopt("b", LEASE) == []  # its own now: never adopted twice
    replicas.join("c", "host", 3)
    assert replicas.adopt("c", LEASE) == []  # b is alive


def test_a_replica_that_left_has_its_work_adopted_at_once(db):
    replicas.join("a", "host", 1)
    replicas.join("b", "host", 2)
    deployment = claimed("a")
    replicas.leave("a")
    assert [d.id for d in replicas.adopt("b", LEASE)] == [deployment.id]
    assert [r.id for r in replicas.live(LEASE)] == ["b"]


def test_deployments_from_before_replicas_are_adopted_by_the_first(db):
    """A database upgraded with a deployment Running: it has no owner, and is adopted."""
    old = Deployment.create(url="https://example.com/app.git", branch="main",
                            status=Status.RUNNING.value)
    replicas.join("a", "host", 1)
    assert [d.id for d in replicas.adopt("a", LEASE)] == [old.id]
    assert queries.get(old.id).owner == "a"


def test_only_running_deployments_are_adopted(db):
    replicas.join("a", "host", 1)
    for status in (Status.PENDING, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED):
        Deployment.create(url="https://example.com/app.git", branch="main",
                          status=status.value, owner="gone")
    assert replicas.adopt("a", LEASE) == []


def test_the_fence_refuses_every_write_of_a_replica_that_lost_the_deployment(db):
    replicas.join("a", "host", 1)
    replicas.join("b", "host", 2)
    deployment = claimed("a")
    replicas.fenced("a", deployment.id, queries.append_output, deployment.id, "one\n", None, None)
    silence("a", LEASE + 1)
    replicas.adopt("b", LEASE)
    for write in (lambda: queries.append_output(deployment.id, "two\n", None, None),
                  lambda: queries.transition(deployment.id, Status.SUCCEEDED),
                  lambda: queries.record(deployment.id, exit_code=0),
                  replicas.check):
        with pytest.raises(NotOwner):
            replicas.fenced("a", deployment.id, write)
    # a comes back and renews its lease: the deployment stays b's.
    replicas.beat("a")
    with pytest.raises(NotOwner):
        replicas.fenced("a", deployment.id, queries.transition, deployment.id, Status.FAILED)
    assert [r.text for r in Result.select().where(Result.deployment == deployment.id)] == ["one\n"]
    assert queries.get(deployment.id).status == Status.RUNNING.value
    replicas.fenced("b", deployment.id, queries.transition, deployment.id, Status.SUCCEEDED)
    assert queries.get(deployment.id).status == Status.SUCCEEDED.value


def test_a_fenced_query_that_fails_writes_nothing(db):
    replicas.join("a", "host", 1)
    deployment = claimed("a")

    def half_then_fail():
        queries.append_output(deployment.id, "half\n", None, None)
        raise RuntimeError("crash midway")

    with pytest.raises(RuntimeError):
        replicas.fenced("a", deployment.id, half_then_fail)
    assert Result.select().where(Result.deployment == deployment.id).count() == 0


def test_what_a_replica_no_longer_carries(db):
    replicas.join("a", "host", 1)
    replicas.join("b", "host", 2)
    running, cancelled, taken, requeued = (claimed("a") for _ in range(4))
    queries.transition(cancelled.id, Status.CANCELLED)
    Deployment.update(owner="b").where(Deployment.id == taken.id).execute()
    queries.requeue(requeued.id, "again")
    ids = [running.id, cancelled.id, taken.id, requeued.id]
    assert sorted(replicas.not_carried("a", ids)) == [
        (cancelled.id, True), (taken.id, False), (requeued.id, False)]
    assert replicas.not_carried("a", []) == []


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
