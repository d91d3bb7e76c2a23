"""DNS rebinding and cross-site requests: SPEED answers only to its own host names and origins."""
import json
import re

import aiohttp
import pytest

from tests.conftest import free_port, results_of, speed_config, wait_for
from tests.rawhttp import exchange, request
from tests.serving import serving

CLOSED = "http://127.0.0.1:9/none.git"  # allowed, but nothing listens: the clone fails at once
START = json.dumps({"url": CLOSED, "branch": "main"}).encode()
TOKEN = "a-proxy-token-of-enough-length"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PUBLIC = "https://speed.example.com"


async def deployments(client, headers: dict | None = None) -> list:
    return (await (await client.get("/deployments", headers=headers)).json())["deployments"]


async def test_forged_host_and_matching_origin_are_misdirected(client):
    """Attack (DNS rebinding, as a browser sends it): a page at http://evil.example:P, its name
    pointed at 127.0.0.1, posts /start — Host, Origin and Sec-Fetch-Site all agree with each
    other. Asserts: 421 JSON, nothing created."""
    evil = f"evil.example:{client.port}"
    response = await client.post("/start", data=START, headers={
        "Host": evil, "Origin": f"http://{evil}", "Sec-Fetch-Site": "same-origin",
        "Content-Type": "text/plain"})
    assert response.status == 421
    assert "host name" in (await response.json())["error"]
    assert await deployments(client) == []


@pytest.mark.parametrize("path", ["/", "/deployments", "/info/1", "/results/1", "/healthz",
                                  "/metrics", "/deployments/1/events", "/no-such-page"])
async def test_reads_for_a_foreign_host_are_misdirected(client, path):
    """Attack: the rebound page reads logs and results. Asserts: every read answers 421 JSON,
    including pages and unknown paths, and shows nothing of the deployment."""
    assert (await client.post("/start", data=START)).status == 201
    status, headers, body = await exchange(client.host, client.port,
                                           request("GET", path, f"evil.example:{client.port}"))
    assert status == 421
    assert headers["content-type"].startswith("application/json")
    assert list(json.loads(body)) == ["error"]


@pytest.mark.parametrize("host", ["evil.example", "localhost.evil.example", "127.0.0.1.nip.io",
                                  "evil.example@127.0.0.1", "127.0.0.1@evil.example",
                                  "127.0.0.1/x", "127.0.0.1:80:80", "0x7f.1",
                                  "127.0.0.1 .evil.example", ".", ""])
async def test_host_names_that_are_not_speeds_are_refused(client, host):
    """Names an attacker can point at 127.0.0.1, and spellings meant to confuse a parser."""
    status, _, _ = await exchange(client.host, client.port, request("GET", "/healthz", host))
    assert status == 421, host


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}",
                                  "LOCALHOST.:{port}", "127.1.2.3:{port}", "[::1]:{port}"])
async def test_loopback_hosts_are_served(client, host):
    """Every loopback spelling a browser or script uses (and a request with no Host at all,
    which no browser sends) reaches SPEED."""
    host = host.format(port=client.port) if host else None
    status, headers, _ = await exchange(client.host, client.port, request("GET", "/healthz", host))
    assert status in (200, 503), host


async def test_public_url_host_is_served_and_foreign_origins_refused(make_client):
    """server.public_url's host is SPEED's own (a reverse proxy passing Host through); a page
    of any other origin, or of public_url's host over another scheme, is refused."""
    client = await make_client(server__public_url=PUBLIC + "/")
    proxied = {"Host": "speed.example.com", "Content-Type": "text/plain"}
    assert (await client.get("/deployments", headers={"Host": "speed.example.com"})).status == 200
    for origin in ("https://evil.example", "http://speed.example.com",
                   "https://speed.example.com:8443", "null", f"http://127.0.0.1:{client.port}"):
        response = await client.post("/start", data=START, headers={**proxied, "Origin": origin})
        assert response.status == 403, origin
        assert "error" in await response.json()
    assert await deployments(client) == []
    # public_url's host is not a loopback name: its own http origin does not count.
    own_http = {"Host": "speed.example.com:9", "Origin": "http://speed.example.com:9",
                "Content-Type": "text/plain"}
    assert (await client.post("/start", data=START, headers=own_http)).status == 403


