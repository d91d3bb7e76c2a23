"""Every query on environments and their releases; the switch's states move here and only here."""
import datetime
import enum
import hashlib
import re

from peewee import JOIN, SQL, fn

from storage.db import database, max_id, write_transaction
from storage.errors import StorageError
from storage.models import Deployment, Environment, Release, utcnow
from storage.status import Status

PRODUCTION = "production"
HISTORY = 20  # releases an environment's listing shows


class ReleaseState(str, enum.Enum):
    """Where a release is in its life: started beside the live one, healthy, live (routed),
    draining (the proxy sends it nothing new), retired (stopped, image kept for rollback);
    failed (never healthy) and removed (torn down, or beyond what the environment keeps)."""

    STARTING = "starting"
    HEALTHY = "healthy"
    LIVE = "live"
    DRAINING = "draining"
    RETIRED = "retired"
    FAILED = "failed"
    REMOVED = "removed"


S = ReleaseState
LEGAL = {
    S.STARTING: {S.HEALTHY, S.FAILED},
    S.HEALTHY: {S.LIVE, S.FAILED},
    S.LIVE: {S.DRAINING, S.RETIRED},  # retired at once when its environment is torn down
    S.DRAINING: {S.RETIRED},
    S.RETIRED: {S.REMOVED},
}
# Releases their deployment is still making live.
SWITCHING = (S.STARTING.value, S.HEALTHY.value)
# Releases with a container that may run: the sweep after a restart leaves theirs alone.
RUNNING = (S.STARTING.value, S.HEALTHY.value, S.LIVE.value, S.DRAINING.value)
# Releases whose image is kept: live ones, and those a rollback may return to.
KEPT = RUNNING + (S.RETIRED.value,)
RETURNABLE = (S.DRAINING.value, S.RETIRED.value)  # a rollback starts a new release of its image


class ReleaseRefused(StorageError):
    """The release cannot do what was asked (a move its state forbids, a rollback to nothing)."""


class NoEnvironment(ReleaseRefused, LookupError):
    """No environment has that id (or it was torn down)."""


def environment_name(deployment: Deployment) -> str:
    """The environment a service deployment goes to: its pull request's preview, else the
    one its repos: rule names, else production."""
    if deployment.pull_request is not None:
        return f"pr-{deployment.pull_request}"
    return deployment.environment or PRODUCTION


def on_github(full_name: str) -> str:
    """A GitHub repository as environments name it: owner/name, in lower case as GitHub's
    names ignore case."""
    return full_name.lower()


def preview(full_name: str, number: int) -> tuple[str, str]:
    """The repository and name of a GitHub pull request's preview environment."""
    return on_github(full_name), f"pr-{number}"


