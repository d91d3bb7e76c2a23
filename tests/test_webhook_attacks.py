"""Attacks on POST /webhook: signatures compare in constant time, and a delivery whose signature
does not check out contacts nothing.

SPEED verifies X-Hub-Signature-256 in bot/webhook.py `_parse`, which hands the body, the headers
and github.webhook_secret to gidgethub's `sansio.Event.from_http`; that calls
`sansio.validate_event`, which compares the header's value with the expected one by
`hmac.compare_digest`. Everything here is the real app, a real git client and real sockets; the
GitHub stand-in is the one fake."""
import asyncio
import hashlib
import hmac
import socket
import sys
import uuid

import gidgethub.sansio
import pytest

from bot.keys import reporter_key
from tests.conftest import wait_finished
from tests.fake_github import FakeGitHub
from tests.webhooks import delivery_headers, encode, fake_sha, push_payload, sign

SECRET = "webhook-secret-for-attack-tests"
TOKEN = "ghp_" + "a" * 36
SIGNATURE_LENGTH = len("sha256=") + 64


# --- 1. Signatures compare in constant time (Jenkins compared them byte by byte) ----------------

@pytest.fixture
def comparisons(monkeypatch):
    """(caller, first argument, second argument) of every hmac.compare_digest call, through the
    module gidgethub.sansio compares with."""
    seen: list[tuple[str, str, str]] = []
    compare = hmac.compare_digest

    def spy(a, b):
        seen.append((sys._getframe(1).f_code.co_name, a, b))
        return compare(a, b)

    monkeypatch.setattr(gidgethub.sansio.hmac, "compare_digest", spy)
    return seen


def _flip(character: str) -> str:
    return "0" if character != "0" else "1"


def _guesses(right: str) -> dict[str, str]:
    """Wrong X-Hub-Signature-256 values for a body whose right one is right, and the right one."""
    digest = right.removeprefix("sha256=")
    return {
        "first byte wrong": "sha256=" + _flip(digest[0]) + digest[1:],
        "last byte wrong": "sha256=" + digest[:-1] + _flip(digest[-1]),
        "one character short": right[:-1],
        "one character long": right + "0",
        "a single hex digit": "sha256=0",
        "4000 characters": "sha256=" + "0" * 4000,
        "right": right,
    }


async def test_signature_check_does_the_same_comparison_for_every_guess(make_client,
                                                                        comparisons):
    """Attack: Jenkins' non-constant-time signature compare (timing the check to learn the
    expected HMAC byte by byte). Guesses wrong in the first byte, in the last byte, of a wrong
    length, and the right signature, each on a push. Asserts: wrong ones 401, the right one 202;
    a value that is not sha256= and 64 hex digits is refused by its shape alone (which tells
    nothing secret) before any comparison; every well-formed one reaches exactly one
    hmac.compare_digest, made by gidgethub's validate_event (the check SPEED's /webhook uses),
    of two 71-character values, the second always the expected signature."""
    client = await make_client(github__webhook_secret=SECRET, repos=[{"match": "acme/*"}])
    # Nothing may be cloned: the URL's port is closed, and no deployment is looked at.
    body = encode(push_payload("acme/app", "http://127.0.0.1:9/acme/app.git",
                               after=fake_sha("constant-time")))
    right = sign(body, SECRET)
    expected_calls = []
    for name, guess in _guesses(right).items():
        comparisons.clear()
        headers = {**delivery_headers("push", body, None), "X-Hub-Signature-256": guess}
        response = await client.post("/webhook", data=body, headers=headers)
        assert response.status == (202 if name == "right" else 401), name
        if len(guess) != SIGNATURE_LENGTH:
            assert comparisons == [], name
            continue
        assert len(comparisons) == 1, (name, comparisons)
        [(caller, given, expected)] = comparisons
        assert caller == "validate_event", name
        assert (given, expected) == (guess, right), name
        expected_calls.append(expected)
    assert len(expected_calls) == 3


async def test_speed_compares_no_signature_itself(make_client, comparisons, monkeypatch):
    """Attack: a timing leak in SPEED's own code, should it compare signatures outside gidgethub.
    Asserts: with validate_event replaced by a recorder that accepts everything, a forged
    signature is accepted (202) — SPEED itself compared nothing; the real check is gidgethub's."""
    seen = []
    monkeypatch.setattr(gidgethub.sansio, "validate_event",
                        lambda payload, *, signature, secret: seen.append(signature))
    client = await make_client(github__webhook_secret=SECRET, repos=[{"match": "acme/*"}])
    body = encode(push_payload("acme/app", "http://127.0.0.1:9/acme/app.git",
                               after=fake_sha("own-compare")))
    forged = "sha256=" + "0" * 64
    headers = {**delivery_headers("push", body, None), "X-Hub-Signature-256": forged}
    response = await client.post("/webhook", data=body, headers=headers)
    assert response.status == 202
    assert seen == [forged] and comparisons == []


# --- 3. Refused deliveries contact nothing -------------------------------------------------------

@pytest.fixture
async def fake():
    async with FakeGitHub(token=TOKEN) as github:
        yield github


