"""Every query on deployments and their results; each write is one short transaction."""
import json
import uuid
from typing import Callable, TypeVar

from peewee import IntegrityError, fn

from storage import outbox, statements
from storage.db import SQLITE_MAX_ID, clock, database, max_id, write_transaction
from storage.errors import Finished, IllegalTransition, KeyReused, NotFound, ResultsFull
from storage.models import Delivery, Deployment, Result, Setting, StartRequest, utcnow
from storage.quoting import one_line, quote
from storage.releases import abandon, went_live
from storage.status import Status, is_legal

SQLITE_MAX_INT = SQLITE_MAX_ID  # the widest any database's ids go: what a request may name
# A deployment claimed this many times without finishing (SPEED died with it each time, or its
# engine did) is failed rather than queued again: it may be what takes SPEED down.
MAX_ATTEMPTS = 3
UNFINISHED = (Status.PENDING.value, Status.RUNNING.value)
REASON_LIMIT = 2000  # characters of a reason (and of SPEED's note that carries it)
T = TypeVar("T")


def _found(deployment_id: int, read: Callable[[], T | None]) -> T:
    """What read() finds for the deployment, or NotFound (also for ids the database cannot hold)."""
    found = read() if 0 < deployment_id <= max_id() else None
    if found is None:
        raise NotFound(deployment_id)
    return found


def _get(deployment_id: int) -> Deployment:
    return _found(deployment_id, lambda: statements.get(Deployment, deployment_id))


def _status(deployment_id: int) -> Status:
    """The deployment's status, or NotFound: a tenth of the cost of reading the whole row."""
    return Status(_found(deployment_id, lambda: Deployment.select(Deployment.status)
                         .where(Deployment.id == deployment_id).scalar()))


def _is_service(deployment_id: int) -> bool:
    """Whether the deployment's settings (once its commit was read) make it a service's."""
    settings = Deployment.select(Deployment.settings).where(Deployment.id == deployment_id).scalar()
    return bool(settings and json.loads(settings).get("service"))


def get(deployment_id: int) -> Deployment:
    """The deployment with that id, or NotFound."""
    return _get(deployment_id)


def _set(deployment_id: int, **fields) -> Deployment:
    """Write fields and return the row as changed, in one statement: no second read."""
    rows = statements.update(Deployment, deployment_id, fields, returning=True)
    if not rows:
        raise NotFound(deployment_id)
    return rows[0]


def _move(deployment_id: int, current: Status, **fields) -> Deployment | None:
    """_set, on condition that the deployment is still in current: the state a change was
    decided from (another replica's write in between makes it None: nothing written)."""
    rows = statements.update(Deployment, deployment_id, fields, {"status": current.value},
                             returning=True)
    return rows[0] if rows else None


def create(url: str, branch: str, **fields) -> Deployment:
    """Record a Pending deployment (fields: trigger, commit, repo_full_name, ...)."""
    # One INSERT commits by itself: no BEGIN and COMMIT around it on the path of every /start.
    return statements.create(Deployment, url=url, branch=branch, **fields)


KEYS_KEPT_SECONDS = 24 * 3600


def create_once(key: str, request_hash: str, url: str, branch: str,
                **fields) -> tuple[Deployment, bool]:
    """create, once per idempotency key (kept a day): the deployment, and whether it was made
    by an earlier request with the key. KeyReused when that request asked for something else."""
    with write_transaction():
        StartRequest.delete().where(StartRequest.created_at < clock() - KEYS_KEPT_SECONDS).execute()
        # PostgreSQL: a request with the same key in flight elsewhere holds its row; this waits
        # for its commit and then finds it (one INSERT that cannot race).
        made = StartRequest.insert(key=key, request_hash=request_hash, deployment_id=0,
                                   created_at=clock()).on_conflict_ignore().as_rowcount().execute()
        if not made:
            earlier = StartRequest.get_by_id(key)
            if earlier.request_hash != request_hash:
                raise KeyReused(key)
            return _get(earlier.deployment_id), True
        deployment = create(url, branch, **fields)
        StartRequest.update(deployment_id=deployment.id).where(StartRequest.key == key).execute()
    return deployment, False


