"""Attacks that broke comparable systems get a clear refusal and reach nothing they aim at."""
import http.server
import threading

import pytest

from tests.conftest import results_of, wait_finished
from tests.webhooks import sign

GITHUB_VECTOR_SECRET = "It's a Secret to Everybody"
GITHUB_VECTOR_BODY = b"Hello, World!"


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request with a redirect to `target` (if set) and remembers it was asked."""

    target = ""
    seen: list

    def do_GET(self):
        self.seen.append(self.path)
        if self.target:
            self.send_response(301)
            self.send_header("Location", self.target + self.path)
        else:
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def listener():
    """A loopback HTTP listener that records requests; redirects when given a target."""
    servers = []

    def make(target: str = "") -> tuple[str, list]:
        seen: list = []
        handler = type("Handler", (_Recorder,), {"target": target, "seen": seen})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", seen

    yield make
    for server in servers:
        server.shutdown()


async def test_clone_url_redirecting_to_loopback_is_not_followed(make_client, listener):
    """Gogs SSRF: an allowed clone URL answers 301 to a loopback listener. Asserts: the deployment
    Fails, git's 'returned error: 301'; the allowed host was asked, the listener never was."""
    canary_url, canary_seen = listener()
    redirect_url, redirect_seen = listener(target=canary_url)
    client = await make_client(runner__allowed_urls=[f"{redirect_url}/*"])
    response = await client.post("/start", json={"url": f"{redirect_url}/repo.git", "branch": "main"})
    deployment_id = (await response.json())["id"]
    info = await wait_finished(client, deployment_id)
    assert info["status"] == "Failed"
    assert redirect_seen, "git asked the allowed host"
    assert canary_seen == [], "git followed the redirect to the internal listener"
    assert "returned error: 301" in await results_of(client, deployment_id)


async def test_githubs_published_signature_vector_is_accepted(make_client):
    """GitHub's published test vector signs to its documented sha256 and passes verification (then a
    400: the body is not JSON); the same signature over the body plus a space is a 401."""
    client = await make_client(github__webhook_secret=GITHUB_VECTOR_SECRET)
    signature = sign(GITHUB_VECTOR_BODY, GITHUB_VECTOR_SECRET)
    assert signature == ("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    response = await client.post("/webhook", data=GITHUB_VECTOR_BODY, headers={
        "X-GitHub-Event": "ping", "X-GitHub-Delivery": "vector-1",
        "X-Hub-Signature-256": signature, "Content-Type": "application/json"})
    assert response.status == 400
    assert "JSON" in (await response.json())["error"]
    forged = await client.post("/webhook", data=GITHUB_VECTOR_BODY + b" ", headers={
        "X-GitHub-Event": "ping", "X-GitHub-Delivery": "vector-2",
        "X-Hub-Signature-256": signature, "Content-Type": "application/json"})
    assert forged.status == 401


async def test_oversized_webhook_body_is_refused_before_it_is_read(make_client):
    """Argo CD OOM: a signed 30 MB webhook body declaring its length. Asserts: a 413 with a JSON
    error (memory and bytes read are measured in tests/test_body_limits.py)."""
    client = await make_client(github__webhook_secret="a-secret")
    body = b"x" * (30 * 1024 * 1024)
    response = await client.post("/webhook", data=body, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": "big-1", "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(body, "a-secret")})
    assert response.status == 413
    assert "error" in await response.json()


async def test_unicode_branch_round_trips_exactly(make_client, repo):
    """Valid non-ASCII branch names (composed and decomposed accents, an emoji) are neither refused
    nor normalised: /info and the container's SPEED_BRANCH give back the very same string."""
    client = await make_client()
    for branch in ("feature/ünïcödé-🚀", "feature/u\u0308nicode"):
        url, commit = repo('printf "branch=%s\\n" "$SPEED_BRANCH"\n', branch=branch)
        response = await client.post("/start", json={"url": url, "branch": branch})
        assert response.status == 201
        deployment_id = (await response.json())["id"]
        info = await wait_finished(client, deployment_id)
        assert (info["status"], info["repo_branch"], info["commit"]) == ("Succeeded", branch, commit)
        assert f"branch={branch}\n" in await results_of(client, deployment_id)