@pytest.fixture
def listener():
    """A loopback socket that listens but never answers by itself: a canary for clones."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def contacted(sock: socket.socket) -> bool:
    """Whether anything connected to the canary (and is waiting to be accepted)."""
    try:
        sock.accept()[0].close()
        return True
    except BlockingIOError:
        return False


async def request_line(sock: socket.socket, timeout: float = 60) -> str:
    """The first line of the next HTTP request to the canary; the connection is then closed."""
    loop = asyncio.get_running_loop()
    connection, _ = await asyncio.wait_for(loop.sock_accept(sock), timeout)
    with connection:
        connection.setblocking(False)
        received = b""
        while b"\r\n" not in received:
            chunk = await asyncio.wait_for(loop.sock_recv(connection, 4096), timeout)
            if not chunk:
                break
            received += chunk
    return received.partition(b"\r\n")[0].decode("latin-1")


@pytest.fixture
async def canary_speed(make_client, listener, fake):
    """SPEED with a webhook secret, a GitHub token and the stand-in GitHub, whose allowed_urls name
    the canary's loopback address and port, so a clone from it would be allowed."""
    port = listener.getsockname()[1]
    client = await make_client(
        github__webhook_secret=SECRET, github__token=TOKEN, github__api_url=fake.url,
        runner__allowed_urls=[f"http://127.0.0.1:{port}/*"], repos=[{"match": "acme/*"}])
    return client, f"http://127.0.0.1:{port}"


def _without(headers: dict, *names: str) -> dict:
    return {k: v for k, v in headers.items() if k not in names}


def _sha1_in_the_sha256_header(body: bytes) -> dict:
    sha1 = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    return {**delivery_headers("push", body, None), "X-Hub-Signature-256": f"sha1={sha1}"}


# name -> (headers for a body, expected status). The body is a push from the canary.
REFUSALS = {
    "unsigned": (lambda body: delivery_headers("push", body, None), 401),
    "forged: signed with another secret":
        (lambda body: delivery_headers("push", body, "not-the-secret"), 401),
    "SHA-1 only (X-Hub-Signature, no X-Hub-Signature-256)":
        (lambda body: _without(delivery_headers("push", body, SECRET), "X-Hub-Signature-256"), 401),
    "SHA-1 HMAC of the right secret in X-Hub-Signature-256": (_sha1_in_the_sha256_header, 401),
    "signature of another body":
        (lambda body: delivery_headers("push", body + b" ", SECRET), 401),
    "empty X-Hub-Signature-256":
        (lambda body: {**delivery_headers("push", body, SECRET), "X-Hub-Signature-256": ""}, 401),
    "right digest without the sha256= prefix":
        (lambda body: {**delivery_headers("push", body, SECRET),
                       "X-Hub-Signature-256": sign(body, SECRET).removeprefix("sha256=")}, 401),
    "signed, no X-GitHub-Event":
        (lambda body: _without(delivery_headers("push", body, SECRET), "X-GitHub-Event"), 400),
    "signed, Content-Type text/plain":
        (lambda body: {**delivery_headers("push", body, SECRET),
                       "Content-Type": "text/plain"}, 400),
}


@pytest.mark.parametrize("attack", REFUSALS)
async def test_refused_delivery_contacts_nothing(canary_speed, listener, fake, attack):
    """Attack: each REFUSALS entry (unsigned, forged with another secret, SHA-1 only, a SHA-1 HMAC
    passed off as X-Hub-Signature-256, another body's signature, empty or prefix-less signatures,
    and signed but malformed deliveries) carrying a push whose clone_url is a loopback canary that
    allowed_urls names. Asserts: 401 (400 for the malformed) with a JSON error; no deployment
    stored; the canary and GitHub not contacted. Then a genuine delivery with the same delivery id
    and another clone path: 202, one deployment, and the canary's only connection asks for that
    path — so the refused one recorded no delivery id and queued no clone."""
    client, canary = canary_speed
    make_headers, status = REFUSALS[attack]
    guid = str(uuid.uuid4())
    refused_sha, genuine_sha = fake_sha(f"{guid}-refused"), fake_sha(f"{guid}-genuine")
    body = encode(push_payload("acme/refused", f"{canary}/acme/refused.git", after=refused_sha))
    headers = {**make_headers(body), "X-GitHub-Delivery": guid}
    response = await client.post("/webhook", data=body, headers=headers)
    assert response.status == status
    assert "error" in await response.json()
    assert (await (await client.get("/deployments")).json())["deployments"] == []
    assert not contacted(listener)
    assert fake.calls == []

    genuine = encode(push_payload("acme/genuine", f"{canary}/acme/genuine.git", after=genuine_sha))
    response = await client.post("/webhook", data=genuine,
                                 headers=delivery_headers("push", genuine, SECRET, guid))
    assert response.status == 202
    deployment_id = (await response.json())["id"]
    assert (await request_line(listener)).startswith("GET /acme/genuine.git/info/refs")
    info = await wait_finished(client, deployment_id)
    assert info["status"] == "Failed"  # the canary hung up
    await client.app[reporter_key].idle()
    assert not contacted(listener)
    assert [d["id"] for d in (await (await client.get("/deployments")).json())["deployments"]] == [
        deployment_id]
    assert fake.statuses_for("acme/genuine", genuine_sha)
    assert not [call for call in fake.calls if refused_sha in call.path]


async def test_non_ascii_signature_is_a_401(canary_speed, listener):
    """Attack: an X-Hub-Signature-256 with a non-ASCII byte (hmac.compare_digest raises TypeError
    on non-ASCII text). Asserts: 401 with a JSON error, nothing stored, the canary not contacted."""
    client, canary = canary_speed
    body = encode(push_payload("acme/refused", f"{canary}/acme/refused.git",
                               after=fake_sha("non-ascii")))
    signature = sign(body, SECRET)
    headers = {**delivery_headers("push", body, None),
               "X-Hub-Signature-256": signature[:-1] + "\u00e9"}
    response = await client.post("/webhook", data=body, headers=headers)
    assert response.status == 401
    assert "error" in await response.json()
    assert (await (await client.get("/deployments")).json())["deployments"] == []
    assert not contacted(listener)
