"""GitHub loop: signed webhooks in, commit statuses and Deployments out, against the stand-in."""
import asyncio
import base64
import datetime
import time
import uuid
from typing import Callable

import pytest
from gidgethub import RateLimitExceeded
from gidgethub.sansio import RateLimit

from bot.keys import reporter_key
from bot.reporter import _retry_after
from tests.conftest import DOCKERFILE, instance_of, results_of, wait_for, wait_finished
from tests.fake_github import FakeGitHub
from tests.webhooks import (delivery_headers, encode, make_app_key, ping_payload,
                            pull_request_payload, push_payload)

SECRET = "webhook-secret-for-tests"
TOKEN = "ghp_" + "t" * 36
PUBLIC_URL = "http://speed.example:8080"
RULES = [{"match": "acme/*", "branches": ["main", "release/*"], "pull_requests": True},
         {"match": "deploy/*", "environment": "production", "context": "speed/production"},
         {"match": "open/*", "pull_requests": True, "forks": True}, {"match": "private/*"}]


@pytest.fixture
async def fake():
    async with FakeGitHub(token=TOKEN) as github:
        yield github


@pytest.fixture
async def app_fake():
    """The stand-in GitHub, knowing a GitHub App (id 4242) by its public key."""
    async with FakeGitHub(app_id=4242, app_public_key_pem=make_app_key()[1]) as github:
        yield github


@pytest.fixture
def app_settings(app_fake) -> dict:
    """SPEED's configuration as that GitHub App."""
    return dict(github__webhook_secret=SECRET, github__app_id="4242",
                github__private_key=make_app_key()[0].decode(), github__api_url=app_fake.url,
                server__public_url=PUBLIC_URL, repos=RULES)


@pytest.fixture
def github_invariants(fake, app_invariants):
    """After a fault test the invariant holds, GitHub's statuses included (tests/invariants.py)."""
    # fake is set up before app_invariants, so it still answers while the check waits.
    app_invariants.github = fake


@pytest.fixture
def github_client(make_client, fake, git_server):
    """SPEED with a webhook secret, a token, and the stand-in GitHub."""

    async def make(**overrides):
        settings = dict(github__webhook_secret=SECRET, github__token=TOKEN,
                        github__api_url=fake.url, github__web_url=git_server.base_url,
                        github__report_retry_for=30, server__public_url=PUBLIC_URL, repos=RULES)
        settings.update(overrides)
        return await make_client(**settings)

    return make


@pytest.fixture
def project(git_server, base_image, request):
    """A repository named owner/<unique>; returns (full_name, clone_url, commit)."""

    def make(owner: str, script: str = "echo deployed\n", branch: str = "main"):
        full_name = f"{owner}/{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:6]}"
        commit = git_server.commit(full_name, {"Dockerfile": DOCKERFILE, "run.sh": script}, branch=branch)
        return full_name, git_server.url(full_name), commit

    return make


async def deliver(client, event: str, payload: dict, secret: str | None = SECRET,
                  guid: str | None = None, headers: dict | None = None):
    body = encode(payload)
    sent = delivery_headers(event, body, secret, guid)
    sent.update(headers or {})
    return await client.post("/webhook", data=body, headers=sent)


