"""A stand-in for GitHub's REST API on 127.0.0.1: GitHub's answers and auth, every call recorded."""
import asyncio
import contextlib
import dataclasses
import datetime
import hmac
import http
import itertools
import json
import secrets
import string
import time
import uuid
from typing import Any, Awaitable, Callable

import aiohttp
import jwt
from aiohttp import web
from multidict import CIMultiDict

from tests.webhooks import encode, fake_sha

DOCS = "https://docs.github.com/rest"
LOST_ANSWER_SECONDS = 5  # how long lose_answer holds an answer back (past SPEED's timeout)
STATUS_STATES = ("error", "failure", "pending", "success")
DEPLOYMENT_STATES = ("error", "failure", "inactive", "in_progress", "queued", "pending", "success")
JWT_MAX_LIFETIME = 600  # GitHub refuses an App JWT whose exp is more than 10 minutes ahead
BOT = {"login": "speed-bot[bot]", "id": 1, "type": "Bot"}
PERMISSIONS = {"statuses": "write", "deployments": "write", "contents": "read", "metadata": "read"}


def _iso(epoch: float) -> str:
    """An epoch time as GitHub writes it: ISO 8601, seconds, Z."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Call:
    """One request the fake received (lowercase header names); failed marks injected errors."""
    method: str
    path: str
    headers: dict
    json: Any = None
    query: dict = dataclasses.field(default_factory=dict)
    status: int | None = None
    failed: bool = False


@dataclasses.dataclass
class Delivery:
    """A delivery in the App's webhook log; body is exactly what was (and will be) sent."""
    id: int
    guid: str
    event: str
    action: str | None
    status_code: int
    payload: dict
    headers: dict
    body: bytes
    redelivery: bool = False
    delivered_at: float = dataclasses.field(default_factory=time.time)
    duration: float = 0.05

    def summary(self) -> dict:
        """The delivery as GET /app/hook/deliveries lists it."""
        code = self.status_code
        status = "OK" if 200 <= code < 300 else f"Invalid HTTP Response: {code}" if code else "timed out"
        return {"id": self.id, "guid": self.guid, "delivered_at": _iso(self.delivered_at),
                "redelivery": self.redelivery, "duration": self.duration, "status": status,
                "status_code": self.status_code, "event": self.event, "action": self.action,
                "installation_id": (self.payload.get("installation") or {}).get("id"),
                "repository_id": (self.payload.get("repository") or {}).get("id"),
                "throttled_at": None}


CALL = web.RequestKey("call", Call)


class _Answer(Exception):
    """An error answer in GitHub's shape, raised from a handler."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.body = status, {"message": message, "documentation_url": DOCS, **extra}


def _invalid_enum(field: str, value: Any, allowed: tuple[str, ...]) -> _Answer:
    """GitHub's schema error for a missing or out-of-list enum field (a 422)."""
    if value is None:
        return _Answer(422, f'Invalid request.\n\n"{field}" wasn\'t supplied.')
    return _Answer(422, f"Invalid request.\n\nFor 'properties/{field}', {json.dumps(value)} is not "
                        f"one of {json.dumps(list(allowed))}.")


