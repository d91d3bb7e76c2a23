"""The fake GitHub answers gidgethub (SPEED's client) as GitHub does; built deliveries verify."""
import asyncio
import datetime
import http
import time

import aiohttp
import gidgethub
import jwt
import pytest
from aiohttp import web
from gidgethub import apps, sansio
from gidgethub.aiohttp import GitHubAPI
from multidict import CIMultiDict

from tests.fake_github import FakeGitHub
from tests.webhooks import (delivery_headers, encode, make_app_key, ping_payload, pull_request_payload,
                            push_payload, sign)

TOKEN = "ghp_personal_test_token_0123456789abcdef"
APP_ID = 4242
INSTALLATION = 77
REPO, SHA = "acme/app", "a" * 40
STATUS = {"state": "pending", "target_url": "http://speed.test/info/1", "description": "Deploying",
          "context": "speed/deploy"}
SECRET = "webhook-secret"
CLONE = "http://git.test/acme/app.git"


@pytest.fixture
async def fake():
    """A running fake with a personal token and an App installed on acme/app."""
    async with FakeGitHub(token=TOKEN, app_id=APP_ID,
                          app_public_key_pem=make_app_key()[1]) as server:
        server.add_installation(INSTALLATION, repos=[REPO])
        yield server


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def gh(fake, session):
    """A gidgethub client of the fake, configured as SPEED configures it."""
    return lambda token=None: GitHubAPI(session, "speed-test", oauth_token=token, base_url=fake.url)


async def installation_token(gh) -> dict:
    """An installation token fetched the way gidgethub.apps does it."""
    return await apps.get_installation_access_token(
        gh(), installation_id=str(INSTALLATION), app_id=str(APP_ID), private_key=make_app_key()[0])


def app_jwt(private_pem: bytes | None = None, app_id: int = APP_ID) -> str:
    """The App JWT gidgethub builds (app_id must be a string for PyJWT)."""
    return apps.get_jwt(app_id=str(app_id), private_key=private_pem or make_app_key()[0])


async def test_status_with_personal_token_is_answered_and_recorded(fake, gh):
    """A commit status posted with the personal token gets GitHub's 201 shape and is recorded."""
    answer = await gh(TOKEN).post(f"/repos/{REPO}/statuses/{SHA}", data=STATUS)
    assert answer["state"] == "pending" and answer["context"] == "speed/deploy"
    assert answer["description"] == "Deploying" and answer["target_url"] == STATUS["target_url"]
    assert answer["url"] == f"{fake.url}/repos/{REPO}/statuses/{SHA}" and isinstance(answer["id"], int)
    call = fake.calls[-1]
    assert (call.method, call.path, call.json, call.status, call.failed) == (
        "POST", f"/repos/{REPO}/statuses/{SHA}", STATUS, 201, False)
    assert call.headers["authorization"] == f"token {TOKEN}"
    assert call.headers["user-agent"] == "speed-test"
    await gh(TOKEN).post(f"/repos/{REPO}/statuses/{SHA}", data={**STATUS, "state": "success"})
    assert [s["state"] for s in await fake.wait_for_statuses(REPO, SHA, 2)] == ["pending", "success"]
    assert fake.statuses_for(REPO, SHA) == fake.statuses[(REPO, SHA)]