def _supersede(newer: Deployment) -> list[Deployment]:
    """Cancel the unfinished deployments newer replaces: those of the same pull request, or for
    pushes those of the same repository and branch. (A pull request's branch is its head's,
    named by whoever opened it, even in a fork: it says nothing about which pull request.)"""
    pull_request = newer.pull_request is not None
    same = (Deployment.pull_request == newer.pull_request if pull_request
            else (Deployment.branch == newer.branch) & Deployment.pull_request.is_null())
    params = [newer.repo_full_name, newer.trigger,
              newer.pull_request if pull_request else newer.branch, newer.id, *UNFINISHED]
    older = [i for (i,) in statements.execute(
        ("supersede", pull_request), params, lambda: Deployment.select(Deployment.id).where(
            Deployment.repo_full_name == newer.repo_full_name,
            Deployment.trigger == newer.trigger, same, Deployment.id < newer.id,
            Deployment.status.in_(UNFINISHED)))]
    return [transition(deployment_id, Status.CANCELLED,
                       note=f"[speed] Cancelled: superseded by deployment {newer.id}",
                       reason=f"superseded by deployment {newer.id}") for deployment_id in older]


def close_pull_request(full_name: str, number: int) -> list[Deployment]:
    """A pull request was closed: cancel its unfinished deployments (returned), and queue its
    GitHub Deployments' marking as inactive in GitHub's outbox (those made already, and those
    its waiting reports are still to make)."""
    of_it = ((fn.LOWER(Deployment.repo_full_name) == full_name.lower())
             & (Deployment.pull_request == number))
    with write_transaction():
        unfinished = _ids(Deployment.select(Deployment.id).where(
            of_it, Deployment.status.in_(UNFINISHED)))
        cancelled = [transition(deployment_id, Status.CANCELLED,
                                note="[speed] Cancelled: the pull request was closed",
                                reason="the pull request was closed")
                     for deployment_id in unfinished]
        outbox.deactivate(Deployment.select().where(of_it))
    return cancelled


def record_delivery(guid: str, event: str, deployment: dict | None, message: str,
                    supersede: bool = False
                    ) -> tuple[Delivery, bool, Deployment | None, list[Deployment]]:
    """Record a webhook delivery and the deployment it asks for, once per delivery id.

    Returns the delivery, whether it is new, the deployment it created (if new), and the
    deployments it superseded (cancelled)."""
    try:
        with write_transaction():
            # First: a redelivery touches nothing else (no deployment, no cancelling).
            if list(statements.execute("delivery by guid", [guid], lambda: Delivery.select(
                    Delivery.id).where(Delivery.guid == guid))):
                return Delivery.get(Delivery.guid == guid), False, None, []
            created, superseded = None, []
            if deployment is not None:
                created = statements.create(Deployment, **deployment)
                if supersede:
                    superseded = _supersede(created)
            delivery = statements.create(Delivery, guid=guid, event=event, deployment=created,
                                         status=202 if created else 200, message=message)
    except IntegrityError:
        # Another replica recorded the same delivery meanwhile (PostgreSQL; SQLite's one writer
        # never lets two in): everything of this one was rolled back, and theirs is the answer.
        return Delivery.get(Delivery.guid == guid), False, None, []
    return delivery, True, created, superseded


def known_deliveries(guids: list[str]) -> set[str]:
    """Which of these delivery ids were recorded."""
    return {guid for (guid,) in Delivery.select(Delivery.guid).where(Delivery.guid.in_(guids)).tuples()}


def listing(limit: int = 50, status: Status | None = None, repo: str | None = None,
            before: int | None = None) -> list[Deployment]:
    """Deployments newest first, optionally filtered by status and repository URL."""
    if repo and "\0" in repo:
        # No stored URL holds a NUL (URLs with control characters are refused); SQLite's LIKE
        # stops reading the pattern at one and matched every row, PostgreSQL refuses the query.
        return []
    query = Deployment.select().order_by(Deployment.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Deployment.status == status.value)
    if repo:
        query = query.where(Deployment.url.contains(repo))
    if before is not None:
        query = query.where(Deployment.id < before)
    return list(query)