def _label(text: str) -> str:
    """text as one DNS label: lower-case letters, digits and inner hyphens."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower()))[:40].strip("-") or "app"


def environment_for(repository: str, name: str) -> Environment:
    """The repository's environment of that name, made (or brought back) if need be. Its address
    is <name>.<repository's name>, or with a part of the repository's hash when another
    repository of that name has it already."""
    with write_transaction():
        found = Environment.get_or_none(Environment.repository == repository,
                                        Environment.name == name)
        if found:
            if found.removed_at:  # a preview comes back only when its pull request reopens
                raise ReleaseRefused(f"{name} was torn down: its pull request was closed")
            return found
        label = _label(repository.rsplit('/', 1)[-1])
        digest = hashlib.sha256(repository.encode()).hexdigest()
        address = f"{_label(name)}.{label}"
        for length in range(6, len(digest) + 1, 2):  # taken: by a namesake of another owner
            if not Environment.select().where(Environment.address == address).exists():
                break
            address = f"{_label(name)}.{label[:40 - length - 1].strip('-')}-{digest[:length]}"
        return Environment.create(repository=repository, name=name, address=address)


def close_unmade(repository: str, name: str) -> None:
    """A preview closed before it was made is made torn down: a late push to its closed pull
    request must fail as for one that was up, not bring it up."""
    with write_transaction():
        if not Environment.select().where(Environment.repository == repository,
                                          Environment.name == name).exists():
            made = environment_for(repository, name)
            Environment.update(removed_at=utcnow()).where(Environment.id == made.id).execute()


def reopen(repository: str, name: str) -> None:
    """Let a torn-down preview come back: its pull request was reopened."""
    Environment.update(removed_at=None).where(Environment.repository == repository,
                                              Environment.name == name).execute()


def get(release_id: int) -> Release:
    """The release with that id, or ReleaseRefused."""
    found = Release.get_or_none(Release.id == release_id)
    if found is None:
        raise ReleaseRefused(f"no release {release_id}")
    return found


def environment_of(release_id: int) -> Environment:
    """The environment a release belongs to."""
    return Environment.select().join(Release).where(Release.id == release_id).get()


def address_of(deployment_id: int) -> str | None:
    """The address of the environment a deployment released to, if it did."""
    return addresses_of([deployment_id]).get(deployment_id)


def addresses_of(deployment_ids: list[int]) -> dict[int, str]:
    """deployment id -> the address of the environment it released to, for those that did."""
    if not deployment_ids:
        return {}
    return dict(database.execute(
        Release.select(Release.deployment, Environment.address).join(Environment)
        .where(Release.deployment.in_(deployment_ids))))


def of_deployment(deployment_id: int) -> Release | None:
    """The release a deployment started, if any."""
    return Release.get_or_none(Release.deployment == deployment_id)


def start(deployment_id: int, environment_id: int, image: str) -> Release:
    """Record a starting release of a Running deployment (replacing what an interrupted attempt
    of the same deployment left)."""
    with write_transaction():
        Release.delete().where(Release.deployment == deployment_id,
                               Release.state.in_((S.STARTING.value, S.FAILED.value))).execute()
        return Release.create(environment=environment_id, deployment=deployment_id, image=image,
                              state=S.STARTING.value)


def settings_of(release_id: int) -> str | None:
    """The settings (JSON) of the deployment that started the release."""
    return (Deployment.select(Deployment.settings).join(Release, on=(Release.deployment == Deployment.id))
            .where(Release.id == release_id).scalar())


def record(release_id: int, **fields) -> None:
    """Record fields (container id, upstream, health) of a release."""
    Release.update(**fields).where(Release.id == release_id).execute()


def move(release_id: int, new: ReleaseState, **fields) -> Release:
    """Move a release to a state its own allows, recording fields; ReleaseRefused otherwise."""
    sources = [old.value for old, targets in LEGAL.items() if new in targets]
    with write_transaction():
        changed = Release.update(state=new.value, **fields).where(
            Release.id == release_id, Release.state.in_(sources)).execute()
        release = get(release_id)
        if not changed and release.state != new.value:
            raise ReleaseRefused(f"a {release.state} release cannot become {new.value}")
        return release


def abandon(deployment_id: int) -> None:
    """Mark failed the release of a deployment that finished before it went live (failed,
    timed out, cancelled: storage.deployments.transition calls this)."""
    Release.update(state=S.FAILED.value, retired_at=utcnow()).where(
        Release.deployment == deployment_id,
        Release.state.in_((S.STARTING.value, S.HEALTHY.value))).execute()


def went_live(deployment_id: int) -> bool:
    """Whether the deployment's release went live (it may have been replaced since)."""
    return Release.select().where(Release.deployment == deployment_id,
                                  Release.live_since.is_null(False)).exists()


def go_live(release_id: int, drain: float) -> tuple[Release, Release | None]:
    """Make a healthy release its environment's live one, and the one it replaces draining
    until drain seconds from now; return both."""
    with write_transaction():
        release = get(release_id)
        environment = Environment.get_by_id(release.environment_id)
        if environment.removed_at:
            raise ReleaseRefused("its environment was torn down")
        status = Deployment.select(Deployment.status).where(
            Deployment.id == release.deployment_id).scalar()
        if status != Status.RUNNING.value:  # cancelled or timed out while it got healthy
            raise ReleaseRefused(f"its deployment is {status}")
        newer = Release.select(Release.deployment).where(
            Release.id == environment.live).scalar() if environment.live else None
        if newer is not None and newer > release.deployment_id:
            # Deployments of one environment may overlap: the later one wins, whichever got
            # healthy first (a rollback is a later deployment too).
            raise ReleaseRefused(f"a later deployment ({newer}) is live already")
        now = utcnow()
        release = move(release_id, S.LIVE, live_since=now, health=None)
        old = None
        if environment.live and environment.live != release_id:
            old = move(environment.live, S.DRAINING,
                       drain_until=now + datetime.timedelta(seconds=drain))
        Environment.update(live=release_id).where(Environment.id == environment.id).execute()
        return release, old


def routes() -> dict[str, str]:
    """The proxy's truth: each environment's address and its live release's upstream."""
    query = (Environment.select(Environment.address, Release.upstream)
             .join(Release, on=(Release.id == Environment.live))
             .where(Environment.removed_at.is_null(), Release.upstream.is_null(False)))
    return dict(database.execute(query))


def draining() -> list[Release]:
    """Releases draining, soonest done first."""
    return list(Release.select().where(Release.state == S.DRAINING.value)
                .order_by(Release.drain_until))


def surplus(environment_id: int, keep: int) -> list[Release]:
    """Mark the environment's retired releases beyond the keep newest removed; return them."""
    with write_transaction():
        retired = list(Release.select().where(Release.environment == environment_id,
                                              Release.state == S.RETIRED.value)
                       .order_by(Release.id.desc()))
        for release in retired[keep:]:
            move(release.id, S.REMOVED)
        return retired[keep:]


def kept_images() -> set[str]:
    """Images of releases that may run or be returned to: image clean-up spares them."""
    return {image for (image,) in database.execute(
        Release.select(Release.image).where(Release.state.in_(KEPT)))}


def running_containers() -> set[str]:
    """Containers of releases that may run: live services outlive SPEED's restarts."""
    return {c for (c,) in database.execute(Release.select(Release.container_id).where(
        Release.state.in_(RUNNING), Release.container_id.is_null(False)))}