class FakeGitHub:
    """GitHub's REST API for the calls SPEED makes; start() serves it, url is its base URL."""

    def __init__(self, token: str | None = None, app_id: int | None = None,
                 app_public_key_pem: bytes | None = None):
        self.token, self.app_id, self.app_public_key_pem = token, app_id, app_public_key_pem
        self.url = ""
        self.calls: list[Call] = []
        self.statuses: dict[tuple[str, str], list[dict]] = {}
        self.deployments: list[dict] = []
        self._deployment_repo: dict[int, str] = {}
        self.deployment_statuses: dict[int, list[dict]] = {}
        self.installations: dict[int, set[str]] = {}
        self.installation_tokens: dict[str, int] = {}
        self.token_expiry: dict[str, float] = {}
        self.token_lifetime: float = 3600
        self.deliveries: list[Delivery] = []
        self.redelivery_requests: list[int] = []
        self.on_redeliver: Callable[[Delivery], Awaitable[Any]] | None = None
        self.delay: float = 0
        self._lost: list[tuple[str, str]] = []  # (method, path suffix) of answers to lose
        self._failures: list[tuple[int, dict, dict]] = []
        self._ids = itertools.count(1000)
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.app = web.Application(middlewares=[self._middleware])
        self.app.add_routes([
            web.post("/repos/{owner}/{repo}/statuses/{sha}", self._create_status),
            web.get("/repos/{owner}/{repo}/commits/{sha}/statuses", self._list_statuses),
            web.post("/repos/{owner}/{repo}/deployments", self._create_deployment),
            web.get("/repos/{owner}/{repo}/deployments", self._list_deployments),
            web.post(r"/repos/{owner}/{repo}/deployments/{id:\d+}/statuses",
                     self._create_deployment_status),
            web.get(r"/repos/{owner}/{repo}/deployments/{id:\d+}/statuses",
                    self._list_deployment_statuses),
            web.get("/repos/{owner}/{repo}/installation", self._repo_installation),
            web.post(r"/app/installations/{id:\d+}/access_tokens", self._access_token),
            web.get("/app/hook/deliveries", self._list_deliveries),
            web.get(r"/app/hook/deliveries/{id:\d+}", self._get_delivery),
            web.post(r"/app/hook/deliveries/{id:\d+}/attempts", self._redeliver),
        ])
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> "FakeGitHub":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        """Serve on 127.0.0.1 on a free port and set url."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        """Release delayed answers, cancel redelivery hooks, stop serving; re-raise a hook's error."""
        self._closing.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]

    # Test controls.

    def add_installation(self, installation_id: int, repos: list[str]) -> None:
        """Install the App on repos ("owner/name"); its tokens reach only those."""
        self.installations.setdefault(installation_id, set()).update(r.lower() for r in repos)

    def add_delivery(self, id: int, guid: str, event: str, action: str | None, status_code: int,
                     payload: dict, headers: dict, redelivery: bool = False,
                     body: bytes | None = None) -> Delivery:
        """Log a delivery; body defaults to encode(payload), which headers should sign."""
        delivery = Delivery(id, guid, event, action, status_code, payload, dict(headers),
                            encode(payload) if body is None else body, redelivery)
        self.deliveries.append(delivery)
        return delivery

    def fail_next(self, n: int, status: int = 500, headers: dict | None = None,
                  body: dict | None = None) -> None:
        """Answer the next n calls, to any endpoint, with this error instead."""
        if body is None:
            message = "Server Error" if status >= 500 else http.HTTPStatus(status).phrase
            body = {"message": message, "documentation_url": DOCS}
        self._failures.extend([(status, dict(headers or {}), body)] * n)

    def lose_answer(self, method: str, path_suffix: str) -> None:
        """Carry out the next such call, but answer it only once SPEED has given up on it (its
        request timeout): GitHub applied it, SPEED cannot know."""
        self._lost.append((method, path_suffix))

    def recover(self) -> None:
        """Drop the errors fail_next queued: GitHub answers normally again."""
        self._failures.clear()

    def statuses_for(self, full_name: str, sha: str) -> list[dict]:
        """The commit status bodies posted for sha, in arrival order."""
        return list(self.statuses.get((full_name, sha), []))

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 30) -> None:
        """Wait until predicate() is true, rechecking after every call; AssertionError on timeout."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(predicate)
        except TimeoutError:
            calls = [(c.method, c.path, c.status) for c in self.calls]
            raise AssertionError(f"fake GitHub: not met within {timeout} s; calls: {calls}") from None

    async def wait_for_statuses(self, full_name: str, sha: str, count: int,
                                timeout: float = 30) -> list[dict]:
        """Wait until at least count statuses arrived for sha; return them all."""
        await self.wait_until(lambda: len(self.statuses.get((full_name, sha), [])) >= count, timeout)
        return self.statuses_for(full_name, sha)

    async def settle(self) -> None:
        """Wait for the redelivery hooks started so far; raises what they raised."""
        while self._tasks:
            tasks, self._tasks = self._tasks, []
            await asyncio.gather(*tasks)

    async def deliver(self, delivery: Delivery, url: str) -> int:
        """POST the delivery's body and stored headers to url, as GitHub would; return the status."""
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=delivery.body, headers=delivery.headers) as response:
                await response.read()
                return response.status

    # Plumbing.

    def _headers(self) -> dict:
        """Headers GitHub puts on every API answer."""
        used = len(self.calls)
        return {"X-GitHub-Media-Type": "github.v3; format=json",
                "X-GitHub-Api-Version-Selected": "2022-11-28",
                "X-GitHub-Request-Id": uuid.uuid4().hex[:20].upper(), "X-RateLimit-Limit": "5000",
                "X-RateLimit-Remaining": str(max(0, 5000 - used)), "X-RateLimit-Used": str(used),
                "X-RateLimit-Reset": str(int(time.time()) + 3600), "X-RateLimit-Resource": "core"}

    def _answer(self, status: int, body: Any, headers: dict | None = None) -> web.Response:
        """A JSON answer with GitHub's headers (headers given here win)."""
        merged = CIMultiDict(self._headers())
        merged.update(headers or {})
        return web.json_response(body, status=status, headers=merged)

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        call = Call(request.method, request.path, headers, query=dict(request.query))
        self.calls.append(call)
        try:
            call.json = json.loads(raw) if raw else None
        except ValueError:
            call.json = raw.decode(errors="replace")
        request[CALL] = call
        if self.delay:
            await self._hold(self.delay)
        if self._failures:
            status, headers, body = self._failures.pop(0)
            call.failed = True
            response = self._answer(status, body, headers)
        else:
            try:
                if raw and not isinstance(call.json, dict):
                    raise _Answer(400, "Problems parsing JSON")
                response = await handler(request)
            except _Answer as e:
                response = self._answer(e.status, e.body)
            except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
                response = self._answer(404, {"message": "Not Found", "documentation_url": DOCS})
        lost = next(((m, p) for m, p in self._lost
                     if m == request.method and request.path.endswith(p)), None)
        if lost:
            self._lost.remove(lost)
            await self._hold(LOST_ANSWER_SECONDS)
        call.status = response.status
        async with self._changed:
            self._changed.notify_all()
        return response

    async def _hold(self, seconds: float) -> None:
        """Hold an answer back this long, or until the stand-in closes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def _credential(self, request: web.Request) -> tuple[str, str]:
        """The (lowercased scheme, credential) of the Authorization header."""
        scheme, _, credential = request.headers.get("Authorization", "").strip().partition(" ")
        return scheme.lower(), credential.strip()

    def _repo_auth(self, request: web.Request) -> None:
        """Admit the personal token, or a live installation token installed on this repository."""
        scheme, credential = self._credential(request)
        if not scheme:
            raise _Answer(401, "Requires authentication")
        if scheme in ("token", "bearer") and credential:
            if self.token is not None and hmac.compare_digest(credential, self.token):
                return
            installation = self.installation_tokens.get(credential)
            if installation is not None and time.time() < self.token_expiry[credential]:
                if self._full_name(request).lower() not in self.installations.get(installation, set()):
                    raise _Answer(404, "Not Found")
                return
        raise _Answer(401, "Bad credentials")

    def _app_auth(self, request: web.Request) -> None:
        """Admit a live RS256 JWT of this App, as GitHub checks it."""
        scheme, credential = self._credential(request)
        if scheme != "bearer" or not credential or self.app_public_key_pem is None:
            raise _Answer(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(credential, self.app_public_key_pem, algorithms=["RS256"],
                                options={"require": ["exp", "iat", "iss"]})
        except jwt.ExpiredSignatureError:
            raise _Answer(401, "'Expiration time' claim ('exp') must be a numeric value representing "
                               "the future time at which the assertion expires") from None
        except jwt.PyJWTError:
            raise _Answer(401, "A JSON web token could not be decoded") from None
        if claims["exp"] > time.time() + JWT_MAX_LIFETIME:
            raise _Answer(401, "'Expiration time' claim ('exp') is too far in the future")
        if str(claims["iss"]) != str(self.app_id):
            raise _Answer(401, "'Issuer' claim ('iss') does not name this GitHub App")

    @staticmethod
    def _full_name(request: web.Request) -> str:
        return f"{request.match_info['owner']}/{request.match_info['repo']}"

    def _api(self, path: str) -> str:
        return f"{self.url}{path}"

    # Endpoints.

    async def _create_status(self, request: web.Request) -> web.Response:
        self._repo_auth(request)
        body = request[CALL].json or {}
        if body.get("state") not in STATUS_STATES:
            raise _invalid_enum("state", body.get("state"), STATUS_STATES)
        if len(body.get("description") or "") > 140:
            raise _Answer(422, "Validation Failed", errors=[{
                "resource": "Status", "code": "custom", "field": "description",
                "message": "description is too long (maximum is 140 characters)"}])
        full_name, sha = self._full_name(request), request.match_info["sha"]
        self.statuses.setdefault((full_name, sha), []).append(body)
        sid, now = next(self._ids), _iso(time.time())
        return self._answer(201, {
            "url": self._api(f"/repos/{full_name}/statuses/{sha}"), "id": sid,
            "node_id": f"SC_{sid}", "state": body["state"], "description": body.get("description"),
            "target_url": body.get("target_url"), "context": body.get("context") or "default",
            "created_at": now, "updated_at": now, "creator": BOT})

    async def _list_statuses(self, request: web.Request) -> web.Response:
        """GitHub's list of a commit's statuses: newest first, page `page` (from 1) of per_page."""
        self._repo_auth(request)
        posted = self.statuses.get((self._full_name(request), request.match_info["sha"]), [])
        per_page = min(int(request.query.get("per_page", 30)), 100)
        first = (max(int(request.query.get("page", 1)), 1) - 1) * per_page
        return self._answer(200, [
            {"state": body["state"], "description": body.get("description"),
             "target_url": body.get("target_url"), "context": body.get("context") or "default"}
            for body in reversed(posted)][first:first + per_page])

    async def _create_deployment(self, request: web.Request) -> web.Response:
        self._repo_auth(request)
        body = request[CALL].json or {}
        ref = body.get("ref")
        if not ref:
            raise _Answer(422, 'Invalid request.\n\n"ref" wasn\'t supplied.')
        full_name, did, now = self._full_name(request), next(self._ids), _iso(time.time())
        is_sha = len(ref) == 40 and all(c in string.hexdigits for c in ref)
        environment = body.get("environment") or "production"
        deployment = {
            "url": self._api(f"/repos/{full_name}/deployments/{did}"), "id": did,
            "node_id": f"DE_{did}", "sha": ref if is_sha else fake_sha(f"{full_name}:{ref}"),
            "ref": ref, "task": body.get("task") or "deploy", "payload": body.get("payload", {}),
            "original_environment": environment, "environment": environment,
            "description": body.get("description"), "creator": BOT, "created_at": now, "updated_at": now,
            "statuses_url": self._api(f"/repos/{full_name}/deployments/{did}/statuses"),
            "repository_url": self._api(f"/repos/{full_name}"),
            "transient_environment": bool(body.get("transient_environment", False)),
            "production_environment": bool(body.get("production_environment",
                                                    environment == "production"))}
        self.deployments.append(deployment)
        self._deployment_repo[did] = full_name.lower()
        return self._answer(201, deployment)

    async def _list_deployments(self, request: web.Request) -> web.Response:
        """GitHub's list of a repository's deployments, newest first, filtered by sha and
        environment; page `page` (from 1) of per_page."""
        self._repo_auth(request)
        full_name = self._full_name(request).lower()
        wanted = {k: request.query[k] for k in ("sha", "environment") if k in request.query}
        found = [d for d in reversed(self.deployments)
                 if self._deployment_repo[d["id"]] == full_name
                 and all(d[k] == v for k, v in wanted.items())]
        per_page = min(int(request.query.get("per_page", 30)), 100)
        first = (max(int(request.query.get("page", 1)), 1) - 1) * per_page
        return self._answer(200, found[first:first + per_page])

    async def _create_deployment_status(self, request: web.Request) -> web.Response:
        self._repo_auth(request)
        full_name, did = self._full_name(request), int(request.match_info["id"])
        if self._deployment_repo.get(did) != full_name.lower():
            raise _Answer(404, "Not Found")
        deployment = next(d for d in self.deployments if d["id"] == did)
        body = request[CALL].json or {}
        if body.get("state") not in DEPLOYMENT_STATES:
            raise _invalid_enum("state", body.get("state"), DEPLOYMENT_STATES)
        self.deployment_statuses.setdefault(did, []).append(body)
        sid, now = next(self._ids), _iso(time.time())
        log_url = body.get("log_url") or body.get("target_url") or ""
        return self._answer(201, {
            "url": self._api(f"/repos/{full_name}/deployments/{did}/statuses/{sid}"), "id": sid,
            "node_id": f"DES_{sid}", "state": body["state"],
            "description": body.get("description") or "",
            "environment": body.get("environment") or deployment["environment"],
            "target_url": log_url, "log_url": log_url,
            "environment_url": body.get("environment_url") or "",
            "created_at": now, "updated_at": now, "creator": BOT,
            "deployment_url": deployment["url"], "repository_url": deployment["repository_url"]})

    async def _list_deployment_statuses(self, request: web.Request) -> web.Response:
        """GitHub's list of a deployment's statuses: newest first, a page of at most per_page."""
        self._repo_auth(request)
        full_name, did = self._full_name(request), int(request.match_info["id"])
        if self._deployment_repo.get(did) != full_name.lower():
            raise _Answer(404, "Not Found")
        per_page = min(int(request.query.get("per_page", 30)), 100)
        return self._answer(200, [
            {"state": body["state"], "description": body.get("description") or "",
             "log_url": body.get("log_url") or "", "target_url": body.get("log_url") or "",
             "environment_url": body.get("environment_url") or ""}
            for body in reversed(self.deployment_statuses.get(did, []))][:per_page])

    async def _repo_installation(self, request: web.Request) -> web.Response:
        self._app_auth(request)
        full_name = self._full_name(request).lower()
        installation = next((i for i, repos in self.installations.items() if full_name in repos), None)
        if installation is None:
            raise _Answer(404, "Not Found")
        owner = request.match_info["owner"]
        settings = f"https://github.com/organizations/{owner}/settings/installations/{installation}"
        return self._answer(200, {
            "id": installation, "app_id": self.app_id, "target_type": "Organization",
            "account": {"login": owner, "id": 1, "type": "Organization"},
            "repository_selection": "selected",
            "access_tokens_url": self._api(f"/app/installations/{installation}/access_tokens"),
            "repositories_url": self._api("/installation/repositories"),
            "html_url": settings,
            "permissions": PERMISSIONS, "events": ["push", "pull_request"]})

    async def _access_token(self, request: web.Request) -> web.Response:
        self._app_auth(request)
        installation = int(request.match_info["id"])
        if installation not in self.installations:
            raise _Answer(404, "Not Found")
        alphabet = string.ascii_letters + string.digits
        token = "ghs_" + "".join(secrets.choice(alphabet) for _ in range(36))
        expiry = time.time() + self.token_lifetime
        self.installation_tokens[token], self.token_expiry[token] = installation, expiry
        return self._answer(201, {
            "token": token, "expires_at": _iso(expiry), "repository_selection": "selected",
            "permissions": PERMISSIONS})

    async def _list_deliveries(self, request: web.Request) -> web.Response:
        self._app_auth(request)
        try:
            per_page = min(100, max(1, int(request.query.get("per_page", 30))))
        except ValueError:
            raise _Answer(422, "Invalid request.\n\nFor 'per_page', not an integer.") from None
        newest = sorted(self.deliveries, key=lambda d: (d.delivered_at, d.id), reverse=True)
        return self._answer(200, [d.summary() for d in newest[:per_page]])

    def _delivery(self, request: web.Request) -> Delivery:
        """The delivery named in the path, or GitHub's 404."""
        did = int(request.match_info["id"])
        delivery = next((d for d in self.deliveries if d.id == did), None)
        if delivery is None:
            raise _Answer(404, "Not Found")
        return delivery

    async def _get_delivery(self, request: web.Request) -> web.Response:
        self._app_auth(request)
        delivery = self._delivery(request)
        request_ = {"headers": delivery.headers, "payload": delivery.payload}
        return self._answer(200, {**delivery.summary(), "url": "", "request": request_,
                                  "response": {"headers": {}, "payload": ""}})

    async def _redeliver(self, request: web.Request) -> web.Response:
        self._app_auth(request)
        delivery = self._delivery(request)
        self.redelivery_requests.append(delivery.id)
        if self.on_redeliver is not None:
            self._tasks.append(asyncio.create_task(self._run_redelivery(delivery)))
        return self._answer(202, {})

    async def _run_redelivery(self, delivery: Delivery) -> None:
        """Await on_redeliver; an int it returns is logged as a redelivery with that status code."""
        result = await self.on_redeliver(delivery)
        if isinstance(result, int):
            new_id = max(d.id for d in self.deliveries) + 1
            self.add_delivery(new_id, delivery.guid, delivery.event, delivery.action, result,
                              delivery.payload, delivery.headers, True, delivery.body)
        async with self._changed:
            self._changed.notify_all()
