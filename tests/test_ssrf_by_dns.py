"""Host names that resolve inside are refused like internal addresses, and git is held to the
addresses SPEED checked (no DNS rebinding between the check and the clone)."""
import ipaddress
import os
import pathlib
import socket
import urllib.parse

import pytest

from bot.keys import store_key, worker_key
from runner.validation import Invalid, check_url
from runner import git
from runner.errors import CheckoutFailed
from storage import deployments as queries
from tests.conftest import wait_finished
from tests.webhooks import delivery_headers, encode, push_payload

HOSTNAME = socket.gethostname().lower()
SECRET = "webhook-secret-for-tests"
REFUSED = "resolves to a loopback, private or link-local address; it needs an allowed_urls " \
          "pattern that names it"


def resolved(name: str) -> list[str]:
    """The addresses name resolves to here ([] if none)."""
    try:
        found = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        return sorted({info[4][0] for info in found})
    except OSError:
        return []


def require(condition: bool, why: str) -> None:
    """Skip without a precondition of this machine; under CI a skip would hide a lost test."""
    if not condition:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(why)


def internal_name(name: str) -> str:
    """name, once it is known to resolve inside here."""
    addresses = resolved(name)
    assert addresses and all(ipaddress.ip_address(a).is_private for a in addresses), addresses
    return name


def hosts_file_names() -> list[str]:
    """This machine's hostname and the other names /etc/hosts gives a loopback address
    (ip6-localhost and the like, where the file has them); "localhost" itself is refused as text."""
    names = {HOSTNAME}
    for line in pathlib.Path("/etc/hosts").read_text().splitlines():
        address, *aliases = line.partition("#")[0].split() or [""]
        if address and ipaddress.ip_address(address).is_loopback:
            names.update(a.lower() for a in aliases if a.lower() != "localhost")
    return sorted(names)


@pytest.fixture
def canary():
    """Listening sockets on given addresses; connected() tells whether anything reached one."""
    sockets = []

    def make(address: str) -> int:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        listener = socket.socket(family)
        listener.bind((address, 0))
        listener.listen(16)
        listener.setblocking(False)
        sockets.append(listener)
        return listener.getsockname()[1]

    def connected() -> bool:
        for listener in sockets:
            try:
                listener.accept()[0].close()  # a finished connection waits here too
                return True
            except BlockingIOError:
                pass
        return False

    make.connected = connected
    yield make
    for listener in sockets:
        listener.close()


async def listed(client) -> list[dict]:
    return (await (await client.get("/deployments")).json())["deployments"]


@pytest.mark.parametrize("name", hosts_file_names())
async def test_start_refuses_a_name_that_resolves_to_loopback(make_client, canary, name):
    """SSRF by DNS: /start naming a host resolving to loopback is a 400; nothing stored or hit."""
    internal_name(name)
    port = canary(resolved(name)[0])
    client = await make_client(runner__allowed_urls=["http://*"])
    response = await client.post("/start", json={"url": f"http://{name}:{port}/app.git",
                                                 "branch": "main"})
    assert response.status == 400
    assert (await response.json())["error"] == f"url: {name} {REFUSED}"
    assert await listed(client) == []
    assert not canary.connected()


async def test_webhook_ignores_a_clone_url_that_resolves_to_loopback(make_client, canary):
    """SSRF by DNS through a signed push whose clone_url names this host: ignored, no deployment."""
    port = canary(resolved(internal_name(HOSTNAME))[0])
    client = await make_client(runner__allowed_urls=["http://*"], github__webhook_secret=SECRET,
                               repos=[{"match": "acme/*"}])
    body = encode(push_payload("acme/app", f"http://{HOSTNAME}:{port}/acme/app.git"))
    response = await client.post("/webhook", data=body,
                                 headers=delivery_headers("push", body, SECRET))
    assert response.status == 200
    assert (await response.json())["message"] == f"ignored: url: {HOSTNAME} {REFUSED}"
    assert await listed(client) == []
    assert not canary.connected()


async def test_stored_deployment_whose_host_now_resolves_inside_fails_before_git(make_client,
                                                                                  canary):
    """DNS rebinding: a deployment accepted earlier fails at clone time and cannot be redeployed."""
    port = canary(resolved(internal_name(HOSTNAME))[0])
    client = await make_client(runner__allowed_urls=["http://*"])
    # Stored directly: as if the name resolved to a public address when /start checked it.
    stored = await client.app[store_key].change(
        queries.create, f"http://{HOSTNAME}:{port}/app.git", "main")
    client.app[worker_key].wake()
    info = await wait_finished(client, stored.id)
    assert (info["status"], info["reason"]) == ("Failed", f"not cloning: {HOSTNAME} {REFUSED}")
    assert not canary.connected()
    again = await client.post(f"/redeploy/{stored.id}")
    assert (again.status, (await again.json())["error"]) == (400, f"url: {HOSTNAME} {REFUSED}")
    assert [d["id"] for d in await listed(client)] == [stored.id]