def claim_next(owner: str) -> Deployment | None:
    """Mark the oldest Pending deployment Running, owned by the replica owner, and return it,
    in one statement (asked at every wake of every replica: its SQL is built once)."""
    now, running, pending = utcnow(), Status.RUNNING.value, Status.PENDING.value

    def claim():
        oldest = (Deployment.select(Deployment.id).where(Deployment.status == pending)
                  .order_by(Deployment.id).limit(1))
        if database.for_update:  # PostgreSQL: past rows another replica is claiming right now
            oldest = oldest.for_update(skip_locked=True)
        return (Deployment.update(status=running, started_at=now,
                                  attempts=Deployment.attempts + 1, owner=owner,
                                  claim=Deployment.claim + 1)
                .where(Deployment.id == oldest, Deployment.status == pending)
                .returning(Deployment))

    with write_transaction():
        # The parameters in peewee's order (the fields' order), which statements checks.
        rows = statements.instances(Deployment, statements.execute(
            ("claim next", bool(database.for_update)),
            [running, 1, owner, 1, Deployment.started_at.db_value(now), pending, 1, pending],
            claim))
    return rows[0] if rows else None


def transition(deployment_id: int, new: Status, note: str | None = None, **fields) -> Deployment:
    """Move a deployment to a new status (legal moves only), recording fields and a note."""
    with write_transaction():
        current = _status(deployment_id)
        if current == new and not current.finished:
            return _get(deployment_id)
        if not is_legal(current, new) or (new != Status.SUCCEEDED and went_live(deployment_id)):
            # A deployment whose release went live succeeded, whatever comes before it says so.
            raise IllegalTransition(current, new)
        if new == Status.SUCCEEDED and _is_service(deployment_id) and not went_live(deployment_id):
            # And one of a service succeeds by its release going live, not by someone's word.
            raise IllegalTransition(current, new, "a service's deployment succeeds once its "
                                                  "release serves")
        values = dict(fields, status=new.value)
        if "reason" in values and values["reason"]:
            # An engine's message may span lines, a .speed.yml key be of any length.
            values["reason"] = one_line(values["reason"], limit=REASON_LIMIT)
        if new.finished:
            # From now on the container's token is refused: it cannot write for a finished
            # deployment, whatever it still knows; and its secrets are no longer kept.
            values.update(finished_at=utcnow(), token_hash=None, secrets_sealed=None)
            abandon(deployment_id)  # a release it did not make live is over too
        moved = _move(deployment_id, current, **values)
        if moved is None:  # changed since it was read (another replica): this change lost
            raise IllegalTransition(_status(deployment_id), new)
        if note:
            _append(deployment_id, one_line(note, limit=REASON_LIMIT))
    return moved


def requeue(deployment_id: int, note: str) -> Deployment:
    """Put a Running deployment whose container never started back in the queue, unless it
    was claimed MAX_ATTEMPTS times already: then it fails, saying so."""
    with write_transaction():
        attempts = Deployment.select(Deployment.attempts).where(
            Deployment.id == deployment_id).scalar() or 0
        if attempts >= MAX_ATTEMPTS:
            reason = (f"interrupted {attempts} times before its container started; not "
                      "deploying it again")
            return transition(deployment_id, Status.FAILED, note=f"[speed] Failed: {reason}",
                              reason=reason, infrastructure_failure=True)
        updated = (Deployment.update(status=Status.PENDING.value, started_at=None,
                                     cloned_at=None, built_at=None, container_started_at=None,
                                     container_id=None, log_cursor=None, log_seen=0,
                                     owner=None)
                   .where(Deployment.id == deployment_id,
                          Deployment.status == Status.RUNNING.value).execute())
        if updated:
            _append(deployment_id, note)
    return _get(deployment_id)