async def test_bearer_scheme_is_accepted(fake, session):
    """`Authorization: Bearer <token>` works like `token <token>`."""
    response = await session.post(f"{fake.url}/repos/{REPO}/statuses/{SHA}", json=STATUS,
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 201 and response.content_type == "application/json"
    assert response.headers["X-RateLimit-Limit"] == "5000"


async def test_wait_for_statuses_wakes_on_arrival(fake, gh):
    """A waiter started before the status arrives is woken by it, and times out when none comes."""
    waiter = asyncio.create_task(fake.wait_for_statuses(REPO, SHA, 1))
    await gh(TOKEN).post(f"/repos/{REPO}/statuses/{SHA}", data=STATUS)
    assert (await waiter)[0]["state"] == "pending"
    with pytest.raises(AssertionError, match="not met"):
        await fake.wait_for_statuses(REPO, SHA, 2, timeout=0.1)


@pytest.mark.parametrize("token", ["wrong", None])
async def test_bad_or_missing_token_is_a_401_bad_request(fake, gh, token):
    """gidgethub raises BadRequest (status 401) for GitHub's 401."""
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh(token).post(f"/repos/{REPO}/statuses/{SHA}", data=STATUS)
    assert info.value.status_code == http.HTTPStatus.UNAUTHORIZED
    assert str(info.value) == ("Bad credentials" if token else "Requires authentication")
    assert fake.calls[-1].status == 401 and fake.statuses_for(REPO, SHA) == []


async def test_invalid_status_state_is_a_422(fake, gh):
    """An unknown state, or a description over 140 characters, is refused like GitHub does."""
    with pytest.raises(gidgethub.InvalidField) as info:
        await gh(TOKEN).post(f"/repos/{REPO}/statuses/{SHA}", data={**STATUS, "state": "done"})
    assert info.value.status_code == 422 and "is not one of" in str(info.value)
    with pytest.raises(gidgethub.ValidationError, match="too long"):
        await gh(TOKEN).post(f"/repos/{REPO}/statuses/{SHA}",
                             data={**STATUS, "description": "x" * 141})
    assert fake.statuses_for(REPO, SHA) == []


async def test_app_flow_issues_an_installation_token_that_posts_statuses(fake, gh):
    """JWT -> repo installation -> installation token -> commit status, as gidgethub.apps does it."""
    installation = await gh().getitem(f"/repos/{REPO}/installation", jwt=app_jwt())
    assert installation["id"] == INSTALLATION and installation["app_id"] == APP_ID
    answer = await apps.get_installation_access_token(
        gh(), installation_id=str(INSTALLATION), app_id=str(APP_ID),
        private_key=make_app_key()[0].decode())
    token = answer["token"]
    assert token.startswith("ghs_") and fake.installation_tokens == {token: INSTALLATION}
    expires = datetime.datetime.strptime(answer["expires_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert abs(expires - (time.time() + 3600)) < 5
    assert fake.calls[-1].headers["authorization"].lower().startswith("bearer ")
    await gh(token).post(f"/repos/{REPO}/statuses/{SHA}", data=STATUS)
    assert fake.statuses_for(REPO, SHA) == [STATUS]
    with pytest.raises(gidgethub.BadRequest) as info:  # not installed there: GitHub hides it
        await gh(token).post(f"/repos/other/repo/statuses/{SHA}", data=STATUS)
    assert info.value.status_code == 404


async def test_expired_installation_token_is_refused(fake, gh):
    """A token past its expires_at is Bad credentials."""
    fake.token_lifetime = 0
    token = (await installation_token(gh))["token"]
    with pytest.raises(gidgethub.BadRequest, match="Bad credentials"):
        await gh(token).post(f"/repos/{REPO}/statuses/{SHA}", data=STATUS)


@pytest.mark.parametrize("case", ["other key", "other app", "too long", "expired", "personal token"])
async def test_bad_app_jwt_is_refused(fake, gh, case):
    """JWTs GitHub refuses: other key, other iss, exp over 10 minutes ahead, expired; or no JWT."""
    now = int(time.time())
    token = {"other key": lambda: app_jwt(make_app_key("other")[0]),
             "other app": lambda: app_jwt(app_id=APP_ID + 1),
             "too long": lambda: jwt.encode({"iat": now, "exp": now + 3600, "iss": str(APP_ID)},
                                            make_app_key()[0], algorithm="RS256"),
             "expired": lambda: jwt.encode({"iat": now - 700, "exp": now - 100, "iss": str(APP_ID)},
                                           make_app_key()[0], algorithm="RS256"),
             "personal token": lambda: TOKEN}[case]()
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh().post(f"/app/installations/{INSTALLATION}/access_tokens", data=b"", jwt=token)
    assert info.value.status_code == 401 and fake.installation_tokens == {}


async def test_body_that_is_not_a_json_object_is_a_400(fake, session):
    """GitHub's 400 "Problems parsing JSON"; the raw body is still recorded."""
    response = await session.post(f"{fake.url}/repos/{REPO}/statuses/{SHA}", data=b"{nope",
                                  headers={"Authorization": f"token {TOKEN}"})
    assert response.status == 400 and (await response.json())["message"] == "Problems parsing JSON"
    assert fake.calls[-1].json == "{nope"


async def test_unknown_installation_and_repo_are_404(fake, gh):
    """GitHub's 404 for an installation or repository the App does not have."""
    for call in (gh().post("/app/installations/999/access_tokens", data=b"", jwt=app_jwt()),
                 gh().getitem("/repos/acme/elsewhere/installation", jwt=app_jwt()),
                 gh(TOKEN).getitem("/no/such/endpoint")):
        with pytest.raises(gidgethub.BadRequest, match="Not Found") as info:
            await call
        assert info.value.status_code == 404


async def test_injected_500_raises_github_broken_then_recovers(fake, gh):
    """fail_next(1) -> GitHubBroken once, recorded as failed; the next call succeeds."""
    fake.fail_next(1)
    with pytest.raises(gidgethub.GitHubBroken) as info:
        await gh(TOKEN).post(f"/repos/{REPO}/statuses/{SHA}", data=STATUS)
    assert info.value.status_code == 500 and str(info.value) == "Server Error"
    await gh(TOKEN).post(f"/repos/{REPO}/statuses/{SHA}", data=STATUS)
    assert [(c.status, c.failed) for c in fake.calls] == [(500, True), (201, False)]
    assert fake.statuses_for(REPO, SHA) == [STATUS]


async def test_secondary_rate_limit_403_is_bad_request_with_retry_after(fake, gh):
    """A 403 with retry-after but requests remaining is a plain BadRequest carrying the headers."""
    fake.fail_next(1, 403, headers={"retry-after": "1"},
                   body={"message": "You have exceeded a secondary rate limit"})
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh(TOKEN).post(f"/repos/{REPO}/statuses/{SHA}", data=STATUS)
    assert type(info.value) is gidgethub.BadRequest and info.value.status_code == 403
    assert info.value.headers["retry-after"] == "1" and "secondary rate limit" in str(info.value)


async def test_primary_rate_limit_403_is_rate_limit_exceeded(fake, gh):
    """A 403 with x-ratelimit-remaining 0 is RateLimitExceeded, whose rate_limit tells the reset."""
    reset = int(time.time()) + 60
    fake.fail_next(1, 403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
                   body={"message": "API rate limit exceeded"})
    with pytest.raises(gidgethub.RateLimitExceeded) as info:
        await gh(TOKEN).post(f"/repos/{REPO}/statuses/{SHA}", data=STATUS)
    assert info.value.rate_limit.reset_datetime.timestamp() == reset


async def test_delay_makes_a_client_time_out(fake):
    """With delay set, a client with a short timeout gives up (close() releases the held answer)."""
    fake.delay = 30
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as session:
        with pytest.raises(asyncio.TimeoutError):
            await GitHubAPI(session, "speed-test", oauth_token=TOKEN, base_url=fake.url).post(
                f"/repos/{REPO}/statuses/{SHA}", data=STATUS)
    assert fake.calls[-1].status is None


async def test_deployments_and_their_statuses(fake, gh):
    """A deployment is created from a ref; its statuses are validated and recorded per deployment."""
    deployment = await gh(TOKEN).post(f"/repos/{REPO}/deployments",
                                      data={"ref": SHA, "environment": "staging", "auto_merge": False})
    assert (deployment["ref"], deployment["sha"], deployment["environment"]) == (SHA, SHA, "staging")
    assert fake.deployments == [deployment]
    body = {"state": "in_progress", "log_url": "http://speed.test/results/1"}
    status = await gh(TOKEN).post(f"/repos/{REPO}/deployments/{deployment['id']}/statuses", data=body)
    assert status["state"] == "in_progress" and fake.deployment_statuses[deployment["id"]] == [body]
    with pytest.raises(gidgethub.InvalidField):
        await gh(TOKEN).post(f"/repos/{REPO}/deployments/{deployment['id']}/statuses",
                             data={"state": "done"})
    with pytest.raises(gidgethub.BadRequest, match="Not Found"):
        await gh(TOKEN).post(f"/repos/{REPO}/deployments/1/statuses", data=body)
    with pytest.raises(gidgethub.InvalidField, match="ref"):
        await gh(TOKEN).post(f"/repos/{REPO}/deployments", data={"environment": "staging"})


async def test_delivery_log_and_redelivery_reach_the_webhook(fake, gh, aiohttp_server):
    """Deliveries are listed newest first; a redelivery POSTs the stored, still valid delivery."""
    received = asyncio.Queue()

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        await received.put(sansio.Event.from_http(request.headers, body, secret=SECRET))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/webhook", webhook)
    hook = await aiohttp_server(app)
    for n in (1, 2, 3):
        payload = push_payload(REPO, CLONE, after=f"{n}" * 40, installation_id=INSTALLATION)
        fake.add_delivery(n, f"guid-{n}", "push", None, 502 if n == 2 else 200, payload,
                          delivery_headers("push", encode(payload), SECRET, guid=f"guid-{n}"))
    listed = await gh().getitem("/app/hook/deliveries?per_page=2", jwt=app_jwt())
    assert [d["id"] for d in listed] == [3, 2]
    assert listed[1] | {"delivered_at": None, "duration": None, "repository_id": None} == {
        "id": 2, "guid": "guid-2", "delivered_at": None, "redelivery": False, "duration": None,
        "status": "Invalid HTTP Response: 502", "status_code": 502, "event": "push", "action": None,
        "installation_id": INSTALLATION, "repository_id": None, "throttled_at": None}
    fake.on_redeliver = lambda delivery: fake.deliver(delivery, str(hook.make_url("/webhook")))
    assert await gh().post("/app/hook/deliveries/2/attempts", data=b"", jwt=app_jwt()) == {}
    event = await asyncio.wait_for(received.get(), 10)
    assert (event.event, event.delivery_id, event.data["after"]) == ("push", "guid-2", "2" * 40)
    await fake.settle()
    assert fake.redelivery_requests == [2]
    newest = (await gh().getitem("/app/hook/deliveries", jwt=app_jwt()))[0]
    assert (newest["guid"], newest["redelivery"], newest["status_code"]) == ("guid-2", True, 204)
    with pytest.raises(gidgethub.BadRequest, match="Not Found"):
        await gh().post("/app/hook/deliveries/99/attempts", data=b"", jwt=app_jwt())


def test_sign_matches_githubs_test_vector():
    """GitHub's documented example of X-Hub-Signature-256."""
    assert sign(b"Hello, World!", "It's a Secret to Everybody") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


@pytest.mark.parametrize("event,payload", [
    ("push", push_payload(REPO, CLONE, after=SHA, installation_id=INSTALLATION)),
    ("pull_request", pull_request_payload(REPO, CLONE, head_sha=SHA, head_full_name="fork/app")),
    ("ping", ping_payload()),
])
def test_deliveries_parse_with_gidgethub(event, payload):
    """Event.from_http accepts built deliveries, and refuses a wrong secret or a missing signature."""
    body = encode(payload)
    headers = CIMultiDict(delivery_headers(event, body, SECRET, guid="0f6c1a2e-guid"))
    parsed = sansio.Event.from_http(headers, body, secret=SECRET)
    assert (parsed.event, parsed.delivery_id, parsed.data) == (event, "0f6c1a2e-guid", payload)
    assert headers["User-Agent"].startswith("GitHub-Hookshot/")
    with pytest.raises(gidgethub.ValidationFailure):
        sansio.Event.from_http(headers, body, secret="wrong")
    with pytest.raises(gidgethub.ValidationFailure):
        sansio.Event.from_http(CIMultiDict(delivery_headers(event, body, None)), body, secret=SECRET)


def test_payload_shapes():
    """The fields SPEED reads are where GitHub puts them."""
    push = push_payload(REPO, CLONE, after=SHA)
    assert push["repository"]["clone_url"] == CLONE and push["head_commit"]["id"] == SHA
    assert push["repository"]["owner"]["login"] == "acme" and "installation" not in push
    gone = push_payload(REPO, CLONE, deleted=True, installation_id=5)
    assert gone["after"] == "0" * 40 and gone["head_commit"] is None
    assert gone["installation"]["id"] == 5 and gone["deleted"] is True
    same = pull_request_payload(REPO, CLONE, head_sha=SHA)["pull_request"]["head"]
    assert same["repo"]["fork"] is False and same["repo"]["clone_url"] == CLONE and same["sha"] == SHA
    fork = pull_request_payload(REPO, CLONE, head_full_name="eve/app", action="closed")
    assert fork["pull_request"]["head"]["repo"]["fork"] is True
    assert fork["pull_request"]["head"]["repo"]["clone_url"] == "https://github.com/eve/app.git"
    assert fork["pull_request"]["state"] == "closed"
    assert fork["repository"]["full_name"] == REPO == fork["pull_request"]["base"]["repo"]["full_name"]
    assert fork["repository"]["id"] == push["repository"]["id"]
