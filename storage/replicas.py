"""Replicas sharing one database: their leases, the adoption of a silent one's deployments, and
the fence that keeps a replica from writing about a deployment it no longer owns."""
import contextvars
from typing import Callable, TypeVar

from storage.db import clock, database, write_transaction
from storage.errors import NotOwner
from storage.models import Deployment, Replica
from storage.status import Status

T = TypeVar("T")
# Replicas silent for this long that own nothing unfinished are forgotten.
FORGET_SECONDS = 24 * 3600

# (replica, deployment) while a replica carries out a deployment: Store.run fences every query
# made meanwhile (see fenced). A context variable, so the rule lives in one place: every query
# of a deployment's run is fenced without any caller remembering to ask.
acting: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "speed_acting", default=None)


def join(replica_id: str, host: str, pid: int) -> None:
    """Record a replica that starts now, and forget long-gone ones that own nothing unfinished."""
    with write_transaction():
        Replica.insert(id=replica_id, host=host, pid=pid, heartbeat=clock()).execute()
        owning = Deployment.select(Deployment.owner).where(
            Deployment.status == Status.RUNNING.value, Deployment.owner.is_null(False))
        Replica.delete().where(Replica.heartbeat < clock() - FORGET_SECONDS,
                               Replica.id.not_in(owning)).execute()


def beat(replica_id: str) -> None:
    """Renew the replica's lease."""
    Replica.update(heartbeat=clock()).where(Replica.id == replica_id).execute()


def leave(*replica_ids: str) -> None:
    """End the replicas' leases now (a replica stopping, or one found dead): their deployments
    are adopted at once rather than when the lease would have run out."""
    if replica_ids:
        Replica.update(heartbeat=0).where(Replica.id.in_(replica_ids)).execute()


def on_host(host: str, lease: float) -> list[tuple[str, int]]:
    """(id, pid) of the replicas on a host whose lease has not run out."""
    return list(Replica.select(Replica.id, Replica.pid).where(
        Replica.host == host, Replica.heartbeat >= clock() - lease).tuples())


def live(lease: float) -> list[Replica]:
    """The replicas whose lease has not run out, oldest first."""
    return list(Replica.select().where(Replica.heartbeat >= clock() - lease)
                .order_by(Replica.started_at))


def adopt(replica_id: str, lease: float) -> list[Deployment]:
    """Take over the Running deployments whose owner's lease ran out (or that have none, from
    before replicas), and return them: this replica now reattaches, requeues or fails each."""
    alive = Replica.select(Replica.id).where(Replica.heartbeat >= clock() - lease)
    orphans = Deployment.select(Deployment.id).where(
        Deployment.status == Status.RUNNING.value,
        Deployment.owner.is_null() | ((Deployment.owner != replica_id)
                                      & Deployment.owner.not_in(alive)))
    if database.for_update:  # PostgreSQL: past rows another replica is adopting right now
        orphans = orphans.for_update(skip_locked=True)
    with write_transaction():
        return list(Deployment.update(owner=replica_id)
                    .where(Deployment.id.in_(orphans), Deployment.status == Status.RUNNING.value)
                    .returning(Deployment).objects(Deployment).execute())


def not_carried(replica_id: str, deployment_ids: list[int]) -> list[tuple[int, bool]]:
    """Which of the deployments the replica runs it should no longer follow, and whether each
    finished (a cancel or /update on any replica: its container is to be stopped) rather than
    being taken over by another replica (which follows its container now)."""
    if not deployment_ids:
        return []
    return [(i, Status(status).finished) for i, status in Deployment.select(
        Deployment.id, Deployment.status).where(
        Deployment.id.in_(deployment_ids),
        (Deployment.status != Status.RUNNING.value) | (Deployment.owner != replica_id)
        | Deployment.owner.is_null()).tuples()]


def check() -> None:
    """Nothing; run fenced (within a deployment's run), NotOwner once another replica owns it:
    asked before an act that writes nothing here, such as killing the container."""


def fenced(replica_id: str, deployment_id: int, query: Callable[..., T], *args, **kwargs) -> T:
    """query, in a transaction that first checks the replica still owns the deployment: NotOwner
    (and nothing written) once another replica adopted it."""
    with write_transaction():
        owner = Deployment.select(Deployment.owner).where(Deployment.id == deployment_id)
        if database.for_update:
            # Held to the commit: an adoption waits for this write, never slips in between.
            owner = owner.for_update("FOR SHARE")
        if owner.scalar() != replica_id:
            raise NotOwner(deployment_id)
        return query(*args, **kwargs)
