"""Services: a release that stays up behind a real Caddy, switched only once healthy, with
rollback; real Docker, real git, real HTTP through the proxy."""
import asyncio
import contextlib
import datetime
import uuid

import aiohttp
import pytest

from bot.keys import router_key
from tests.conftest import BASE_IMAGE, instance_of, results_of, wait_finished, wait_for
from tests.test_cli import base_url, speed as cli

pytestmark = pytest.mark.usefixtures("app_invariants")

# busybox httpd serves /www; cgi-bin scripts answer what a plain file cannot.
APP_DOCKERFILE = (f"FROM {BASE_IMAGE}\nCOPY www /www\nRUN chmod -R a+x /www/cgi-bin\n"
                  "CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n")
SPEED_YML = ("service:\n  port: 8080\n  drain: 1\n"
             "  health: {path: /healthz, interval: 0.1, deadline: %s}\n")
# A health check that passes on its first call only.
ONCE_THEN_FAILING = """#!/bin/sh
n=$(cat /tmp/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /tmp/count
if [ $n -le 1 ]; then printf 'Status: 200 OK\\r\\n\\r\\nok\\n'
else printf 'Status: 503 Unavailable\\r\\n\\r\\nno\\n'; fi
"""


class App:
    """One repository of a web app whose versions are pushed to one branch."""

    def __init__(self, git_server, name: str):
        self.git_server, self.name = git_server, name
        self.url = git_server.url(name)

    def push(self, version: str, dockerfile: str = APP_DOCKERFILE, speed_yml: str | None = None,
             extra: dict | None = None) -> str:
        files = {"Dockerfile": dockerfile, "www/index.html": f"{version}\n", "www/healthz": "ok\n",
                 "www/cgi-bin/.keep": "", ".speed.yml": speed_yml or SPEED_YML % 20,
                 **(extra or {})}
        return self.git_server.commit(self.name, files)