async def deployments(client, token: str | None = None) -> list[dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return (await (await client.get("/deployments", headers=headers)).json())["deployments"]


async def test_push_deploys_the_sha_and_reports_pending_pending_success(github_client, project, fake):
    client = await github_client()
    full_name, url, sha = project("acme")
    response = await deliver(client, "push", push_payload(full_name, url, after=sha))
    assert response.status == 202
    deployment_id = (await response.json())["id"]
    info = await wait_finished(client, deployment_id)
    assert (info["status"], info["commit"], info["trigger"]) == ("Succeeded", sha, "push")
    statuses = await fake.wait_for_statuses(full_name, sha, 3)
    assert [s["state"] for s in statuses] == ["pending", "pending", "success"]
    assert [s["description"] for s in statuses[:2]] == ["Queued", "Running"]
    assert statuses[2]["description"].startswith("Succeeded after ")
    assert {s["context"] for s in statuses} == {"speed/deploy"}
    assert {s["target_url"] for s in statuses} == {f"{PUBLIC_URL}/deployments/{deployment_id}"}
    assert all(call.headers["authorization"] == f"token {TOKEN}" for call in fake.calls)
    # The target_url serves a human-readable page of the deployment.
    page = await client.get(f"/deployments/{deployment_id}")
    assert page.status == 200 and page.content_type == "text/html"
    assert "Succeeded" in await page.text() and sha in await page.text()


async def test_failed_deployment_reports_failure_with_the_reason(github_client, project, fake):
    client = await github_client()
    full_name, url, sha = project("acme", "exit 3\n")
    response = await deliver(client, "push", push_payload(full_name, url, after=sha))
    await wait_finished(client, (await response.json())["id"])
    statuses = await fake.wait_for_statuses(full_name, sha, 3)
    assert statuses[-1]["state"] == "failure"
    assert statuses[-1]["description"].startswith("Failed: exit code 3 after ")
    assert len(statuses[-1]["description"]) <= 140


async def test_push_deploys_exactly_the_pushed_commit(github_client, project, git_server):
    client = await github_client()
    full_name, url, first = project("acme", 'echo "commit=$SPEED_COMMIT"\n')
    git_server.commit(full_name, {"later.txt": "the branch moved on"})
    response = await deliver(client, "push", push_payload(full_name, url, after=first))
    deployment_id = (await response.json())["id"]
    info = await wait_finished(client, deployment_id)
    assert (info["status"], info["commit"]) == ("Succeeded", first)
    assert f"commit={first}\n" in await results_of(client, deployment_id)


@pytest.mark.parametrize("secret, headers, status", [
    (None, {}, 401),  # unsigned
    ("not-the-secret", {}, 401),  # forged
    (SECRET, {"X-Hub-Signature-256": None}, 401),  # SHA-1 only
    (SECRET, {"X-GitHub-Event": None}, 400),
    (SECRET, {"Content-Type": "text/plain"}, 400),
])
async def test_bad_deliveries_are_refused_and_record_nothing(github_client, project, secret,
                                                             headers, status):
    """Attack: unsigned, forged (wrong secret), SHA-1-only deliveries get 401; no event header or
    a non-JSON Content-Type 400. Asserts: that status, a JSON error, no deployment stored."""
    client = await github_client()
    full_name, url, sha = project("acme")
    body = encode(push_payload(full_name, url, after=sha))
    sent = {k: v for k, v in {**delivery_headers("push", body, secret), **headers}.items()
            if v is not None}
    response = await client.post("/webhook", data=body, headers=sent)
    assert response.status == status
    assert "error" in await response.json()
    assert await deployments(client) == []


async def test_signature_of_another_body_is_refused(github_client, project):
    """Attack: a valid signature of another body on a push. Asserts: 401, no deployment stored."""
    client = await github_client()
    full_name, url, sha = project("acme")
    signed = delivery_headers("push", b'{"zen": "other"}', SECRET)
    response = await client.post("/webhook", data=encode(push_payload(full_name, url, after=sha)),
                                 headers=signed)
    assert response.status == 401
    assert await deployments(client) == []


async def test_malformed_json_is_a_400(github_client):
    """Attack: a correctly signed delivery whose body is not JSON. Asserts: a 400."""
    client = await github_client()
    response = await client.post("/webhook", data=b"{not json", headers=delivery_headers(
        "push", b"{not json", SECRET))
    assert response.status == 400


async def test_ping_answers(github_client):
    client = await github_client()
    response = await deliver(client, "ping", ping_payload())
    assert (response.status, (await response.json())["message"]) == (200, "pong")


async def test_without_a_secret_webhooks_are_refused_off_loopback(github_client, project):
    """Attack: an unsigned push to a SPEED on 0.0.0.0 with no webhook secret configured.
    Asserts: 403, no deployment stored."""
    api_token = "a-long-enough-api-token"
    client = await github_client(github__webhook_secret="", server__host="0.0.0.0",
                                 auth__api_tokens=[api_token])
    full_name, url, sha = project("acme")
    response = await deliver(client, "push", push_payload(full_name, url, after=sha), secret=None)
    assert response.status == 403
    assert await deployments(client, api_token) == []  # reads need a token once tokens are set


@pytest.mark.parametrize("kind", ["tag", "deleted", "unconfigured repo", "unconfigured branch",
                                  "issues event"])
async def test_events_that_ask_for_nothing_are_ignored(github_client, project, kind):
    client = await github_client()
    full_name, url, sha = project("acme")
    event, payload = {
        "tag": ("push", push_payload(full_name, url, ref="refs/tags/v1", after=sha)),
        "deleted": ("push", push_payload(full_name, url, after="0" * 40, deleted=True)),
        "unconfigured repo": ("push", push_payload("elsewhere/app", url, after=sha)),
        "unconfigured branch": ("push", push_payload(full_name, url, ref="refs/heads/wip", after=sha)),
        "issues event": ("issues", {"action": "opened", "repository": {"full_name": full_name}}),
    }[kind]
    response = await deliver(client, event, payload)
    assert response.status == 200
    assert (await response.json())["message"].startswith("ignored: ")
    assert await deployments(client) == []


async def test_redelivered_event_creates_nothing_new(github_client, project):
    """Fault: GitHub redelivers a handled delivery id ten times at once. Asserts: all ten 202
    with the first delivery's deployment id; one deployment stored."""
    client = await github_client()
    full_name, url, sha = project("acme")
    payload, guid = push_payload(full_name, url, after=sha), str(uuid.uuid4())
    first = await deliver(client, "push", payload, guid=guid)
    responses = await asyncio.gather(*(deliver(client, "push", payload, guid=guid) for _ in range(10)))
    first_id = (await first.json())["id"]
    assert [r.status for r in responses] == [202] * 10
    assert {(await r.json())["id"] for r in responses} == {first_id}
    assert [d["id"] for d in await deployments(client)] == [first_id]


async def test_ten_concurrent_copies_of_a_new_delivery_make_one_deployment(github_client, project):
    """Fault: ten concurrent copies of one new delivery id. Asserts: every reply names deployment 1,
    and exactly one deployment is stored."""
    client = await github_client()
    full_name, url, sha = project("acme")
    payload, guid = push_payload(full_name, url, after=sha), str(uuid.uuid4())
    responses = await asyncio.gather(*(deliver(client, "push", payload, guid=guid) for _ in range(10)))
    assert {(await r.json())["id"] for r in responses} == {1}
    assert len(await deployments(client)) == 1


async def test_pull_request_deploys_the_head_sha(github_client, project, fake):
    client = await github_client()
    full_name, url, sha = project("acme", branch="feature")
    payload = pull_request_payload(full_name, url, action="synchronize", number=7, head_sha=sha,
                                   head_ref="feature")
    response = await deliver(client, "pull_request", payload)
    assert response.status == 202
    info = await wait_finished(client, (await response.json())["id"])
    assert (info["status"], info["commit"], info["trigger"]) == ("Succeeded", sha, "pull_request")
    assert [s["state"] for s in await fake.wait_for_statuses(full_name, sha, 3)] == [
        "pending", "pending", "success"]


async def test_fork_pull_requests_run_only_where_forks_are_allowed(github_client, project):
    """Attack: a pull request from a stranger's fork. Asserts: under a rule without forks it is 200
    'fork...' with nothing stored; under forks: true it deploys and the fork's code runs."""
    client = await github_client()
    fork_name, fork_url, sha = project("stranger", "echo fork code ran\n", branch="feature")
    refused = await deliver(client, "pull_request", pull_request_payload(
        "acme/app", "https://github.invalid/acme/app.git", head_sha=sha, head_ref="feature",
        head_full_name=fork_name, head_clone_url=fork_url))
    assert refused.status == 200
    assert "fork" in (await refused.json())["message"]
    assert await deployments(client) == []
    allowed = await deliver(client, "pull_request", pull_request_payload(
        "open/app", "https://github.invalid/open/app.git", head_sha=sha, head_ref="feature",
        head_full_name=fork_name, head_clone_url=fork_url))
    assert allowed.status == 202
    deployment_id = (await allowed.json())["id"]
    assert (await wait_finished(client, deployment_id))["status"] == "Succeeded"
    assert "fork code ran" in await results_of(client, deployment_id)


# The fork's run.sh: print its environment, then wait (bounded) until the test has inspected the
# running container and lets it finish.
FORK_SCRIPT = """echo env-begin
env
echo env-end
echo fork-ready
i=0
while [ ! -e /tmp/release ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo fork code ran
"""
# What Docker sets when an image names no PATH.
DOCKER_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SPEED_VARIABLES = {"SPEED_DEPLOYMENT_ID", "SPEED_API_URL", "SPEED_TOKEN", "SPEED_REPO_URL",
                   "SPEED_BRANCH", "SPEED_COMMIT", "SPEED_EVENT", "SPEED_PULL_REQUEST"}


def basic_authorization(token: str) -> str:
    """The Authorization header git sends when SPEED clones with token."""
    return "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()


async def fork_gets_no_credentials(client, git_server, docker_client, base: str,
                                   credentials: Callable[[], list[str]],
                                   installation_id: int | None) -> None:
    """Deliver a same-repository pull request of base, then one from a fork of it; assert the
    first cloned with SPEED's credentials (those credentials() lists) and the fork with none,
    neither in git's requests nor in its container."""
    # Control: a pull request within base clones with SPEED's credential, on every request.
    sha = git_server.commit(base, {"Dockerfile": DOCKERFILE, "run.sh": "echo same-repo ran\n"},
                            branch="feature")
    response = await deliver(client, "pull_request", pull_request_payload(
        base, git_server.url(base), number=1, head_sha=sha, head_ref="feature",
        installation_id=installation_id))
    assert response.status == 202
    info = await wait_finished(client, (await response.json())["id"])
    assert info["status"] == "Succeeded", info
    sent = git_server.headers_sent_to(base)
    assert sent and all(h.get("Authorization") in map(basic_authorization, credentials())
                        for h in sent), sent

    # The fork, of a stranger's: allowed (forks: true), so it is cloned and run.
    fork = base.replace(base.split("/")[0], "stranger", 1)
    fork_url = git_server.url(fork)
    fork_sha = git_server.commit(fork, {"Dockerfile": DOCKERFILE, "run.sh": FORK_SCRIPT},
                                 branch="feature")
    response = await deliver(client, "pull_request", pull_request_payload(
        base, git_server.url(base), number=2, head_sha=fork_sha, head_ref="feature",
        head_full_name=fork, head_clone_url=fork_url, installation_id=installation_id))
    assert response.status == 202
    deployment_id = (await response.json())["id"]

    async def ready():
        return "fork-ready" in await results_of(client, deployment_id)

    await wait_for(ready)
    # The container as it runs: its environment is SPEED_* and what the image itself sets.
    container = docker_client.containers.get(f"speed-{instance_of(client)}-{deployment_id}")
    env = container.attrs["Config"]["Env"]
    image = docker_client.api.inspect_image(container.attrs["Image"])
    image_env = set(image["Config"]["Env"] or [])
    assert {e.partition("=")[0] for e in env if e.startswith("SPEED_")} == SPEED_VARIABLES
    assert {e for e in env if not e.startswith("SPEED_")} <= image_env | {DOCKER_PATH}, env
    assert f"SPEED_REPO_URL={fork_url}" in env
    secrets = [*credentials(), SECRET]
    for secret in secrets:
        for form in (secret, basic_authorization(secret).removeprefix("Basic ")):
            assert not [e for e in env if form in e], form
    container.exec_run(["touch", "/tmp/release"])
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded", results
    assert "fork code ran" in results
    assert not [secret for secret in secrets if secret in results]
    printed = results.partition("env-begin\n")[2].partition("env-end\n")[0].splitlines()
    redacted = [line for line in printed if "[redacted]" in line]
    assert printed and redacted == ["SPEED_TOKEN=[redacted]"], printed
    # Every request git made of the fork went without an Authorization header.
    sent = git_server.headers_sent_to(fork)
    assert sent and not [h for h in sent if "authorization" in map(str.lower, h)], sent


async def test_allowed_fork_is_cloned_without_the_github_token(github_client, git_server, fake,
                                                              docker_client, base_image):
    """Leak: SPEED's GitHub token sent to a fork's server or put in its container (forks: true).
    Asserts: a same-repository pull request of a private repository clones with the token (on every
    git request, and the git server enforces it); a fork's pull request of that repository runs,
    but no git request for the fork carries an Authorization header, and the running container's
    Config.Env holds only SPEED_* and the image's variables, none containing the token."""
    client = await github_client(github__token=git_server.private_token, repos=[
        {"match": "private/*", "pull_requests": True, "forks": True}])
    fake.token = git_server.private_token
    await fork_gets_no_credentials(client, git_server, docker_client,
                                   f"private/fork-base-{uuid.uuid4().hex[:6]}",
                                   lambda: [git_server.private_token], installation_id=None)


async def test_allowed_fork_is_cloned_without_an_installation_token(app_fake, app_settings,
                                                                   make_client, git_server,
                                                                   docker_client, base_image):
    """Leak: a GitHub App's installation token (the payload names the base repository's
    installation) sent to a fork's server or put in its container (forks: true). Asserts: a
    same-repository pull request clones with an installation token the App was issued, on every
    git request; the fork's pull request runs, but no git request for the fork carries an
    Authorization header, and its container's environment holds none of the issued tokens."""
    base = f"open/fork-base-{uuid.uuid4().hex[:6]}"
    app_fake.add_installation(99, [base])
    client = await make_client(**{**app_settings, "github__web_url": git_server.base_url})
    await fork_gets_no_credentials(client, git_server, docker_client, base,
                                   lambda: list(app_fake.installation_tokens), installation_id=99)


async def test_newer_push_cancels_the_older_deployment(github_client, project, fake, git_server):
    client = await github_client()
    full_name, url, old_sha = project("acme", "echo old-started\nsleep 600\n")
    old = await deliver(client, "push", push_payload(full_name, url, after=old_sha))
    old_id = (await old.json())["id"]
    new_sha = git_server.commit(full_name, {"run.sh": "echo new\n"})
    new = await deliver(client, "push", push_payload(full_name, url, before=old_sha, after=new_sha))
    new_id = (await new.json())["id"]
    old_info = await wait_finished(client, old_id)
    assert old_info["status"] == "Cancelled"
    assert old_info["reason"] == f"superseded by deployment {new_id}"
    assert (await wait_finished(client, new_id))["status"] == "Succeeded"
    await client.app[reporter_key].idle()
    assert fake.statuses_for(full_name, old_sha)[-1]["state"] == "error"
    assert fake.statuses_for(full_name, new_sha)[-1]["state"] == "success"


@pytest.mark.usefixtures("github_invariants")
async def test_reports_survive_github_failing_then_recovering(github_client, project, fake):
    """Fault: GitHub answers 500 to the next two calls. Asserts: the deployment Succeeds, two calls
    failed, the last status is success with no pending after it; the invariant incl. GitHub."""
    client = await github_client()
    full_name, url, sha = project("acme")
    fake.fail_next(2, 500)
    response = await deliver(client, "push", push_payload(full_name, url, after=sha))
    assert response.status == 202  # GitHub being down never blocks or fails a deployment
    info = await wait_finished(client, (await response.json())["id"])
    assert info["status"] == "Succeeded"
    reporter = client.app[reporter_key]
    await reporter.idle()
    states = [s["state"] for s in fake.statuses_for(full_name, sha)]
    assert states[-1] == "success" and "pending" not in states[states.index("success"):]
    assert reporter.failures >= 2
    assert sum(call.failed for call in fake.calls) == 2


async def test_metrics_show_the_states_waiting_for_github(github_client, project, fake):
    """While GitHub fails, the deployment's states wait in the outbox and /metrics counts them;
    once GitHub answers they go out and the count is 0."""
    client = await github_client()
    full_name, url, sha = project("acme")
    fake.fail_next(10_000, 500)
    response = await deliver(client, "push", push_payload(full_name, url, after=sha))
    await wait_finished(client, (await response.json())["id"])

    async def unsent() -> float:
        text = await (await client.get("/metrics")).text()
        return float(text.split("\nspeed_github_reports_unsent ")[1].split()[0])

    assert await unsent() >= 1
    fake.recover()
    await client.app[reporter_key].idle()
    assert await unsent() == 0
    assert fake.statuses_for(full_name, sha)[-1]["state"] == "success"


async def test_environment_rule_creates_a_github_deployment(github_client, project, fake):
    client = await github_client()
    full_name, url, sha = project("deploy")
    response = await deliver(client, "push", push_payload(full_name, url, after=sha))
    deployment_id = (await response.json())["id"]
    await wait_finished(client, deployment_id)
    await client.app[reporter_key].idle()
    [created] = fake.deployments
    assert (created["ref"], created["environment"]) == (sha, "production")
    states = fake.deployment_statuses[created["id"]]
    assert [s["state"] for s in states] == ["queued", "in_progress", "success"]
    assert {s["log_url"] for s in states} == {f"{PUBLIC_URL}/deployments/{deployment_id}"}
    assert {s["context"] for s in fake.statuses_for(full_name, sha)} == {"speed/production"}


async def test_manual_start_of_a_configured_repository_reports_too(github_client, project, fake):
    client = await github_client()
    full_name, url, sha = project("acme")
    response = await client.post("/start", json={"url": url, "branch": "main"})
    await wait_finished(client, (await response.json())["id"])
    await client.app[reporter_key].idle()
    # The commit is known once cloned: GitHub hears "running", then the outcome.
    assert [s["state"] for s in fake.statuses_for(full_name.lower(), sha)] == ["pending", "success"]


async def test_private_repository_clones_with_the_token_which_never_shows(github_client, git_server,
                                                                         base_image, fake):
    """Leak: a private repository cloned with SPEED's GitHub token. Asserts: it deploys, and the
    token is in neither its results, its /info nor its HTML page."""
    client = await github_client(github__token=git_server.private_token)
    fake.token = git_server.private_token
    full_name = f"private/app-{uuid.uuid4().hex[:6]}"
    sha = git_server.commit(full_name, {"Dockerfile": DOCKERFILE, "run.sh": "echo private ok\n"})
    response = await deliver(client, "push", push_payload(full_name, git_server.url(full_name),
                                                          after=sha))
    deployment_id = (await response.json())["id"]
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded", results
    assert "private ok" in results
    page = await (await client.get(f"/deployments/{deployment_id}")).text()
    for shown in (results, str(info), page):
        assert git_server.private_token not in shown


async def test_github_app_reports_with_installation_tokens(app_fake, app_settings, make_client,
                                                           project):
    full_name, url, sha = project("acme")
    app_fake.add_installation(99, [full_name])
    client = await make_client(**app_settings)
    response = await deliver(client, "push", push_payload(full_name, url, after=sha,
                                                          installation_id=99))
    await wait_finished(client, (await response.json())["id"])
    statuses = await app_fake.wait_for_statuses(full_name, sha, 3)
    assert statuses[-1]["state"] == "success"
    status_calls = [c for c in app_fake.calls if "/statuses/" in c.path]
    tokens = {c.headers["authorization"].split()[-1] for c in status_calls}
    assert len(tokens) == 1 and app_fake.installation_tokens[tokens.pop()] == 99
    assert len([c for c in app_fake.calls if c.path.endswith("/access_tokens")]) == 1  # cached


async def test_missed_deliveries_are_redelivered_on_start(app_fake, app_settings, make_client,
                                                        project):
    full_name, url, sha = project("acme")
    app_fake.add_installation(99, [full_name])
    payload = push_payload(full_name, url, after=sha, installation_id=99)
    body = encode(payload)
    missed = app_fake.add_delivery(1, str(uuid.uuid4()), "push", None, 502, payload,
                                   delivery_headers("push", body, SECRET), body=body)
    speed = {}
    app_fake.on_redeliver = lambda delivery: app_fake.deliver(
        delivery, str(speed["client"].make_url("/webhook")))
    speed["client"] = await make_client(**app_settings)
    await app_fake.wait_until(lambda: app_fake.redelivery_requests)
    await app_fake.settle()
    assert app_fake.redelivery_requests == [missed.id]
    [deployment] = await deployments(speed["client"])
    assert deployment["commit"] == sha


async def test_page_escapes_what_the_container_prints(github_client, project):
    """Attack: a container prints a <script> tag. Asserts: the deployment page shows it escaped."""
    client = await github_client()
    full_name, url, sha = project("acme", "echo '<script>alert(1)</script>'\n")
    response = await deliver(client, "push", push_payload(full_name, url, after=sha))
    deployment_id = (await response.json())["id"]
    await wait_finished(client, deployment_id)
    page = await (await client.get(f"/deployments/{deployment_id}")).text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.usefixtures("github_invariants")
async def test_reports_given_up_are_sent_after_a_restart(github_client, project, fake):
    """Fault: GitHub fails (500) past report_retry_for, recovers, SPEED restarts. Asserts: no
    status while it failed; after the restart exactly one status, success, reaches GitHub."""
    client = await github_client(github__report_retry_for=0)
    full_name, url, sha = project("acme")
    fake.fail_next(1000, 500)
    response = await deliver(client, "push", push_payload(full_name, url, after=sha))
    deployment_id = (await response.json())["id"]
    assert (await wait_finished(client, deployment_id))["status"] == "Succeeded"
    await client.app[reporter_key].idle()
    assert fake.statuses_for(full_name, sha) == []
    await client.close()
    fake.recover()
    restarted = await github_client()
    await fake.wait_for_statuses(full_name, sha, 1)
    await restarted.app[reporter_key].idle()
    assert [s["state"] for s in fake.statuses_for(full_name, sha)] == ["success"]


@pytest.mark.usefixtures("github_invariants")
async def test_no_token_in_logs(github_client, project, caplog, fake):
    """Leak: GitHub answers 401 quoting part of the token. Asserts: neither the GitHub token nor the
    webhook secret appears in SPEED's log records at DEBUG."""
    client = await github_client()
    full_name, url, sha = project("acme", 'echo "$SPEED_TOKEN"\n')
    fake.fail_next(1, 401, body={"message": f"Bad credentials {TOKEN[:4]}"})
    with caplog.at_level("DEBUG"):
        response = await deliver(client, "push", push_payload(full_name, url, after=sha))
        await wait_finished(client, (await response.json())["id"])
        await client.app[reporter_key].idle()
    assert caplog.records
    assert TOKEN not in caplog.text and SECRET not in caplog.text


@pytest.mark.usefixtures("github_invariants")
async def test_reports_wait_out_a_secondary_rate_limit(github_client, project, fake):
    """Fault: GitHub's secondary rate limit, 403 with retry-after: 1, twice. Asserts: Succeeded, two
    calls failed, the last status is success, at most 1000 statuses (the wait is not timed)."""
    client = await github_client()
    full_name, url, sha = project("acme")
    fake.fail_next(2, 403, headers={"retry-after": "1"},
                   body={"message": "You have exceeded a secondary rate limit"})
    response = await deliver(client, "push", push_payload(full_name, url, after=sha))
    assert (await wait_finished(client, (await response.json())["id"]))["status"] == "Succeeded"
    await client.app[reporter_key].idle()
    states = [s["state"] for s in fake.statuses_for(full_name, sha)]
    assert states[-1] == "success"
    assert sum(call.failed for call in fake.calls) == 2
    assert len(states) <= 1000  # GitHub's budget of statuses per commit and context


@pytest.mark.usefixtures("github_invariants")
async def test_reports_survive_github_timing_out(github_client, project, fake):
    """Fault: GitHub answers after 5 s against a 0.5 s request timeout. Asserts: the deployment
    Succeeds, a report failure is counted, once GitHub is prompt the last status is success."""
    client = await github_client(github__request_timeout=0.5)
    full_name, url, sha = project("acme")
    fake.delay = 5  # every answer comes too late
    response = await deliver(client, "push", push_payload(full_name, url, after=sha))
    assert (await wait_finished(client, (await response.json())["id"]))["status"] == "Succeeded"
    assert client.app[reporter_key].failures >= 1
    fake.delay = 0
    await client.app[reporter_key].idle()
    assert fake.statuses_for(full_name, sha)[-1]["state"] == "success"


async def test_pull_requests_supersede_only_their_own_deployments(github_client, project,
                                                                   git_server):
    """Attack (found by a hostile review): a fork's pull request whose head branch has the same
    name as another pull request's (GitHub's default is `patch-1`) cancelled that one's
    deployment. Asserts: a new commit of pull request #5 cancels #5's older deployment; a fork's
    #99 from a branch of the same name cancels nothing of #5's."""
    client = await github_client()
    full_name, url, first = project("open", "echo started\nsleep 600\n", branch="feature")
    fork_name, fork_url, fork_sha = project("stranger", "echo fork\n", branch="feature")

    async def pull_request(number: int, sha: str, **head) -> int:
        response = await deliver(client, "pull_request", pull_request_payload(
            full_name, url, action="synchronize", number=number, head_sha=sha,
            head_ref="feature", **head))
        assert response.status == 202, await response.text()
        return (await response.json())["id"]

    older = await pull_request(5, first)
    fork = await pull_request(99, fork_sha, head_full_name=fork_name, head_clone_url=fork_url)
    assert (await wait_finished(client, fork))["status"] == "Succeeded"
    assert (await (await client.get(f"/info/{older}")).json())["status"] in ("Pending", "Running")
    second = git_server.commit(full_name, {"run.sh": "echo second\n"}, branch="feature")
    newer = await pull_request(5, second)
    older_info = await wait_finished(client, older)
    assert (older_info["status"], older_info["reason"]) == (
        "Cancelled", f"superseded by deployment {newer}")
    assert (await wait_finished(client, newer))["status"] == "Succeeded"


@pytest.mark.usefixtures("github_invariants")
async def test_a_lost_answer_to_creating_the_github_deployment_makes_no_second_one(
        github_client, project, fake):
    """Fault: GitHub creates the Deployment but its answer comes after SPEED's request timeout.
    Asserts: SPEED finds the one it created (by commit, environment and description) instead
    of creating another, and that one shows every state once, in order."""
    client = await github_client(github__request_timeout=0.5)
    full_name, url, sha = project("deploy")
    fake.lose_answer("POST", "/deployments")
    response = await deliver(client, "push", push_payload(full_name, url, after=sha))
    await wait_finished(client, (await response.json())["id"])
    await client.app[reporter_key].idle()
    [created] = fake.deployments
    assert [s["state"] for s in fake.deployment_statuses[created["id"]]] == [
        "queued", "in_progress", "success"]
    assert client.app[reporter_key].failures >= 1  # the answer was lost


async def test_missed_deliveries_are_asked_for_oldest_first_after_a_github_hiccup(
        app_fake, app_settings, make_client, git_server, base_image):
    """Found by a hostile user: two missed pushes to main were asked back newest first, so the
    older commit arrived last, superseded the newer and won; and one 502 from GitHub at take-up
    lost every missed delivery until the next start. Asserts: after a 502, both are asked for,
    oldest first, and the newer commit is what succeeds."""
    full_name = f"acme/order-{uuid.uuid4().hex[:6]}"
    url = git_server.url(full_name)
    old = git_server.commit(full_name, {"Dockerfile": DOCKERFILE, "run.sh": "echo OLD\n"})
    new = git_server.commit(full_name, {"run.sh": "echo NEW\n"})
    app_fake.add_installation(99, [full_name])
    now = time.time()
    for number, (before, after) in enumerate([("1" * 40, old), (old, new)], start=1):
        payload = push_payload(full_name, url, before=before, after=after, installation_id=99)
        body = encode(payload)
        missed = app_fake.add_delivery(number, str(uuid.uuid4()), "push", None, 502, payload,
                                       delivery_headers("push", body, SECRET), body=body)
        missed.delivered_at = now - 60 + number  # the older push was missed first
    speed = {}
    in_order = asyncio.Lock()  # GitHub sends the redeliveries one after another, as asked

    async def redeliver(delivery):
        async with in_order:
            return await app_fake.deliver(delivery, str(speed["client"].make_url("/webhook")))

    app_fake.on_redeliver = redeliver
    app_fake.fail_next(1, 502)
    speed["client"] = client = await make_client(**app_settings)
    await app_fake.wait_until(lambda: len(app_fake.redelivery_requests) == 2)
    await app_fake.settle()
    assert app_fake.redelivery_requests == [1, 2]
    for deployment in await deployments(client):
        await wait_finished(client, deployment["id"])
    succeeded = [d["commit"] for d in await deployments(client) if d["status"] == "Succeeded"]
    assert succeeded == [new]


async def test_an_installation_token_github_refuses_is_replaced(app_fake, app_settings,
                                                                 make_client, project):
    """Found by a hostile user: a token GitHub revoked (or that expired early) stayed cached
    and every report was refused 401 until given up. Asserts: after the 401 a new token is
    issued and the final status reaches GitHub."""
    full_name, url, sha = project("acme", "sleep 1\necho ok\n")
    app_fake.add_installation(99, [full_name])
    client = await make_client(**{**app_settings, "github__report_retry_for": 20})
    response = await deliver(client, "push", push_payload(full_name, url, after=sha,
                                                          installation_id=99))
    await app_fake.wait_for_statuses(full_name, sha, 1)
    app_fake.installation_tokens.clear()  # GitHub revoked the token: 401 Bad credentials
    assert (await wait_finished(client, (await response.json())["id"]))["status"] == "Succeeded"
    await client.app[reporter_key].idle()
    assert app_fake.statuses_for(full_name, sha)[-1]["state"] == "success"
    assert len([c for c in app_fake.calls if c.path.endswith("/access_tokens")]) == 2


def test_a_spent_rate_limit_is_waited_out_until_its_reset():
    """Found by a hostile user: a primary rate limit (403, remaining 0) sends no Retry-After;
    the backoff gave up before the reset GitHub named. Asserts: the wait is until the reset."""
    reset = datetime.datetime.now(datetime.timezone.utc).timestamp() + 20
    spent = RateLimitExceeded(RateLimit(limit=5000, remaining=0, reset_epoch=reset))
    assert 19 < _retry_after(spent) <= 21
    assert _retry_after(RateLimitExceeded(RateLimit(limit=5000, remaining=0,
                                                    reset_epoch=reset - 60))) == 1