@pytest.mark.parametrize("host", ["speed.example.com", "127.0.0.1:{port}"])
async def test_buttons_work_behind_an_https_proxy(make_client, host):
    """Item 7: a browser on https://speed.example.com sends that Origin, whether or not the proxy
    passes its Host through (nginx's default sends its upstream, 127.0.0.1:P). Asserts: start,
    cancel and redeploy succeed."""
    client = await make_client(server__public_url=PUBLIC, auth__api_tokens=[TOKEN])
    browser = {**BEARER, "Host": host.format(port=client.port), "Origin": PUBLIC,
               "Sec-Fetch-Site": "same-origin"}
    response = await client.post("/start", json={"url": CLOSED, "branch": "main"}, headers=browser)
    assert response.status == 201, await response.text()
    deployment_id = (await response.json())["id"]
    assert (await client.post(f"/cancel/{deployment_id}", headers=browser)).status in (200, 409)
    response = await client.post(f"/redeploy/{deployment_id}", headers=browser)
    assert response.status == 201, await response.text()


async def test_sign_in_works_behind_an_https_proxy(make_client):
    """Item 7: the sign-in form posted from https://speed.example.com gets its session."""
    client = await make_client(server__public_url=PUBLIC, auth__api_tokens=[TOKEN])
    response = await client.post("/login", data={"token": TOKEN, "next": "/"},
                                 allow_redirects=False,
                                 headers={"Host": "speed.example.com", "Origin": PUBLIC,
                                          "Sec-Fetch-Site": "same-origin"})
    assert response.status == 303, await response.text()
    assert "speed_session=" in response.headers["Set-Cookie"]


CALL_BACK = """echo "api=$SPEED_API_URL"
wget -q -O- --header "Authorization: Bearer $SPEED_TOKEN" \
     --post-data '{"results": "called back"}' "$SPEED_API_URL/add_results/$SPEED_DEPLOYMENT_ID"
sleep 600
"""


async def test_containers_call_back_on_the_gateway_listener(client, repo):
    """Containers reach SPEED at http://<Docker gateway>:<port>, so that Host is served on the
    listener bound there; a foreign name is misdirected there too."""
    url, _ = repo(CALL_BACK)
    response = await client.post("/start", json={"url": url, "branch": "main"})
    deployment_id = (await response.json())["id"]
    try:
        # Both the container's own output and what it posted back have been recorded.
        shown = await wait_for(lambda: _contains(client, deployment_id, "called back", "api="),
                               timeout=90)
        api = re.search(r"api=http://([0-9.]+):(\d+)", shown)
        gateway, port = api[1], int(api[2])
        path = f"/add_results/{deployment_id}"
        status, _, _ = await exchange(gateway, port, request("POST", path, f"{gateway}:{port}",
                                                               b'{"results": "x"}'))
        assert status == 401  # served: it asks for the deployment's token
        status, _, _ = await exchange(gateway, port, request("POST", path, f"evil.example:{port}",
                                                               b'{"results": "x"}'))
        assert status == 421
    finally:
        await client.post(f"/cancel/{deployment_id}")


async def test_containers_call_back_when_speed_listens_on_every_address(tmp_path, repo,
                                                                        docker_client):
    """With server.host 0.0.0.0 there is no separate callback listener: containers reach the main
    one at the gateway's address, which it answers to as the address the connection came in on."""
    port = free_port()
    config = speed_config(tmp_path, server__host="0.0.0.0", server__port=port,
                          runner__callback_port=0, auth__api_tokens=[TOKEN])
    url, _ = repo(CALL_BACK)
    async with serving(config, "0.0.0.0", port), \
            aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=BEARER) as session:
        response = await session.post("/start", json={"url": url, "branch": "main"})
        deployment_id = (await response.json())["id"]

        async def called_back():
            response = await session.get(f"/results/{deployment_id}")
            return "called back" in (await response.json())["results"]

        try:
            await wait_for(called_back, timeout=90)
        finally:
            await session.post(f"/cancel/{deployment_id}")


async def _contains(client, deployment_id: int, *texts: str) -> str | None:
    """The deployment's results once they contain every one of texts."""
    results = await results_of(client, deployment_id)
    return results if all(text in results for text in texts) else None