@pytest.fixture
def app(git_server, request):
    return App(git_server, f"svc-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def speed(make_client, caddy):
    return await make_client(proxy__admin=caddy.admin, proxy__listen=caddy.listen)


async def deploy(client, url: str) -> dict:
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201, await response.text()
    return await wait_finished(client, (await response.json())["id"], timeout=90)


async def environments(client) -> list[dict]:
    return (await (await client.get("/environments")).json())["environments"]


async def through_proxy(caddy, url: str, session: aiohttp.ClientSession) -> tuple[int, str]:
    """GET an environment's URL through the proxy: (status, body)."""
    host = url.removeprefix("http://").split("/", 1)[0].split(":")[0]
    async with session.get(f"http://{caddy.listen}/", headers={"Host": host}) as response:
        return response.status, (await response.text()).strip()


async def test_a_service_goes_live_and_a_redeploy_switches_with_no_failed_request(
        speed, app, caddy, docker_client):
    """Switch: v1 goes live behind the proxy; a client requesting every 20 ms across the
    deployment of v2 sees only 200s, and the version changes exactly once, from v1 to v2.
    The old release is stopped after its drain; its image is kept for rollback."""
    app.push("v1")
    first = await deploy(speed, app.url)
    assert first["status"] == "Succeeded", await results_of(speed, first["id"])
    (environment,) = await environments(speed)
    assert environment["name"] == "production" and environment["live"]["deployment"] == first["id"]
    assert first["reason"] == f"live at {environment['url']}"
    assert first["environment_url"] == environment["url"]
    page = await (await speed.get(f"/deployments/{first['id']}")).text()
    assert f'href="{environment["url"]}"' in page
    async with aiohttp.ClientSession() as session:
        assert await through_proxy(caddy, environment["url"], session) == (200, "v1")
        seen, stop = [], asyncio.Event()

        async def hammer():
            while not stop.is_set():
                seen.append(await through_proxy(caddy, environment["url"], session))
                await asyncio.sleep(0.02)

        hammering = asyncio.create_task(hammer())
        app.push("v2")
        second = await deploy(speed, app.url)
        assert second["status"] == "Succeeded", await results_of(speed, second["id"])
        await wait_for(lambda: asyncio.sleep(0, result=seen and seen[-1] == (200, "v2")))
        stop.set()
        await hammering
    assert {status for status, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
    versions = [body for _, body in seen]
    changes = [(a, b) for a, b in zip(versions, versions[1:]) if a != b]
    assert changes == [("v1", "v2")], changes

    (environment,) = await environments(speed)
    old = next(r for r in environment["releases"] if r["deployment"] == first["id"])

    async def retired():
        (env,) = await environments(speed)
        return next(r for r in env["releases"] if r["id"] == old["id"])["state"] == "retired"

    await wait_for(retired, timeout=15)
    running = docker_client.containers.list(filters={"label": [
        f"speed.instance={instance_of(speed)}", f"speed.deployment={first['id']}"]})
    assert running == []


async def test_a_release_that_never_gets_healthy_fails_and_the_live_one_serves_on(
        speed, app, caddy):
    """Failure: a release whose health path answers 404 is stopped and removed; v1 keeps
    serving; the reason says what the check saw."""
    app.push("v1")
    assert (await deploy(speed, app.url))["status"] == "Succeeded"
    app.push("v2", speed_yml=SPEED_YML.replace("/healthz", "/missing") % 2)
    failed = await deploy(speed, app.url)
    assert failed["status"] == "Failed"
    assert failed["reason"].startswith("health check: GET /missing answered 404 ("), failed["reason"]
    (environment,) = await environments(speed)
    async with aiohttp.ClientSession() as session:
        assert await through_proxy(caddy, environment["url"], session) == (200, "v1")
    states = {r["deployment"]: r["state"] for r in environment["releases"]}
    assert states[failed["id"]] == "failed"


@pytest.mark.parametrize("case, reason", [
    ("never listens", "had the connection closed without an answer"),
    ("wrong port", "had the connection closed without an answer"),
    ("passes once", "answered 503"),
    ("eats its memory", "ran out of memory"),
])
async def test_each_bad_release_ends_in_a_clear_reason_with_the_old_one_serving(
        speed, app, caddy, case, reason):
    """Faults: a release that never listens, listens on another port, passes its check once
    then fails, or runs out of memory, fails saying so; the live release serves on."""
    app.push("v1")
    assert (await deploy(speed, app.url))["status"] == "Succeeded"
    yml = SPEED_YML % 3
    dockerfile, extra = APP_DOCKERFILE, {}
    if case == "never listens":
        dockerfile = f"FROM {BASE_IMAGE}\nCMD [\"sleep\", \"600\"]\n"
    elif case == "wrong port":
        dockerfile = APP_DOCKERFILE.replace("8080", "8081")
    elif case == "passes once":
        yml = yml.replace("/healthz", "/cgi-bin/healthz")
        extra = {"www/cgi-bin/healthz": ONCE_THEN_FAILING}
    else:
        # Its deadline only bounds it: the engine's restarts running out end it. How soon the
        # kernel's OOM killer comes depends on the load (over 3 s on a busy CI machine).
        yml = SPEED_YML % 60 + "resources: {memory: 8m}\n"
        dockerfile = (f"FROM {BASE_IMAGE}\n"
                      "CMD [\"sh\", \"-c\", \"x=$(head -c 100000000 /dev/zero | tr '\\\\0' a)\"]\n")
    app.push("v2", dockerfile=dockerfile, speed_yml=yml, extra=extra)
    failed = await deploy(speed, app.url)
    assert failed["status"] == "Failed"
    assert failed["reason"].startswith("health check: GET ") and reason in failed["reason"], \
        failed["reason"]
    (environment,) = await environments(speed)
    async with aiohttp.ClientSession() as session:
        assert await through_proxy(caddy, environment["url"], session) == (200, "v1")


async def test_rollback_makes_the_earlier_release_live_without_a_build(speed, app, caddy):
    """Rollback: after v2, `speed rollback` (POST /environments/{id}/rollback) makes v1 live
    again — a deployment with trigger rollback that clones and builds nothing."""
    app.push("v1")
    first = await deploy(speed, app.url)
    app.push("v2")
    assert (await deploy(speed, app.url))["status"] == "Succeeded"
    (environment,) = await environments(speed)
    page = await (await speed.get("/environments", headers={"Accept": "text/html"})).text()
    v1 = next(r for r in environment["releases"] if r["deployment"] == first["id"])
    assert f'data-release="{v1["id"]}"' in page and "Roll back to this" in page
    listed = await cli(base_url(speed), "environments")
    assert listed.code == 0 and environment["url"] in listed.out and "healthy" in listed.out
    ran = await cli(base_url(speed), "rollback", str(environment["id"]), "--follow")
    assert ran.code == 0, ran
    rollback = await wait_finished(speed, int(ran.out.split()[0]), timeout=60)
    assert rollback["status"] == "Succeeded", await results_of(speed, rollback["id"])
    assert (rollback["trigger"], rollback["commit"]) == ("rollback", first["commit"])
    assert rollback["phases"]["build"] == 0.0
    results = await results_of(speed, rollback["id"])
    assert "cloning" not in results and "rolling back" in results
    async with aiohttp.ClientSession() as session:
        assert await through_proxy(caddy, environment["url"], session) == (200, "v1")
    for missing in ("999999", "abc"):
        answer = await speed.post(f"/environments/{missing}/rollback")
        assert (answer.status, await answer.json()) == (404, {"error": "Environment not found"})
    # A misspelt "release" is refused: ignored, it rolled back to the newest kept release.
    misspelt = await speed.post(f"/environments/{environment['id']}/rollback", json={"releas": 1})
    assert misspelt.status == 400 and "releas" in (await misspelt.json())["error"]


async def test_caddy_restarted_empty_gets_its_routes_back(speed, app, caddy):
    """The database is the truth: a Caddy that comes back with no config is given the routes
    again, and SPEED stopped leaves live services serving."""
    app.push("v1")
    assert (await deploy(speed, app.url))["status"] == "Succeeded"
    (environment,) = await environments(speed)
    caddy.restart()

    async def served():
        async with aiohttp.ClientSession() as session:
            with contextlib.suppress(aiohttp.ClientError):
                return await through_proxy(caddy, environment["url"], session) == (200, "v1")

    await wait_for(served, timeout=15)
    await speed.close()
    async with aiohttp.ClientSession() as session:
        assert await through_proxy(caddy, environment["url"], session) == (200, "v1")


CRASHING_DOCKERFILE = (
    f"FROM {BASE_IMAGE}\nCOPY www /www\nRUN chmod -R a+x /www/cgi-bin\n"
    # The app exits 1 when asked to crash (/tmp/crash); once /tmp/broken exists it cannot even
    # start: every restart exits 3. The container's files outlive its restarts.
    "CMD [\"sh\", \"-c\", \"[ -f /tmp/broken ] && exit 3; httpd -f -p 8080 -h /www & "
    "while [ ! -f /tmp/crash ]; do sleep 0.1; done; rm /tmp/crash; exit 1\"]\n")
CRASH = "#!/bin/sh\nprintf 'Status: 200 OK\\r\\n\\r\\nbye\\n'\ntouch %s\n"


async def test_a_crashed_release_is_restarted_and_one_that_keeps_crashing_shows_unhealthy(
        speed, app, caddy, docker_client):
    """A live release that exits is restarted by the engine and serves again at the same
    address; one whose restarts keep failing shows unhealthy in /environments and /metrics."""
    app.push("v1", dockerfile=CRASHING_DOCKERFILE,
             extra={"www/cgi-bin/crash": CRASH % "/tmp/crash",
                    "www/cgi-bin/break": CRASH % "/tmp/broken /tmp/crash"})
    assert (await deploy(speed, app.url))["status"] == "Succeeded"
    (environment,) = await environments(speed)
    host = environment["url"].removeprefix("http://").split("/")[0].split(":")[0]
    (container,) = docker_client.containers.list(filters={"label": [
        f"speed.instance={instance_of(speed)}", f"speed.release={environment['live']['id']}"]})

    async def get(path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://{caddy.listen}{path}",
                                       headers={"Host": host}) as response:
                    return response.status, (await response.text()).strip()
        return 0, ""

    await get("/cgi-bin/crash")

    async def restarted_and_serving():
        container.reload()
        return container.attrs["RestartCount"] >= 1 and await get("/") == (200, "v1")

    await wait_for(restarted_and_serving, timeout=30)
    await get("/cgi-bin/break")

    async def unhealthy():
        (env,) = await environments(speed)
        return not env["healthy"] and "exited with code 3" in env["health"] and env

    shown = await wait_for(unhealthy, timeout=60)
    # Restarting (between the engine's tries) or exited (once it gave up).
    assert shown["health"] in ("its container is restarting (exited with code 3)",
                               "its container is exited (exited with code 3)"), shown
    metrics = await (await speed.get("/metrics")).text()
    assert (f'speed_environment_healthy{{environment="production",repository='
            f'"{environment["repository"]}"}} 0.0') in metrics


async def test_a_deployment_cancelled_during_its_switch_leaves_the_live_release_serving(
        speed, app, caddy):
    """Found by a hostile review: a cancel while the healthy release waited for the proxy made
    the release (whose container the cancel had killed) live. Asserts: Cancelled, and v1 is
    still the live, routed release."""
    app.push("v1")
    first = await deploy(speed, app.url)
    router = speed.app[router_key]
    entered, go_on = asyncio.Event(), asyncio.Event()
    route = router.proxy.route

    async def slow_route(host, upstream):  # a Caddy admin call that takes its time
        entered.set()
        await go_on.wait()
        return await route(host, upstream)

    router.proxy.route = slow_route
    app.push("v2")
    response = await speed.post("/start", json={"url": app.url, "branch": "main"})
    second = (await response.json())["id"]
    await asyncio.wait_for(entered.wait(), 60)
    assert (await speed.post(f"/cancel/{second}")).status == 200
    go_on.set()
    assert (await wait_finished(speed, second))["status"] == "Cancelled"
    await router.sync()
    (environment,) = await environments(speed)
    assert environment["live"]["deployment"] == first["id"]
    async with aiohttp.ClientSession() as session:
        assert await through_proxy(caddy, environment["url"], session) == (200, "v1")


async def test_a_domain_in_capitals_is_routed_and_left_alone_once_right(make_client, app, caddy):
    """Found by a hostile review: a proxy.domain in capitals made SPEED rewrite Caddy's config
    every 2 s for good. Asserts: routed, and a second sync changes nothing."""
    speed = await make_client(proxy__admin=caddy.admin, proxy__listen=caddy.listen,
                              proxy__domain="Apps.Example.Test")
    app.push("v1")
    assert (await deploy(speed, app.url))["status"] == "Succeeded"
    router = speed.app[router_key]
    await router.sync()
    assert await router.sync() is False
    (environment,) = await environments(speed)
    assert ".apps.example.test:" in environment["url"]


async def test_a_deployments_timeout_never_cuts_its_switch_in_half(speed, app, caddy):
    """Found by a hostile review: a timeout that fired while the healthy release switched
    killed it after it went live (502 until the next deploy). Asserts: the switch completes —
    v2 live, routed, the deployment Succeeded — though its timeout passed meanwhile."""
    app.push("v1")
    assert (await deploy(speed, app.url))["status"] == "Succeeded"
    router = speed.app[router_key]
    route = router.proxy.route
    deadline_passed = asyncio.Event()

    async def slow_route(host, upstream):  # a Caddy admin call that outlasts the timeout
        await deadline_passed.wait()
        return await route(host, upstream)

    router.proxy.route = slow_route
    app.push("v2", speed_yml=SPEED_YML % 10 + "timeout: 15\n")
    response = await speed.post("/start", json={"url": app.url, "branch": "main"})
    second = (await response.json())["id"]

    async def past_its_timeout():
        info = await (await speed.get(f"/info/{second}")).json()
        started = info["started_at"] and datetime.datetime.fromisoformat(info["started_at"][:-1])
        return started and datetime.datetime.utcnow() - started > datetime.timedelta(seconds=16)

    await wait_for(past_its_timeout, timeout=60)
    deadline_passed.set()
    finished = await wait_finished(speed, second)
    assert finished["status"] == "Succeeded", finished
    (environment,) = await environments(speed)
    async with aiohttp.ClientSession() as session:
        assert await through_proxy(caddy, environment["url"], session) == (200, "v2")
