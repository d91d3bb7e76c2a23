"""The REST API of the seed: start, info, update, add_results, results; plus listing and cancel."""
import contextlib
import dataclasses
import datetime
import hashlib
import json

from aiohttp import web

from bot.auth import api_token_ok, bearer, deployment_token_ok, require_api_token
from bot.config import Config
from bot.errors import json_error, not_found
from bot.keys import callback_only_key, config_key, store_key, worker_key
from bot.requests import (idempotency_key, int_field, json_object, no_body, not_modified,
                          path_id, text_field)
from bot.rules import environment_of, full_name_of
from runner.output import REDACTED
from runner.validation import Invalid, check_addresses, check_source
from storage import deployments as queries
from storage import releases, replicas
from storage.errors import Finished, IllegalTransition, KeyReused, NotFound, ResultsFull
from storage.models import Deployment
from storage.status import Status

routes = web.RouteTableDef()
callback_routes = web.RouteTableDef()

MAX_LIMIT = 500


def iso(moment: datetime.datetime | None) -> str | None:
    """A moment as the API shows it (UTC, milliseconds)."""
    return moment.isoformat(timespec="milliseconds") + "Z" if moment else None


def _seconds(start: datetime.datetime | None, end: datetime.datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def describe(deployment: Deployment, waiting_reason: str | None = None,
             environment_url: str | None = None) -> dict:
    """A deployment as the API shows it."""
    d = deployment
    return {
        "id": d.id,
        "repo_name": d.url,
        "repo_branch": d.branch,
        "repo_full_name": d.repo_full_name,
        "status": d.status,
        "commit": d.commit,
        "trigger": d.trigger,
        "progress": d.progress,
        "reason": d.reason,
        "exit_code": d.exit_code,
        "created_at": iso(d.created_at),
        "started_at": iso(d.started_at),
        "finished_at": iso(d.finished_at),
        "phases": {"clone": _seconds(d.started_at, d.cloned_at),
                   "build": _seconds(d.cloned_at, d.built_at),
                   "run": _seconds(d.container_started_at, d.finished_at)},
        "waiting_reason": waiting_reason,
        # What the commit's .speed.yml set (secret names only; SPEED never shows a value).
        "settings": json.loads(d.settings) if d.settings else None,
        "environment": d.environment,
        "pull_request": d.pull_request,
        "environment_url": environment_url,
    }


async def environment_urls(app: web.Application, deployments: list[Deployment]) -> dict[int, str]:
    """Where each deployment that made a service release serves it (one query for all, and
    none when no deployment is a service: the read of a job's /info stays one hop)."""
    services = [d.id for d in deployments if d.settings and json.loads(d.settings).get("service")]
    if not services:
        return {}
    addresses = await app[store_key].run(releases.addresses_of, services)
    proxy = app[config_key].proxy
    return {i: proxy.environment_url(address) for i, address in addresses.items()}


async def waiting_reasons(request: web.Request, deployments: list[Deployment]) -> dict[int, str]:
    """Why each Pending deployment waits: its place in the queue and the limit holding it."""
    if not any(d.state == Status.PENDING for d in deployments):
        return {}
    store = request.app[store_key]
    queue = await store.run(queries.pending_ids)
    # The whole cluster's: any replica with a free slot takes the next one.
    running, count, slots = await store.run(replicas.capacity, request.app[config_key].runner.lease)
    where = "(runner.max_concurrent)" if count == 1 else \
        f"on {count} replicas (runner.max_concurrent of each)"
    return {deployment_id: f"position {place} in the queue; {running} of {slots} deployments "
                           f"running {where}"
            for place, deployment_id in enumerate(queue, start=1)}


async def deployment_or_404(request: web.Request, target_id: int | None = None) -> Deployment:
    """The deployment target_id (by default, the {id} in the path) names, or a 404 JSON error."""
    try:
        return await request.app[store_key].run(
            queries.get, path_id(request) if target_id is None else target_id)
    except NotFound:
        raise not_found() from None


def _token_refused() -> web.HTTPException:
    return json_error(401, "This deployment's token or an API token is required",
                      **{"WWW-Authenticate": "Bearer"})


async def _callback_target(request: web.Request, target_id: int) -> bool:
    """Whether the caller may write to the deployment a callback names with its own token
    (True: then only while it runs), or with an API token (False). Otherwise (on the
    container listener, only the deployment's token will do) the answer is 401 whether or not
    the deployment exists, so ids are not revealed."""
    try:
        deployment = await request.app[store_key].run(queries.get, target_id)
    except NotFound:
        deployment = None
    if deployment is not None and deployment_token_ok(request, deployment):
        return True
    if request.app[callback_only_key] or not await api_token_ok(
            request, request.app[config_key].auth.api_tokens):
        raise _token_refused()
    if deployment is None:
        raise not_found()
    return False


@contextlib.contextmanager
def _callback_refusals(limit: int):
    """The answers to a callback's write that the database refused."""
    try:
        yield
    except NotFound:
        raise not_found() from None
    except Finished:  # it finished since the token was checked: the token is void now
        raise _token_refused() from None
    except ResultsFull:
        raise json_error(413, f"This deployment's results reached runner.max_log_bytes "
                              f"({limit} bytes); nothing was added") from None


async def _redacted(request: web.Request, deployment_id: int, text: str) -> str:
    """text without the caller's own token, nor any secret: a container posting its environment
    back must not store what lets anyone who reads the results act for it."""
    token = bearer(request)
    text = text.replace(token, REDACTED) if token else text
    return await request.app[worker_key].redacted(deployment_id, text)


async def _refuse_invalid(config: Config, url: str, branch: str) -> None:
    """A 400 naming the problem unless url and branch may be deployed."""
    try:
        check_source(url, branch, config.runner.allowed_urls)
        await check_addresses(url, config.runner.allowed_urls)
    except Invalid as e:
        raise json_error(400, str(e)) from None


@routes.post("/start")
async def start(request: web.Request) -> web.Response:
    """Queue a deployment of a repository's branch."""
    config = request.app[config_key]
    await require_api_token(request, config.auth.api_tokens)
    body = await json_object(request, "url", "branch")
    url, branch = text_field(body, "url"), text_field(body, "branch")
    await _refuse_invalid(config, url, branch)
    full_name = full_name_of(config, url)
    fields = dict(repo_full_name=full_name, environment=environment_of(config, full_name))
    key = idempotency_key(request)
    if key is None:
        deployment = await request.app[store_key].change(queries.create, url, branch, **fields)
    else:
        # Sent again after an answer was lost (a 503, a dropped connection): the same
        # deployment, answered as the first time; never a second one.
        asked = hashlib.sha256(json.dumps([url, branch]).encode()).hexdigest()
        # A key is the client's own: scoped to the API token that sent it (another token's
        # same key neither replays this one's deployment nor is refused), stored as a hash.
        scoped = hashlib.sha256(json.dumps([bearer(request) or "", key]).encode()).hexdigest()
        try:
            deployment, again = await request.app[store_key].run(
                queries.create_once, scoped, asked, url, branch, **fields)
        except KeyReused:
            raise json_error(422, "this Idempotency-Key was used for another request") from None
        if again:
            return web.json_response({"id": deployment.id}, status=201,
                                     headers={"Idempotent-Replayed": "true"})
        request.app[store_key].announce(deployment)
    request.app[worker_key].wake()
    return web.json_response({"id": deployment.id}, status=201)


# The largest /info answer kept in memory (a long progress line makes one of up to megabytes):
# with storage.cache's MAX_ENTRIES, at most 16 MiB held.
KEPT_BYTES = 16 * 1024


@dataclasses.dataclass(frozen=True)
class _Described:
    """A deployment's JSON as /info sends it, and whether it depends on the database alone."""

    body: bytes
    etag: str
    waiting: bool  # a queue position also depends on the clock (replicas' leases)


async def _describe_one(request: web.Request, target_id: int) -> _Described:
    deployment = await deployment_or_404(request, target_id)
    reasons = await waiting_reasons(request, [deployment])
    urls = await environment_urls(request.app, [deployment])
    body = json.dumps(describe(deployment, reasons.get(deployment.id),
                               urls.get(deployment.id))).encode()
    return _Described(body, hashlib.blake2b(body, digest_size=16).hexdigest(),
                      deployment.id in reasons)


@routes.get("/info/{id}")
async def info(request: web.Request) -> web.Response:
    """One deployment's fields; 304 to a client that sends the ETag it got, if they are the same.
    Served from memory until the database changes (storage/cache.py)."""
    target_id = path_id(request)
    answer = await request.app[store_key].cache.get(
        ("info", target_id), lambda: _describe_one(request, target_id),
        keep=lambda described: not described.waiting and len(described.body) <= KEPT_BYTES)
    headers = {"ETag": f'"{answer.etag}"'}
    if not_modified(request, answer.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=answer.body, content_type="application/json", headers=headers)


@routes.post("/update")
@callback_routes.post("/update")
async def update(request: web.Request) -> web.Response:
    """Move a deployment to a status, or record a progress report."""
    body = await json_object(request, "id", "new_results")
    target_id = int_field(body, "id")
    new_results = text_field(body, "new_results")
    own_token = await _callback_target(request, target_id)
    new_results = await _redacted(request, target_id, new_results)
    store, limit = request.app[store_key], request.app[config_key].runner.max_log_bytes
    status = Status.parse(new_results)
    try:
        if status is None:
            with _callback_refusals(limit):
                await store.run(queries.report_progress, target_id, new_results, limit,
                                unfinished_only=own_token)
        else:
            await store.change(queries.transition, target_id, status,
                               note=f"[speed] status set to {status.value} through /update")
    except IllegalTransition as e:
        why = "it already finished" if e.current.finished else e.why
        raise json_error(409, f"Deployment cannot move from {e.current.value} to {e.new.value}"
                         + (f" ({why})" if why else "")) from None
    except NotFound:
        raise not_found() from None
    if status is not None and status.finished:
        await request.app[worker_key].stop(target_id)
    return web.json_response({"message": "Deployment updated successfully"})


@routes.post("/add_results/{id}")
@callback_routes.post("/add_results/{id}")
async def add_results(request: web.Request) -> web.Response:
    """Append text to a deployment's results."""
    target_id = path_id(request)
    body = await json_object(request, "results")
    results = text_field(body, "results", "Missing results data")
    own_token = await _callback_target(request, target_id)
    results = await _redacted(request, target_id, results)
    limit = request.app[config_key].runner.max_log_bytes
    with _callback_refusals(limit):
        await request.app[store_key].run(queries.add_result, target_id, results, limit,
                                          unfinished_only=own_token)
    return web.json_response({"message": "Results added successfully"})


# /results is streamed: JSON writes a control character as six bytes, so 3 MB of output became a
# 20 MB answer built whole per request. Each query reads at most RESULTS_ROWS rows, stopping once
# they hold RESULTS_CHARS characters; they are written JSON-escaped RESULTS_PIECE at a time.
RESULTS_ROWS = 256
RESULTS_CHARS = 256 * 1024
RESULTS_PIECE = 16 * 1024


@routes.get("/results/{id}")
async def results(request: web.Request) -> web.StreamResponse:
    """Everything recorded for a deployment, in order, as one string: {"results": "..."}."""
    target_id = (await deployment_or_404(request)).id  # a 404 before anything is sent
    response = web.StreamResponse()
    response.content_type, response.charset = "application/json", "utf-8"
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    store, after, more = request.app[store_key], 0, True
    try:
        await response.write(b'{"results": "')
        while more:
            rows = await store.run(queries.results_page, target_id, after, RESULTS_ROWS,
                                   RESULTS_CHARS)
            after = rows[-1][0] if rows else after
            text = "".join(row for _, row in rows)
            more = len(rows) == RESULTS_ROWS or len(text) >= RESULTS_CHARS
            del rows
            for start in range(0, len(text), RESULTS_PIECE):
                # json.dumps escapes each character alone, so the pieces make the whole string's
                # JSON: the body is byte for byte what json.dumps({"results": text}) would be.
                await response.write(json.dumps(text[start:start + RESULTS_PIECE])[1:-1].encode())
        await response.write(b'"}')
    except ConnectionResetError:  # the client went away mid-answer
        return response
    await response.write_eof()
    return response


@routes.get("/deployments")
async def deployments(request: web.Request) -> web.Response:
    """Deployments newest first, filtered by status and repository."""
    query = request.rel_url.query
    raw_limit = query.get("limit", "50")
    if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) < 6):
        raise json_error(400, f"'limit' must be an integer between 1 and {MAX_LIMIT}")
    limit = int(raw_limit)
    if not 1 <= limit <= MAX_LIMIT:
        raise json_error(400, f"'limit' must be between 1 and {MAX_LIMIT}")
    status = None
    if "status" in query:
        status = Status.parse(query["status"])
        if status is None:
            raise json_error(400, "'status' must be one of " + ", ".join(s.value for s in Status))
    before = query.get("before")
    if before is not None and not (before.isascii() and before.isdigit() and len(before) < 19):
        raise json_error(400, "'before' must be a deployment id")
    found = await request.app[store_key].run(queries.listing, limit, status, query.get("repo"),
                                             int(before) if before else None)
    reasons = await waiting_reasons(request, found)
    urls = await environment_urls(request.app, found)
    return web.json_response({"deployments": [describe(d, reasons.get(d.id), urls.get(d.id))
                                              for d in found]})