def update(deployment_id: int, **fields) -> Deployment:
    """Record fields (commit, container id, ...) on a deployment and return it."""
    with write_transaction():
        return _set(deployment_id, **fields)


def record(deployment_id: int, **fields) -> None:
    """update, for callers that need no row back: reading one costs several times the write."""
    # One UPDATE commits by itself.
    statements.update(Deployment, deployment_id, fields)


def _append(deployment_id: int, text: str) -> None:
    if not text.endswith("\n"):
        text += "\n"
    Result.create(deployment=deployment_id, text=text)


def _callback_text(deployment_id: int, text: str, limit: int, unfinished_only: bool) -> str:
    """text as a callback's result is stored (quoted, ending a line), once it fits within the
    deployment's output limit: all of it or nothing (ResultsFull). unfinished_only: a write
    for a deployment's own token, which is refused once it finished (Finished)."""
    status, stored = _found(deployment_id, lambda: Deployment.select(
        Deployment.status, Deployment.log_bytes).where(Deployment.id == deployment_id)
        .tuples().first())
    if unfinished_only and Status(status).finished:
        raise Finished(deployment_id)
    text = quote(text if text.endswith("\n") else text + "\n")
    size = len(text.encode())
    if stored + size > limit:
        raise ResultsFull(limit)
    Deployment.update(log_bytes=Deployment.log_bytes + size).where(
        Deployment.id == deployment_id).execute()
    return text


def add_result(deployment_id: int, text: str, limit: int, unfinished_only: bool = False) -> None:
    """Append text a caller sent to the deployment's results (see _callback_text)."""
    with write_transaction():
        _append(deployment_id, _callback_text(deployment_id, text, limit, unfinished_only))


def report_progress(deployment_id: int, text: str, limit: int,
                    unfinished_only: bool = False) -> None:
    """Record a progress report: it becomes the progress and is appended to the results."""
    with write_transaction():
        text = _callback_text(deployment_id, text, limit, unfinished_only)
        Deployment.update(progress=text.removesuffix("\n")).where(
            Deployment.id == deployment_id).execute()
        _append(deployment_id, text)


def append_output(deployment_id: int, text: str, cursor: tuple[int, int] | None,
                  limit: int | None, batch: int | None = None) -> tuple[int, int]:
    """Store a batch of output with the stream position it reached, cut at limit bytes of
    results in all (None: SPEED's own note, never cut). Return the bytes stored in all and the
    bytes of text that did not fit. batch: how many batches the writer knows were stored
    before this one; when more were, this one is a retry of a write whose commit went through
    (its answer lost with the connection) and nothing is stored again."""
    data = text.encode()
    with write_transaction():
        # The output's statements are a running deployment's most frequent: their SQL is
        # built once (storage/statements.py).
        stored, batches = next(iter(statements.execute(
            "output so far", [deployment_id], lambda: Deployment.select(
                Deployment.log_bytes, Deployment.output_batches).where(
                Deployment.id == deployment_id)).fetchall()), (0, 0))
        if batch is not None and batches > batch:
            return stored, 0
        kept = len(data) if limit is None else max(min(len(data), limit - stored), 0)
        if kept < len(data):
            text = data[:kept].decode("utf-8", "ignore")
            kept = len(text.encode())
        if text:
            statements.create(Result, deployment=deployment_id, text=text)
        fields = {"log_bytes": stored + kept, "output_batches": batches + 1}
        if cursor is not None:  # the time of the last piece stored, and the pieces of that time
            fields.update(log_cursor=cursor[0], log_seen=cursor[1])
        Deployment.update(**fields).where(Deployment.id == deployment_id).execute()
    return stored + kept, len(data) - kept


