"""Injection and SSRF attempts through /start and signed webhooks, with the allow-list wide open
("*"): each is a 400 (or an ignored delivery), nothing is stored, a canary file the attack would
create stays absent, and a loopback listener it aims at is never contacted."""
import socket

import pytest

from tests.webhooks import delivery_headers, encode, push_payload

SECRET = "canary-webhook-secret"
HOSTNAME = socket.gethostname()

# {canary}: a file the payload would create; {port}: the loopback listener it would reach.
HOSTILE_URLS = [
    "--upload-pack=touch {canary}",  # Jenkins CVE-2019-10392
    "-utouch {canary}",
    "ext::sh -c touch% {canary}",  # GitPython's ext:: injections
    "ext::sh -c 'touch {canary}'",
    "ssh://-oProxyCommand=touch%20{canary}/x.git",  # CVE-2017-1000117
    "ssh://-oProxyCommand=touch {canary}/x.git",
    "fd::17/x.git",
    "file://{canary}.git",
    "file:///etc/passwd",
    "https://user:password@github.com/acme/app.git",
    "http://127.0.0.1:{port}/x.git",
    "http://localhost:{port}/x.git",
    "http://127.1:{port}/x.git",
    "http://2130706433:{port}/x.git",
    "http://0x7f000001:{port}/x.git",
    "http://[::ffff:127.0.0.1]:{port}/x.git",
    "http://%31%32%37.0.0.1:{port}/x.git",
    "http://" + HOSTNAME + ":{port}/x.git",  # a name resolving to this machine
    "http://169.254.169.254/latest/meta-data/",
    "http://100.100.100.200/latest/meta-data/",
]
HOSTILE_BRANCHES = [
    "--upload-pack=touch {canary}", "-b", "$(touch {canary})", "`touch {canary}`",
    "main;touch {canary}", "main' ; touch '{canary}", 'main" && touch "{canary}',
    "main\ntouch {canary}", "main\x00touch {canary}", "../../{canary}", "main..other",
    "a" * 10_000,
]


@pytest.fixture
def target(tmp_path):
    """A canary path and a listening loopback port; .hit() says whether either was touched."""
    canary = tmp_path / "canary"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)

    def hit() -> bool:
        try:
            listener.accept()[0].close()
            return True
        except BlockingIOError:
            return canary.exists()

    values = {"canary": str(canary), "port": listener.getsockname()[1]}
    yield values, hit
    listener.close()


async def listed(client) -> list:
    return (await (await client.get("/deployments")).json())["deployments"]


@pytest.mark.parametrize("url", HOSTILE_URLS)
async def test_hostile_url_is_refused_and_reaches_nothing(make_client, target, url):
    """Attack: each HOSTILE_URLS entry (CVE-2019-10392, ext::, CVE-2017-1000117, file://,
    credentials, internal hosts) at /start. Asserts: 400 'url: ...', nothing stored or hit."""
    values, hit = target
    client = await make_client(runner__allowed_urls=["*"])
    response = await client.post("/start", json={"url": url.format(**values), "branch": "main"})
    assert response.status == 400
    assert (await response.json())["error"].startswith("url: ")
    assert await listed(client) == []
    assert not hit()


@pytest.mark.parametrize("branch", HOSTILE_BRANCHES)
async def test_hostile_branch_is_refused_and_runs_nothing(make_client, target, branch):
    """Attack: each HOSTILE_BRANCHES entry (leading '-', $(...), backticks, ';', quotes, newline,
    NUL, '..', 10,000 chars) at /start. Asserts: 400 'branch: ...', nothing stored or hit."""
    values, hit = target
    client = await make_client(runner__allowed_urls=["*"])
    response = await client.post("/start", json={"url": "https://example.com/app.git",
                                                 "branch": branch.format(**values)})
    assert response.status == 400
    assert (await response.json())["error"].startswith("branch: ")
    assert await listed(client) == []
    assert not hit()


@pytest.mark.parametrize("url", HOSTILE_URLS)
async def test_signed_push_with_a_hostile_clone_url_is_ignored(make_client, target, url):
    """Attack: each HOSTILE_URLS entry as the clone_url of a correctly signed push. Asserts: 200
    'ignored: url: ...', no deployment stored, no canary file, listener never contacted."""
    values, hit = target
    client = await make_client(runner__allowed_urls=["*"], github__webhook_secret=SECRET,
                               repos=[{"match": "acme/*"}])
    body = encode(push_payload("acme/app", url.format(**values)))
    response = await client.post("/webhook", data=body,
                                 headers=delivery_headers("push", body, SECRET))
    assert response.status == 200
    assert (await response.json())["message"].startswith("ignored: url: ")
    assert await listed(client) == []
    assert not hit()
