"""POST /webhook: verified GitHub deliveries become deployments, once per delivery id."""
import dataclasses
import logging
import re

from aiohttp import web
from gidgethub import BadRequest, ValidationFailure, routing, sansio

from bot.config import Config
from bot.environments import close_preview
from bot.errors import json_error
from bot.keys import config_key, metrics_key, store_key, worker_key
from bot.requests import read_body
from bot.rules import deploys_branch, rule_for
from runner.validation import Invalid, check_addresses, check_source
from storage import deployments as queries
from storage import releases

log = logging.getLogger(__name__)

routes = web.RouteTableDef()
SIGNATURE_256 = re.compile(r"sha256=[0-9a-fA-F]{64}")
router = routing.Router()

# GitHub caps a delivery at 25 MB; anything larger is refused before it is read whole.
MAX_WEBHOOK_BODY = 25 * 1024 * 1024
NULL_SHA = "0" * 40
COUNTED_EVENTS = ("ping", "push", "pull_request")
SHA = re.compile(r"[0-9a-f]{40}")
# GitHub's event names (and actions) are lower-case words joined by underscores, some with digits
# (projects_v2_item); 64 characters is the width of the column that stores the event.
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# GitHub's delivery ids are UUIDs (hex digits and hyphens); 64 characters is the column's width.
DELIVERY_ID = re.compile(r"[0-9A-Za-z-]{1,64}")
# GitHub's pull request numbers fit a 32-bit column and its ids 53 bits (exact in JavaScript);
# larger ones are no GitHub's.
MAX_NUMBER = 2**31 - 1
MAX_ID = 2**53


@dataclasses.dataclass
class Decision:
    """What a delivery asks of SPEED: a deployment (its fields), or a reason to ignore it."""

    message: str = ""
    deployment: dict | None = None
    supersede: bool = False
    closed: tuple[str, int] | None = None  # a pull request (owner/name, number) whose preview goes
    reopened: tuple[str, int] | None = None  # one whose preview may come back


class Ignored(Exception):
    """The delivery asks for nothing; the message says why."""


def _at(data: object, *path: str) -> object:
    """The value at path in a payload; None where the path leaves the payload's objects."""
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _text(data: dict, *path: str) -> str:
    """The string at path in a payload; Ignored when there is none."""
    value = _at(data, *path)
    if not isinstance(value, str):
        raise Ignored(f"the payload has no {'.'.join(path)}")
    return value


def _number(data: dict, *path: str, limit: int = MAX_ID) -> int | None:
    """The positive integer at path in a payload, if there is one below limit."""
    value = _at(data, *path)
    return value if type(value) is int and 0 < value < limit else None


async def _deployment(config: Config, full_name: str, url: str, branch: str, commit: str,
                      **fields) -> dict:
    if not SHA.fullmatch(commit or ""):
        raise Ignored(f"{commit!r} is not a commit sha")
    try:
        check_source(url, branch, config.runner.allowed_urls)
        await check_addresses(url, config.runner.allowed_urls)
    except Invalid as e:
        raise Ignored(str(e)) from None
    return dict(url=url, branch=branch, commit=commit, repo_full_name=full_name, **fields)


@router.register("ping")
async def on_ping(event: sansio.Event, config: Config, decision: Decision) -> None:
    decision.message = "pong"


@router.register("push")
async def on_push(event: sansio.Event, config: Config, decision: Decision) -> None:
    data = event.data
    ref, full_name = _text(data, "ref"), _text(data, "repository", "full_name")
    if not ref.startswith("refs/heads/"):
        raise Ignored(f"{ref} is not a branch")
    branch = ref.removeprefix("refs/heads/")
    if data.get("deleted") or data.get("after") == NULL_SHA:
        raise Ignored(f"branch {branch} was deleted")
    rule = rule_for(config, full_name)
    if rule is None:
        raise Ignored(f"repository {full_name} is not configured")
    if not deploys_branch(rule, branch):
        raise Ignored(f"branch {branch} is not deployed for {full_name}")
    decision.deployment = await _deployment(
        config, full_name, _text(data, "repository", "clone_url"), branch, _text(data, "after"),
        trigger="push", installation_id=_number(data, "installation", "id"),
        environment=rule.environment or None)
    decision.supersede = rule.cancel_superseded
    decision.message = f"deploying {full_name} {branch} at {data['after'][:12]}"


@router.register("pull_request", action="opened")
@router.register("pull_request", action="synchronize")
@router.register("pull_request", action="reopened")
async def on_pull_request(event: sansio.Event, config: Config, decision: Decision) -> None:
    data = event.data
    full_name = _text(data, "repository", "full_name")
    rule = rule_for(config, full_name)
    if rule is None:
        raise Ignored(f"repository {full_name} is not configured")
    if not rule.pull_requests:
        raise Ignored(f"pull requests are not deployed for {full_name}")
    number = _number(data, "pull_request", "number", limit=MAX_NUMBER)
    if number is None:
        raise Ignored("the payload has no pull_request.number")
    # A head repository since deleted is null: no full name, so it counts as a fork.
    fork = _at(data, "pull_request", "head", "repo", "full_name") != full_name
    if fork and not rule.forks:
        raise Ignored("pull requests from forks are not deployed (forks: false)")
    sha = _text(data, "pull_request", "head", "sha")
    if event.data.get("action") == "reopened":
        decision.reopened = (full_name, number)
    decision.deployment = await _deployment(
        config, full_name, _text(data, "pull_request", "head", "repo", "clone_url"),
        _text(data, "pull_request", "head", "ref"), sha, trigger="pull_request",
        pull_request=number, installation_id=_number(data, "installation", "id"),
        environment=rule.environment or None, fork=fork)
    decision.supersede = rule.cancel_superseded
    decision.message = f"deploying pull request #{number} at {sha[:12]}"


