"""Deployments end to end through SPEED with runner.backend: swarm (a real two-node swarm)."""
import docker
import pytest

from bot.keys import backend_key

from tests.conftest import free_port, instance_of, results_of, wait_finished, wait_for

CALLBACK = ('wget -q -O- --header "Authorization: Bearer $SPEED_TOKEN" '
            '--post-data "{\\"results\\": \\"called back\\\\n\\"}" '
            '"$SPEED_API_URL/add_results/$SPEED_DEPLOYMENT_ID"\n')


@pytest.fixture
async def swarm_speed(make_client, swarm):
    """Start SPEED on the swarm: images through its registry, containers reaching it at the
    address every node reaches. What it leaves on the swarm (a live release) goes afterwards."""
    made = []

    async def make(**overrides):
        client = await make_client(runner__backend="swarm", runner__registry=swarm.registry,
                                   runner__swarm_host=swarm.swarm_host,
                                   runner__callback_host=swarm.callback_host,
                                   runner__callback_port=free_port(), **overrides)
        made.append(client)
        return client

    yield make
    local = docker.from_env()
    for client in made:
        for service in services_of(swarm, client):
            service.remove()  # releases only: every job's service went when its run ended
        repository = f"{swarm.registry}/speed-{instance_of(client)}"
        for image in local.images.list(name=repository):
            # Its own tags only: an image built of the same files elsewhere (tests/test_services'
            # app) is one image with their tags too, and removing those broke a rollback there.
            for tag in image.tags:
                if tag.startswith(repository + ":"):
                    local.images.remove(tag, force=True)


@pytest.fixture
async def swarm_client(swarm_speed):
    return await swarm_speed()


def services_of(swarm, client) -> list:
    manager = docker.DockerClient(base_url=swarm.swarm_host)
    return manager.services.list(filters={"label": f"speed.instance={instance_of(client)}"})


async def test_a_deployment_runs_on_the_swarm_and_calls_back(swarm, swarm_client, repo):
    url, commit = repo("echo hello from a swarm task\n" + CALLBACK)
    response = await swarm_client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201
    deployment_id = (await response.json())["id"]
    info = await wait_finished(swarm_client, deployment_id)
    results = await results_of(swarm_client, deployment_id)
    assert info["status"] == "Succeeded", results
    assert "hello from a swarm task" in results and "called back" in results
    # Everything SPEED made on the swarm goes when the deployment is done.
    assert await wait_for(lambda: _none_left(swarm, swarm_client), timeout=10)


async def _none_left(swarm, client) -> bool:
    """No service of this SPEED on the swarm, and no container of it running on any node."""
    selector = {"label": f"speed.instance={instance_of(client)}"}
    containers = [c for engine in (swarm.swarm_host, swarm.worker_host)
                  for c in docker.DockerClient(base_url=engine).api.containers(filters=selector)]
    return not services_of(swarm, client) and not containers


async def test_a_failing_and_a_timed_out_deployment_on_the_swarm(swarm, swarm_client, repo):
    url, _ = repo("echo about to fail; exit 7\n")
    failed = (await (await swarm_client.post("/start", json={"url": url, "branch": "main"})).json())["id"]
    url, _ = repo("echo sleeping; sleep 120\n", extra={".speed.yml": "timeout: 10\n"})
    slow = (await (await swarm_client.post("/start", json={"url": url, "branch": "main"})).json())["id"]
    info = await wait_finished(swarm_client, failed)
    assert info["status"] == "Failed" and info["exit_code"] == 7, info
    assert "about to fail" in await results_of(swarm_client, failed)
    info = await wait_finished(swarm_client, slow)
    assert info["status"] == "Failed" and "timed out" in info["reason"], info
    # Its task was running (the timeout counts from the clone: 10 s leave room for the build
    # and the push), and the kill removed it (below).
    assert "starting the container" in await results_of(swarm_client, slow)
    assert await wait_for(lambda: _none_left(swarm, swarm_client), timeout=15)


async def test_a_service_on_the_swarm_goes_live_behind_the_proxy_and_switches(
        swarm, swarm_speed, caddy, git_server, base_image):
    """A release runs as a swarm service, published in host mode on the node SPEED placed it
    on; the proxy routes to that node's address; a second release takes over, the first goes."""
    from tests.test_services import App, deploy, environments, through_proxy

    speed = await swarm_speed(proxy__admin=caddy.admin, proxy__listen=caddy.listen)
    app = App(git_server, f"swarm-svc-{instance_of(speed)}")
    app.push("v1")
    first = await deploy(speed, app.url)
    assert first["status"] == "Succeeded", await results_of(speed, first["id"])
    (environment,) = await environments(speed)
    (service,) = [s for s in services_of(swarm, speed)
                  if s.attrs["Spec"]["Labels"].get("speed.deployment") == str(first["id"])]
    (port,) = service.attrs["Spec"]["EndpointSpec"]["Ports"]
    assert (port["TargetPort"], port["PublishMode"]) == (8080, "host")
    upstream = await speed.app[backend_key].address(service.id, 8080)
    nodes = {node["Status"]["Addr"] for node in docker.DockerClient(
        base_url=swarm.swarm_host).api.nodes()}
    assert upstream.split(":")[0] in nodes  # a node's address, not loopback
    import aiohttp
    async with aiohttp.ClientSession() as session:
        assert await through_proxy(caddy, environment["url"], session) == (200, "v1")
        app.push("v2")
        second = await deploy(speed, app.url)
        assert second["status"] == "Succeeded", await results_of(speed, second["id"])
        assert await through_proxy(caddy, environment["url"], session) == (200, "v2")

    async def first_gone():
        return not [s for s in services_of(swarm, speed)
                    if s.attrs["Spec"]["Labels"].get("speed.deployment") == str(first["id"])]

    assert await wait_for(first_gone, timeout=20)
