"""Replicas sharing one database: their leases, the adoption of a silent one's deployments, and
the fence that keeps a replica from writing about a deployment it no longer owns."""
import contextvars
from typing import Callable, TypeVar

from peewee import SqliteDatabase

from storage import statements
from storage.db import clock, database, write_transaction
from storage.errors import NotOwner
from storage.models import Deployment, Replica
from storage.status import Status

T = TypeVar("T")
# Replicas silent for this long that own nothing unfinished are forgotten.
FORGET_SECONDS = 24 * 3600

# (replica, deployment, claim) while a replica carries out a deployment: Store.run fences every
# query made meanwhile (see fenced). A context variable, so the rule lives in one place: every
# query of a deployment's run is fenced without any caller remembering to ask.
acting: contextvars.ContextVar[tuple[str, int, int] | None] = contextvars.ContextVar(
    "speed_acting", default=None)


def join(replica_id: str, host: str, pid: int, slots: int = 0) -> None:
    """Record a replica that starts now (taking up to slots deployments at once), and forget
    long-gone ones that own nothing unfinished. On SQLite, which one process uses, every other
    replica is an earlier process of this one: their leases end now."""
    with write_transaction():
        if isinstance(database.obj, SqliteDatabase):
            Replica.update(heartbeat=0).where(Replica.id != replica_id).execute()
        Replica.insert(id=replica_id, host=host, pid=pid, slots=slots, heartbeat=clock()).on_conflict(
            conflict_target=[Replica.id], update={Replica.heartbeat: clock()}).execute()
        owning = Deployment.select(Deployment.owner).where(
            Deployment.status == Status.RUNNING.value, Deployment.owner.is_null(False))
        Replica.delete().where(Replica.heartbeat < clock() - FORGET_SECONDS,
                               Replica.id.not_in(owning)).execute()


def beat(replica_id: str) -> bool:
    """Renew the replica's lease; False if its row is gone (forgotten: it must join again)."""
    return Replica.update(heartbeat=clock()).where(Replica.id == replica_id).execute() > 0


def leave(*replica_ids: str) -> None:
    """End the replicas' leases now (a replica stopping, or one found dead): their deployments
    are adopted at once rather than when the lease would have run out."""
    if replica_ids:
        Replica.update(heartbeat=0).where(Replica.id.in_(replica_ids)).execute()


def _lease_runs(lease: float):
    """Whether a replica's lease has not run out, by the database's clock."""
    return Replica.heartbeat >= clock() - lease


def on_host(host: str, lease: float) -> list[tuple[str, int]]:
    """(id, pid) of the replicas on a host whose lease has not run out."""
    return list(Replica.select(Replica.id, Replica.pid).where(
        Replica.host == host, _lease_runs(lease)).tuples())


def present() -> set[str]:
    """Ids of the replicas not known to be gone: those that left or were found dead are not."""
    return {i for (i,) in Replica.select(Replica.id).where(Replica.heartbeat > 0).tuples()}


def live(lease: float) -> list[Replica]:
    """The replicas whose lease has not run out, oldest first."""
    return list(Replica.select().where(_lease_runs(lease)).order_by(Replica.started_at, Replica.id))


def capacity(lease: float) -> tuple[int, int, int]:
    """The cluster now: deployments Running, replicas whose lease runs, and their slots."""
    running = Deployment.select().where(Deployment.status == Status.RUNNING.value).count()
    replicas = live(lease)
    return running, len(replicas), sum(replica.slots for replica in replicas)


def adopt(replica_id: str, lease: float, carrying: list[int]) -> list[Deployment]:
    """Take over the Running deployments whose owner's lease ran out (or that have none, from
    before replicas), and this replica's own that it is not carrying (a claim whose answer was
    lost with the connection); return them, with their new claim: this replica now reattaches,
    requeues or fails each."""
    alive = Replica.select(Replica.id).where(_lease_runs(lease))
    orphans = Deployment.select(Deployment.id).where(
        Deployment.status == Status.RUNNING.value,
        Deployment.owner.is_null()
        | ((Deployment.owner != replica_id) & Deployment.owner.not_in(alive))
        | ((Deployment.owner == replica_id) & Deployment.id.not_in(carrying or [0])))
    if database.for_update:  # PostgreSQL: past rows another replica is adopting right now
        orphans = orphans.for_update(skip_locked=True)
    with write_transaction():
        return list(Deployment.update(owner=replica_id, claim=Deployment.claim + 1)
                    .where(Deployment.id.in_(orphans), Deployment.status == Status.RUNNING.value)
                    .returning(Deployment).objects(Deployment).execute())


def not_carried(replica_id: str, claims: dict[int, int]) -> list[tuple[int, bool]]:
    """Which of the deployments the replica runs (id → the claim it carries out) it should no
    longer follow, and whether each finished (a cancel or /update on any replica: its container
    is to be stopped) rather than being taken over (which follows its container now)."""
    if not claims:
        return []
    rows = Deployment.select(Deployment.id, Deployment.status, Deployment.owner,
                             Deployment.claim).where(Deployment.id.in_(list(claims))).tuples()
    return [(i, Status(status).finished) for i, status, owner, claim in rows
            if status != Status.RUNNING.value or owner != replica_id or claim != claims[i]]


def check() -> None:
    """Nothing; run fenced (within a deployment's run), NotOwner once another replica owns it:
    asked before an act that writes nothing here, such as killing the container."""


def fenced(replica_id: str, deployment_id: int, claim: int, query: Callable[..., T], *args,
           **kwargs) -> T:
    """query, in a transaction that first checks the replica still carries out this claim of
    the deployment: NotOwner (and nothing written) once it was adopted or claimed again."""
    def owner():
        select = Deployment.select(Deployment.owner, Deployment.claim).where(
            Deployment.id == deployment_id)
        # PostgreSQL: held to the commit, an adoption waits for this write, never slips in.
        return select.for_update("FOR SHARE") if database.for_update else select

    with write_transaction():
        # Before every query of a deployment's run: its SQL built once (storage/statements.py).
        rows = list(statements.execute(("owner", bool(database.for_update)), [deployment_id],
                                       owner))
        if rows != [(replica_id, claim)]:
            raise NotOwner(deployment_id)
        return query(*args, **kwargs)