@routes.post("/cancel/{id}")
async def cancel(request: web.Request) -> web.Response:
    """Stop a queued or running deployment."""
    await require_api_token(request, request.app[config_key].auth.api_tokens)
    target_id = path_id(request)
    await no_body(request)
    try:
        deployment = await request.app[store_key].change(
            queries.transition, target_id, Status.CANCELLED, note="[speed] cancelled",
            reason="cancelled")
    except NotFound:
        raise not_found() from None
    except IllegalTransition as e:
        raise json_error(409, f"Deployment is already {e.current.value}") from None
    await request.app[worker_key].stop(target_id)
    return web.json_response(describe(deployment))


@routes.post("/redeploy/{id}")
async def redeploy(request: web.Request) -> web.Response:
    """Queue a new deployment of the same repository, branch and commit."""
    config = request.app[config_key]
    await require_api_token(request, config.auth.api_tokens)
    await no_body(request)
    source = await deployment_or_404(request)
    # The configuration may have changed since: the same checks as /start.
    await _refuse_invalid(config, source.url, source.branch)
    try:
        deployment = await request.app[store_key].change(queries.redeploy, source.id)
    except NotFound:
        raise not_found() from None
    request.app[worker_key].wake()
    return web.json_response({"id": deployment.id}, status=201)