@router.register("pull_request", action="closed")
async def on_pull_request_closed(event: sansio.Event, config: Config, decision: Decision) -> None:
    data = event.data
    full_name = _text(data, "repository", "full_name")
    rule = rule_for(config, full_name)
    if rule is None or not rule.pull_requests:
        raise Ignored(f"pull requests are not deployed for {full_name}")
    number = _number(data, "pull_request", "number", limit=MAX_NUMBER)
    if number is None:
        raise Ignored("the payload has no pull_request.number")
    decision.closed = (full_name, number)
    decision.message = f"pull request #{number} closed: its deployments stop, its preview goes"


def _parse(request: web.Request, body: bytes, secret: str | None) -> sansio.Event:
    headers = request.headers
    if not (EVENT_NAME.fullmatch(headers.get("X-GitHub-Event", ""))
            and DELIVERY_ID.fullmatch(headers.get("X-GitHub-Delivery", ""))):
        raise json_error(400, "X-GitHub-Event and X-GitHub-Delivery headers are required "
                              "(an event name and a delivery id)")
    if secret and not SIGNATURE_256.fullmatch(headers.get("X-Hub-Signature-256", "")):
        # SHA-1 (X-Hub-Signature, or a sha1= value in this header) is not accepted, and nothing
        # but hex reaches the comparison (compare_digest refuses non-ASCII text with an error).
        raise json_error(401, "X-Hub-Signature-256 with a sha256= HMAC of the body is required")
    try:
        event = sansio.Event.from_http(headers, body, secret=secret)
    except ValidationFailure:
        raise json_error(401, "Webhook signature does not match") from None
    except (BadRequest, ValueError, LookupError, RecursionError):
        # ValueError covers bad JSON and bad text; LookupError an unknown charset.
        raise json_error(400, "Webhook body must be JSON (Content-Type: application/json)") from None
    if not isinstance(event.data, dict):
        raise json_error(400, "Webhook body must be a JSON object")
    return event


async def announce_webhook_policy(app: web.Application) -> None:
    """Say once, at start-up, whether webhooks are checked, refused or taken unsigned."""
    config = app[config_key]
    if config.github.webhook_secret:
        log.info("webhooks: signatures are checked with github.webhook_secret")
    elif config.accepts_unsigned_webhooks:
        log.info("webhooks are accepted unsigned: github.webhook_secret is not set and SPEED "
                 "is reachable from this machine only (loopback, no auth.api_tokens, a "
                 "loopback server.public_url)")
    else:
        log.warning("webhooks are refused (403): github.webhook_secret is not set, and SPEED is "
                    "reachable from elsewhere (auth.api_tokens, server.public_url or server.host)")


@routes.post("/webhook")
async def webhook(request: web.Request) -> web.Response:
    """Receive a GitHub delivery and count it by event and outcome."""
    event = request.headers.get("X-GitHub-Event", "")
    event = event if event in COUNTED_EVENTS else "other"  # a bounded set of metric labels
    try:
        response = await _receive(request)
    except web.HTTPException as e:
        request.app[metrics_key].deliveries.labels(event, f"refused {e.status}").inc()
        raise
    outcome = "deployed" if response.status == 202 else "ignored"
    request.app[metrics_key].deliveries.labels(event, outcome).inc()
    return response


async def _receive(request: web.Request) -> web.Response:
    """Verify, decide, record once, wake the worker."""
    config = request.app[config_key]
    secret = config.github.webhook_secret or None
    if secret is None and not config.accepts_unsigned_webhooks:
        raise json_error(403, "Webhooks are refused: github.webhook_secret is not set")
    event = _parse(request, await read_body(request, MAX_WEBHOOK_BODY), secret)
    decision = Decision()
    try:
        await router.dispatch(event, config, decision)
    except Ignored as e:
        decision = Decision(message=f"ignored: {e}")
    except (KeyError, TypeError, AttributeError) as e:
        # Signed, so GitHub's own: a payload SPEED cannot read asks it for nothing. A 4xx would
        # leave it unrecorded, and a GitHub App's start-up would ask for it again every time.
        log.warning("delivery %s (%s): unreadable payload (%s)", event.delivery_id, event.event,
                    type(e).__name__)
        decision = Decision(message=f"ignored: SPEED cannot read this {event.event} payload")
    if not decision.message:
        action = event.data.get("action")
        # Named only when it looks like GitHub's: repository_dispatch's is the sender's own text.
        action = action if isinstance(action, str) and EVENT_NAME.fullmatch(action) else ""
        decision.message = f"ignored: {event.event} {action + ' ' if action else ''}events are not deployed"
    store = request.app[store_key]
    # Together: under a burst, the deliveries that arrive while one is written share the next
    # transaction (each answered after its COMMIT).
    delivery, new, created, superseded = await store.run_together(
        queries.record_delivery, event.delivery_id, event.event, decision.deployment,
        decision.message, decision.supersede)
    if decision.reopened and new:  # before the worker wakes: a closed preview stays closed
        await store.run(releases.reopen, *releases.preview(*decision.reopened))
    log.info("delivery %s (%s): %s%s", event.delivery_id, event.event, delivery.message,
             "" if new else " (redelivered)", extra={"deployment": delivery.deployment_id})
    if decision.closed and new:
        await close_preview(request.app, *decision.closed)
    if delivery.deployment_id is None:
        return web.json_response({"message": delivery.message})
    if created is not None:
        # The row as created: asking for it again would queue behind every other delivery.
        store.announce(created, *superseded)
        worker = request.app[worker_key]
        worker.wake()
        for older in superseded:
            await worker.stop(older.id)
    return web.json_response({"id": delivery.deployment_id}, status=202)