def upstream_ports() -> frozenset[int]:
    """The host ports of releases that may run: a new release never takes one."""
    return frozenset(int(upstream.rpartition(":")[2]) for (upstream,) in database.execute(
        Release.select(Release.upstream).where(Release.state.in_(RUNNING),
                                               Release.upstream.is_null(False))))


def live() -> list[Release]:
    """Every live release with its environment and its deployment's settings (the health
    check), for the health watch: one query, however many there are."""
    return list(Release.select(Release, Environment, Deployment.settings)
                .join(Environment).switch(Release).join(Deployment)
                .where(Release.state == S.LIVE.value, Environment.removed_at.is_null()))


def find_environment(repository: str, name: str) -> Environment | None:
    """The repository's environment of that name, if it exists and was not torn down."""
    return Environment.get_or_none(Environment.repository == repository,
                                   Environment.name == name, Environment.removed_at.is_null())


def teardown(environment_id: int) -> list[Release]:
    """Take an environment down: no route, nothing live, every release removed. Returns the
    releases whose containers and images are to go."""
    with write_transaction():
        Environment.update(removed_at=utcnow(), live=None).where(
            Environment.id == environment_id).execute()
        gone = list(Release.select().where(Release.environment == environment_id,
                                           Release.state.in_(KEPT)))
        Release.update(state=S.REMOVED.value, retired_at=utcnow()).where(
            Release.id.in_([r.id for r in gone])).execute()
        return gone


def images_in_use() -> set[str]:
    """Images any kept release or unfinished deployment still names."""
    return kept_images() | {image for (image,) in database.execute(
        Deployment.select(Deployment.image).where(Deployment.status.in_(
            (Status.PENDING.value, Status.RUNNING.value)),
                                                  Deployment.image.is_null(False)))}


def rollback(environment_id: int, release_id: int | None = None) -> Deployment:
    """Queue a deployment that makes a kept release live again: the one named, else the newest
    one no longer live. Trigger rollback; the release's commit, image and settings."""
    with write_transaction():
        environment = Environment.get_or_none(
            Environment.id == environment_id, Environment.removed_at.is_null()
        ) if 0 < environment_id <= max_id() else None
        if environment is None:
            raise NoEnvironment(f"no environment {environment_id}")
        query = Release.select().where(Release.environment == environment_id,
                                       Release.state.in_(RETURNABLE))
        if release_id is not None:
            query = query.where(Release.id == release_id)
        wrong_id = release_id is not None and not 0 < release_id <= max_id()
        target = None if wrong_id else query.order_by(Release.id.desc()).first()
        if target is None:
            raise ReleaseRefused(_why_not_back(environment, None if wrong_id else release_id,
                                               release_id))
        source = Deployment.get_by_id(target.deployment_id)
        return Deployment.create(
            url=source.url, branch=source.branch, commit=source.commit, trigger="rollback",
            repo_full_name=source.repo_full_name, installation_id=source.installation_id,
            pull_request=source.pull_request, environment=source.environment, fork=source.fork,
            image=target.image, settings=source.settings)


def _why_not_back(environment: Environment, found_id: int | None, asked: int | None) -> str:
    """Why rollback has no release to return to: the one asked for (found_id if it can be
    one), or any."""
    if asked is None:
        return f"{environment.name} keeps no earlier release"
    named = Release.get_or_none(Release.id == found_id, Release.environment == environment.id
                                ) if found_id is not None else None
    if named is None:
        return f"{environment.name} has no release {asked}"
    return f"release {asked} of {environment.name} is {named.state}, not kept for rollback"


def environments() -> list[dict]:
    """Every environment not torn down, with its newest releases (HISTORY each, as dicts with
    their deployment's commit): two queries, however many environments there are."""
    shown = list(Environment.select().where(Environment.removed_at.is_null())
                 .order_by(Environment.repository, Environment.name))
    place = fn.ROW_NUMBER().over(partition_by=[Release.environment], order_by=[Release.id.desc()])
    newest = (Release.select(Release.id, Release.environment.alias("environment"),
                             Release.deployment.alias("deployment"), Release.state,
                             Release.health, Release.started_at, Release.live_since,
                             Release.retired_at, Deployment.commit, place.alias("place"))
              .join(Deployment, JOIN.LEFT_OUTER)
              .where(Release.environment.in_([e.id for e in shown])))
    rows = (Release.select(*[SQL(f'"{column}"') for column in _HISTORY_COLUMNS])
            .from_(newest.alias("newest")).where(SQL('"place"') <= HISTORY)
            .order_by(SQL('"id"').desc()).dicts())
    history: dict[int, list[dict]] = {e.id: [] for e in shown}
    for row in rows:
        history[row["environment"]].append(row)
    return [{"environment": e, "releases": history[e.id]} for e in shown]


_HISTORY_COLUMNS = ("id", "environment", "deployment", "state", "health", "started_at",
                    "live_since", "retired_at", "commit")
