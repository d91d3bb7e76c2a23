"""Pull-request previews: a pull request deploys to pr-<n> beside production, follows its pushes,
and goes away when closed; GitHub sees environment_url and, at the end, inactive."""
from typing import Callable

import aiohttp
import pytest

from bot.keys import reporter_key, worker_key
from tests.conftest import instance_of, wait_finished
from tests.test_github import SECRET, TOKEN, deliver, fake  # noqa: F401 - fake is a fixture
from tests.test_services import APP_DOCKERFILE, SPEED_YML, through_proxy
from tests.webhooks import pull_request_payload, push_payload

pytestmark = pytest.mark.usefixtures("app_invariants")

RULES = [{"match": "svc/*", "branches": ["main"], "pull_requests": True,
          "environment": "production"}]


def files(version: str) -> dict:
    return {"Dockerfile": APP_DOCKERFILE, "www/index.html": f"{version}\n", "www/healthz": "ok\n",
            "www/cgi-bin/.keep": "", ".speed.yml": SPEED_YML % 20}


def a_pull_request(git_server, name: str, number: int) -> Callable[[str], dict]:
    """A repository with a feature branch; the payload of its pull request's events by action."""
    full_name = name.lower().replace("_", "-")
    url = git_server.url(full_name)
    head = git_server.commit(full_name, files("pr-v1"), branch="feature")
    return lambda action: pull_request_payload(full_name, url, action=action, number=number,
                                               head_sha=head)


@pytest.fixture
async def speed(make_client, fake, caddy, git_server):  # noqa: F811
    """SPEED behind the private Caddy, with the stand-in GitHub and a rule for svc/*."""
    return await make_client(
        proxy__admin=caddy.admin, proxy__listen=caddy.listen, github__webhook_secret=SECRET,
        github__token=TOKEN, github__api_url=fake.url, github__web_url=git_server.base_url,
        repos=RULES)


async def test_a_pull_request_previews_beside_production_and_goes_when_closed(
        speed, fake, caddy, git_server, docker_client, request):  # noqa: F811
    full_name = f"svc/preview-{request.node.name[-8:]}".lower().replace("_", "-")
    url = git_server.url(full_name)

    async def delivered(event: str, payload: dict) -> dict:
        response = await deliver(speed, event, payload)
        assert response.status == 202, await response.text()
        finished = await wait_finished(speed, (await response.json())["id"], timeout=90)
        assert finished["status"] == "Succeeded", finished
        return finished

    main = git_server.commit(full_name, files("main-v1"))
    await delivered("push", push_payload(full_name, url, after=main))
    head = git_server.commit(full_name, files("pr-v1"), branch="feature")
    await delivered("pull_request", pull_request_payload(full_name, url, number=5, head_sha=head))

    listed = (await (await speed.get("/environments")).json())["environments"]
    by_name = {e["name"]: e for e in listed}
    assert set(by_name) == {"production", "pr-5"}
    async with aiohttp.ClientSession() as session:
        assert await through_proxy(caddy, by_name["production"]["url"], session) == (200, "main-v1")
        assert await through_proxy(caddy, by_name["pr-5"]["url"], session) == (200, "pr-v1")
        head = git_server.commit(full_name, files("pr-v2"), branch="feature")
        await delivered("pull_request", pull_request_payload(
            full_name, url, action="synchronize", number=5, head_sha=head))
        assert await through_proxy(caddy, by_name["pr-5"]["url"], session) == (200, "pr-v2")

        await speed.app[reporter_key].idle()
        (release,) = docker_client.containers.list(filters={"label": [
            f"speed.instance={instance_of(speed)}",
            f"speed.release={by_name['pr-5']['live']['id']}"]})
        assert "SPEED_ENVIRONMENT=pr-5" in release.attrs["Config"]["Env"]
        previews = [d for d in fake.deployments if d["environment"] == "pr-5"]
        assert len(previews) == 2
        last = fake.deployment_statuses[previews[-1]["id"]][-1]
        assert (last["state"], last["environment_url"]) == ("success", by_name["pr-5"]["url"])

        closed = await deliver(speed, "pull_request", pull_request_payload(
            full_name, url, action="closed", number=5, head_sha=head))
        assert closed.status == 200, await closed.text()
        await speed.app[worker_key].pipeline.retirer.idle()  # route, containers: after the answer
        await speed.app[reporter_key].idle()
        listed = (await (await speed.get("/environments")).json())["environments"]
        assert [e["name"] for e in listed] == ["production"]
        status, _ = await through_proxy(caddy, by_name["pr-5"]["url"], session)
        assert status == 404
        assert await through_proxy(caddy, by_name["production"]["url"], session) == (200, "main-v1")
    mine = docker_client.containers.list(
        all=True, filters={"label": f"speed.instance={instance_of(speed)}"})
    preview_containers = [c for c in mine if c.labels.get("speed.release") in
                          {str(r["id"]) for r in by_name["pr-5"]["releases"]}]
    assert preview_containers == []
    for created in previews:
        assert fake.deployment_statuses[created["id"]][-1]["state"] == "inactive"


async def test_a_closed_preview_stays_closed_whatever_github_sends_again(
        speed, git_server, request):
    """Found by a hostile review: the same `reopened` delivery sent again after a second close
    brought the preview back. Asserts: reopened deploys; after closed, the redelivered
    reopened (same delivery id) and a late synchronize leave pr-9 torn down."""
    pr = a_pull_request(git_server, f"svc/reopen-{request.node.name[-6:]}", 9)
    assert (await deliver(speed, "pull_request", pr("closed"))).status == 200
    reopened = await deliver(speed, "pull_request", pr("reopened"), guid="reopen-1")
    assert reopened.status == 202
    assert (await wait_finished(speed, (await reopened.json())["id"], 90))["status"] == "Succeeded"
    assert (await deliver(speed, "pull_request", pr("closed"))).status == 200
    again = await deliver(speed, "pull_request", pr("reopened"), guid="reopen-1")
    assert again.status == 202  # answered as the first time, nothing new done
    late = await deliver(speed, "pull_request", pr("synchronize"))
    finished = await wait_finished(speed, (await late.json())["id"], 90)
    assert finished["status"] == "Failed" and "pull request was closed" in finished["reason"]
    listed = (await (await speed.get("/environments")).json())["environments"]
    assert listed == []


async def test_a_pull_request_closed_before_its_preview_was_made_never_brings_it_up(
        speed, git_server, request):
    """Found by a hostile user: closed before any preview was made (here: no deployment of it
    yet), a late synchronize made pr-11 live for a closed pull request, for good. Asserts: it
    fails saying the pull request was closed; no environment is listed."""
    pr = a_pull_request(git_server, f"svc/unmade-{request.node.name[-6:]}", 11)
    assert (await deliver(speed, "pull_request", pr("closed"))).status == 200
    late = await deliver(speed, "pull_request", pr("synchronize"))
    finished = await wait_finished(speed, (await late.json())["id"], 90)
    assert finished["status"] == "Failed" and "pull request was closed" in finished["reason"]
    assert (await (await speed.get("/environments")).json())["environments"] == []