def name_image(deployment_id: int, image: str, url: str, commit: str,
               limit: int = 5) -> list[tuple[str, str | None]]:
    """Record the image the deployment is about to build or tag, so that every replica's
    pruning spares it from now on, and return (image, settings) of earlier deployments that
    built or reused this url and commit, newest first: one round trip for both."""
    record(deployment_id, image=image)
    return list(Deployment.select(Deployment.image, Deployment.settings).where(
        Deployment.url == url, Deployment.commit == commit, Deployment.built_at.is_null(False),
        Deployment.image.is_null(False), Deployment.id < deployment_id)
        .order_by(Deployment.id.desc()).limit(limit).tuples())


def results_after(deployment_id: int, after: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
    """The deployment's results recorded after result id `after`: (id, text) in order."""
    return list(Result.select(Result.id, Result.text)
                .where(Result.deployment == deployment_id, Result.id > after)
                .order_by(Result.id).limit(limit).tuples())


def results_text(deployment_id: int) -> str:
    """Every result of the deployment in recorded order, as one string."""
    _get(deployment_id)
    texts = (Result.select(Result.text).where(Result.deployment == deployment_id)
             .order_by(Result.id).tuples())
    return "".join(text for (text,) in texts)


def _ids(query) -> list[int]:
    """The ids a query selects, read straight off the cursor: on a queue thousands long,
    peewee's per-row wrapping costs several times what SQLite does."""
    return [i for (i,) in database.execute(query)]


def finished(deployment_id: int) -> bool:
    """Whether the deployment finished: clean-up's one read (what it spares is asked later,
    after the images are listed: storage.releases.images_in_use)."""
    return _status(deployment_id).finished


def unfinished_among(deployment_ids: set[int]) -> set[int]:
    """Which of these deployments are Pending or Running."""
    if not deployment_ids:
        return set()
    return set(_ids(Deployment.select(Deployment.id).where(
        Deployment.id.in_(list(deployment_ids)), Deployment.status.in_(UNFINISHED))))


def pending_ids() -> list[int]:
    """The queue: ids of Pending deployments in the order they will run."""
    return _ids(Deployment.select(Deployment.id)
                .where(Deployment.status == Status.PENDING.value).order_by(Deployment.id))


def counts() -> dict[str, int]:
    """How many deployments are in each status."""
    found = dict(Deployment.select(Deployment.status, fn.COUNT(Deployment.id))
                 .group_by(Deployment.status).tuples())
    return {status.value: found.get(status.value, 0) for status in Status}


def redeploy(deployment_id: int) -> Deployment:
    """A new Pending deployment of the same repository, branch and commit."""
    with write_transaction():
        source = _get(deployment_id)
        # The same origin: a redeploy of a pull request (from a fork) is one, for secrets too.
        return Deployment.create(
            url=source.url, branch=source.branch, commit=source.commit, trigger="redeploy",
            repo_full_name=source.repo_full_name, installation_id=source.installation_id,
            pull_request=source.pull_request, fork=source.fork, environment=source.environment)


def instance_id() -> str:
    """This database's instance id, made once; it tells this SPEED's containers from others'."""
    with write_transaction():
        setting, _ = Setting.get_or_create(key="instance_id",
                                           defaults={"value": uuid.uuid4().hex[:12]})
    return setting.value


def latest_for(full_name: str, branch: str | None = None) -> Deployment | None:
    """The newest deployment of a GitHub repository (owner/name, any case), optionally of a branch."""
    query = (Deployment.select().where(fn.LOWER(Deployment.repo_full_name) == full_name.lower())
             .order_by(Deployment.id.desc()).limit(1))
    if branch:
        query = query.where(Deployment.branch == branch)
    return query.first()


def results_page(deployment_id: int, after: int, rows: int, chars: int) -> list[tuple[int, str]]:
    """Up to `rows` results after result id `after`, (id, text), ending once `chars` are read."""
    cursor = database.execute(Result.select(Result.id, Result.text).where(
        Result.deployment == deployment_id, Result.id > after).order_by(Result.id).limit(rows))
    page, size = [], 0
    try:
        for row in cursor:  # read row by row: what is past the bound is never fetched
            page.append(row)
            size += len(row[1])
            if size >= chars:
                break
    finally:
        cursor.close()  # an unfinished statement would keep SQLite's read snapshot open
    return page