async def test_pattern_naming_the_host_allows_it(make_client, repo):
    """An allowed_urls pattern naming this host lets a clone under that name run to the end."""
    require("127.0.0.1" in resolved(internal_name(HOSTNAME)),
            f"{HOSTNAME} does not resolve to 127.0.0.1, where the test git server listens")
    url, commit = repo("echo fetched by name\n")
    parts = urllib.parse.urlsplit(url)
    by_name = parts._replace(netloc=f"{HOSTNAME}:{parts.port}").geturl()
    client = await make_client(runner__allowed_urls=[f"http://{HOSTNAME}:{parts.port}/*"])
    response = await client.post("/start", json={"url": by_name, "branch": "main"})
    assert response.status == 201
    info = await wait_finished(client, (await response.json())["id"])
    assert (info["status"], info["commit"], info["repo_name"]) == ("Succeeded", commit, by_name)


async def test_name_that_does_not_resolve_is_accepted_then_fails_at_clone_time(make_client):
    """An unresolvable name passes /start (DNS may be down); the clone-time check then fails it."""
    assert resolved("speed-nowhere.invalid") == []
    client = await make_client(runner__allowed_urls=["http://*"])
    response = await client.post("/start", json={"url": "http://speed-nowhere.invalid/app.git",
                                                 "branch": "main"})
    assert response.status == 201
    info = await wait_finished(client, (await response.json())["id"])
    assert (info["status"], info["reason"]) == (
        "Failed", "not cloning: the host speed-nowhere.invalid does not resolve")


@pytest.mark.parametrize("scheme", ["http", "https", "ssh", "git"])
async def test_pin_refuses_a_name_resolving_inside_for_every_transport(scheme):
    """SSRF at clone time, every transport: a name resolving inside is refused under a wildcard,
    passes (nothing to pin) under a pattern naming it; a loopback literal is refused."""
    url = f"{scheme}://{internal_name(HOSTNAME)}/app.git"
    with pytest.raises(CheckoutFailed, match=f"^not cloning: {HOSTNAME} resolves to a loopback"):
        await git.pin(url, (f"{scheme}://*",), 5)
    assert await git.pin(url, (f"{scheme}://{HOSTNAME}/*",), 5) == ()
    with pytest.raises(CheckoutFailed, match="^not cloning: loopback, private and link-local"):
        await git.pin(f"{scheme}://127.0.0.1/app.git", (f"{scheme}://*",), 5)


@pytest.mark.parametrize("spelling", ["speed-pinned.invalid", "speed-pinned.invalid.",
                                      "Speed-Pinned.INVALID"])
async def test_git_connects_to_the_pinned_address_without_resolving(repo, tmp_path, spelling):
    """git reaches a name that does not resolve at all through the pin, in each spelling of it."""
    assert resolved(spelling) == []
    url, commit = repo("echo pinned\n")
    parts = urllib.parse.urlsplit(url)
    pinned_url = parts._replace(netloc=f"{spelling}:{parts.port}").geturl()
    assert await git.resolve(pinned_url, "main", 30, addresses=("127.0.0.1",)) == commit
    assert await git.checkout(pinned_url, "main", str(tmp_path / "src"), 30,
                              addresses=("127.0.0.1",)) == commit


async def test_git_does_not_resolve_a_pinned_name_again(canary, tmp_path):
    """Rebinding: with this host pinned to 127.0.0.2, git never reaches where the name resolves."""
    address = resolved(internal_name(HOSTNAME))[0]
    assert address != "127.0.0.2"
    port = canary(address)
    with pytest.raises(CheckoutFailed):
        await git.checkout(f"http://{HOSTNAME}:{port}/app.git", "main", str(tmp_path / "src"), 10,
                           addresses=("127.0.0.2",))
    assert not canary.connected()


@pytest.mark.parametrize("url", [
    "https://100.100.100.200/latest/meta-data",  # Alibaba Cloud metadata, in 100.64/10
    "https://%31%32%37.0.0.1/app.git",  # curl decodes the host: 127.0.0.1
    "https://%6c%6f%63%61%6c%68%6f%73%74/app.git",  # localhost
    "https://[::ffff:169.254.169.254]/latest/meta-data",
    "https://github.com:99999/acme/app.git",
])
def test_more_url_spellings_are_refused(url):
    """Shared-range metadata, percent-encoded hosts (curl decodes them) and bad ports: refused."""
    with pytest.raises(Invalid, match="^url: "):
        check_url(url, ("https://*",))
