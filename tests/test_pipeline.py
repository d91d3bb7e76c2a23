"""The deployment pipeline on a real engine: outcomes, environment, callbacks, limits, clean-up."""
import asyncio
import os
import re
import secrets
import signal
import socket
import sqlite3

from runner import git
from tests.conftest import BASE_IMAGE, instance_of, results_of, wait_finished, wait_for


async def start(client, url: str, branch: str = "main") -> int:
    response = await client.post("/start", json={"url": url, "branch": branch})
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


def containers_of(docker_client, client, deployment_id: int) -> list[dict]:
    """This SPEED instance's containers of the deployment, as the engine lists them."""
    return docker_client.api.containers(all=True, filters={"label": [
        f"speed.instance={instance_of(client)}", f"speed.deployment={deployment_id}"]})


async def test_container_gets_its_environment_and_token_is_redacted(client, repo):
    """Leak: a container prints its environment and its $SPEED_TOKEN. Asserts: it gets every
    SPEED_* variable with the right values, and the stored results show the token only as
    [redacted] (in the env listing and the echo alike)."""
    url, commit = repo('env | grep ^SPEED_ | sort\necho "token=$SPEED_TOKEN"\n', branch="release/1.x")
    deployment_id = await start(client, url, "release/1.x")
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded", results
    assert f"SPEED_DEPLOYMENT_ID={deployment_id}\n" in results
    assert f"SPEED_COMMIT={commit}\n" in results and len(commit) == 40
    assert "SPEED_BRANCH=release/1.x\n" in results
    assert f"SPEED_REPO_URL={url}\n" in results
    api_url = results.split("SPEED_API_URL=")[1].split("\n")[0]
    assert api_url.startswith("http://") and not api_url.endswith("/")
    # The token itself never reaches the stored results.
    assert "SPEED_TOKEN=[redacted]\n" in results and "token=[redacted]\n" in results


CALLBACK_SCRIPT = """\
post() { wget -q -O- --header "Authorization: Bearer $1" --post-data "$3" "$SPEED_API_URL$2" 2>&1; }
post "$SPEED_TOKEN" /add_results/$SPEED_DEPLOYMENT_ID '{"results": "added by the container"}'
post "$SPEED_TOKEN" /update '{"id": '$SPEED_DEPLOYMENT_ID', "new_results": "halfway there"}'
echo "other: $(post "$SPEED_TOKEN" /add_results/$OTHER '{"results": "intrusion"}')"
echo "forged: $(post not-the-token /add_results/$SPEED_DEPLOYMENT_ID '{"results": "forged"}')"
echo "info: $(wget -q -O- "$SPEED_API_URL/info/$SPEED_DEPLOYMENT_ID" 2>&1)"
"""


async def test_container_calls_back_with_its_own_token_only(client, repo):
    """Attack: a container calls back on $SPEED_API_URL with its own token for its own deployment,
    with its token for another deployment's /add_results, with a forged token, and asks for /info.
    Asserts: its own /add_results and /update (progress) are stored; the other deployment's results
    stay untouched (401), the forged token gets 401 and stores nothing, and the bridge listener
    serves nothing but the callbacks (404 for /info)."""
    other = await start(client, "http://127.0.0.1:9/none.git")
    await client.post(f"/cancel/{other}")
    url, _ = repo(CALLBACK_SCRIPT.replace("$OTHER", str(other)))
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded", results
    assert "added by the container\n" in results
    assert info["progress"] == "halfway there"
    assert "intrusion" not in await results_of(client, other)
    assert "other: wget: server returned error: HTTP/1.1 401" in results
    assert "forged: wget: server returned error: HTTP/1.1 401" in results
    assert "forged\n" not in results
    # The listener on the bridge serves the two callbacks and nothing else.
    assert "info: wget: server returned error: HTTP/1.1 404" in results


API_TOKEN = "api-token-" + secrets.token_urlsafe(24)
API = {"Authorization": f"Bearer {API_TOKEN}"}

# Every call takes the container's own token. $OTHER is the victim's id.
TRESPASS_SCRIPT = """\
post() { wget -q -O- --header "Authorization: Bearer $SPEED_TOKEN" --post-data "$2" "$SPEED_API_URL$1" 2>&1; }
echo "update-other-status: $(post /update '{"id": $OTHER, "new_results": "Succeeded"}')"
echo "update-other-progress: $(post /update '{"id": $OTHER, "new_results": "hijacked"}')"
echo "add-other: $(post /add_results/$OTHER '{"results": "intrusion"}')"
echo "cancel-other: $(post /cancel/$OTHER '{}')"
echo "redeploy-other: $(post /redeploy/$OTHER '{}')"
echo "start: $(post /start '{"url": "$URL", "branch": "main"}')"
echo "own: $(post /add_results/$SPEED_DEPLOYMENT_ID '{"results": "own results"}')"
echo trespassed
sleep 600
"""


async def test_container_token_cannot_touch_another_deployment_nor_serve_as_an_api_token(
        make_client, repo, docker_client):
    """Attack: with auth.api_tokens set, a running container uses its own $SPEED_TOKEN against a
    second, running deployment: from inside, through $SPEED_API_URL (/update with the other id,
    a status and a progress report; /add_results, /cancel, /redeploy of the other; /start); then
    the same token, read from the container's environment, against the main API (/update,
    /add_results, /cancel and /redeploy of the other and of its own deployment, /start, and reads).
    Asserts: from inside, the other's callbacks get 401 and the API's routes 404 on the bridge
    listener, while its own /add_results works (the token is genuine); on the main API every one
    gets 401 (the token is no API token, not even for its own deployment); afterwards the other
    deployment's /info and results are exactly as before, and no deployment was added."""
    client = await make_client(auth__api_tokens=[API_TOKEN])
    victim_url, _ = repo("echo victim up\nsleep 600\n")
    response = await client.post("/start", json={"url": victim_url, "branch": "main"}, headers=API)
    other = (await response.json())["id"]

    async def results(deployment_id: int) -> str:
        response = await client.get(f"/results/{deployment_id}", headers=API)
        return (await response.json())["results"]

    async def info(deployment_id: int) -> dict:
        return await (await client.get(f"/info/{deployment_id}", headers=API)).json()

    def printed(deployment_id: int, text: str):
        async def check():
            return text in await results(deployment_id)
        return check

    await wait_for(printed(other, "victim up\n"))
    other_before, other_results_before = await info(other), await results(other)
    assert other_before["status"] == "Running"

    url, _ = repo(TRESPASS_SCRIPT.replace("$OTHER", str(other)).replace("$URL", victim_url))
    response = await client.post("/start", json={"url": url, "branch": "main"}, headers=API)
    attacker = (await response.json())["id"]
    await wait_for(printed(attacker, "trespassed\n"))
    inside = await results(attacker)
    for probe in ("update-other-status", "update-other-progress", "add-other"):
        assert f"{probe}: wget: server returned error: HTTP/1.1 401" in inside, (probe, inside)
    for probe in ("cancel-other", "redeploy-other", "start"):
        assert f"{probe}: wget: server returned error: HTTP/1.1 404" in inside, (probe, inside)
    assert 'own: {"message": "Results added successfully"}' in inside and "own results" in inside

    container, = containers_of(docker_client, client, attacker)
    env = docker_client.api.inspect_container(container["Id"])["Config"]["Env"]
    token = next(e.split("=", 1)[1] for e in env if e.startswith("SPEED_TOKEN="))
    as_container = {"Authorization": f"Bearer {token}"}
    for method, path, body in [
            ("POST", "/update", {"id": other, "new_results": "Cancelled"}),
            ("POST", "/update", {"id": other, "new_results": "hijacked"}),
            ("POST", f"/add_results/{other}", {"results": "intrusion"}),
            ("POST", f"/cancel/{other}", None), ("POST", f"/redeploy/{other}", None),
            ("POST", f"/cancel/{attacker}", None), ("POST", f"/redeploy/{attacker}", None),
            ("POST", "/start", {"url": victim_url, "branch": "main"}),
            ("GET", f"/info/{other}", None), ("GET", f"/results/{other}", None),
            ("GET", "/deployments", None), ("GET", f"/deployments/{other}/events", None)]:
        response = await client.request(method, path, json=body, headers=as_container)
        assert response.status == 401, (method, path, body, await response.text())
    # The same token does work for its own deployment's callback on the main API.
    response = await client.post(f"/add_results/{attacker}", json={"results": "own again"},
                                 headers=as_container)
    assert response.status == 200

    assert await info(other) == other_before
    assert await results(other) == other_results_before
    listed = await (await client.get("/deployments", headers=API)).json()
    assert [d["id"] for d in listed["deployments"]] == [attacker, other]
    for deployment_id in (attacker, other):
        assert (await client.post(f"/cancel/{deployment_id}", headers=API)).status == 200
        await wait_for(lambda: asyncio.to_thread(
            lambda: containers_of(docker_client, client, deployment_id) == []))


async def test_nonzero_exit_fails_with_the_code(client, repo):
    url, _ = repo("echo about to fail\nexit 3\n")
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    assert info["status"] == "Failed"
    assert info["exit_code"] == 3
    assert "exit code 3" in info["reason"]
    assert "about to fail" in await results_of(client, deployment_id)


async def test_missing_branch_fails_with_gits_message(client, repo):
    url, _ = repo("true\n")
    deployment_id = await start(client, url, "no-such-branch")
    info = await wait_finished(client, deployment_id)
    assert info["status"] == "Failed"
    results = await results_of(client, deployment_id)
    assert "Remote branch no-such-branch not found" in results
    assert info["commit"] is None
    # The reason says git's why, not only its exit code (found by a hostile user).
    assert info["reason"].startswith("git clone failed (exit code 128): fatal: ") and \
        "no-such-branch" in info["reason"], info["reason"]


async def test_unreachable_repository_fails(client, git_server):
    deployment_id = await start(client, git_server.url("does-not-exist"))
    info = await wait_finished(client, deployment_id)
    assert info["status"] == "Failed"
    assert info["reason"].startswith("git ") and "failed (exit code" in info["reason"]
    assert "not found" in info["reason"] and "fatal: " in info["reason"], info["reason"]
    assert "not found" in (await results_of(client, deployment_id)).lower()


async def test_missing_dockerfile_fails_clearly(client, repo):
    url, _ = repo("true\n", dockerfile=None)
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    assert info["status"] == "Failed"
    assert info["reason"] == "no Dockerfile at the repository root"


async def test_build_error_fails_with_the_build_log(client, repo):
    url, _ = repo("true\n", dockerfile=f"FROM {BASE_IMAGE}\nRUN echo building-step && exit 7\n")
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Failed"
    assert info["reason"].startswith("build failed")
    assert "building-step" in results


async def test_timeout_kills_the_container(make_client, repo, docker_client):
    """Fault: a container that never exits (sleep 600) under a 10 s runner.timeout. Asserts: Failed,
    reason exactly 'timed out after 10 s', its output before the kill is stored, and its container
    is removed."""
    client = await make_client(runner__timeout=10)
    url, _ = repo("echo started\nsleep 600\n")
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id, timeout=30)
    assert info["status"] == "Failed"
    assert info["reason"] == "timed out after 10 s"
    assert "started" in await results_of(client, deployment_id)
    await wait_for(lambda: asyncio.to_thread(
        lambda: containers_of(docker_client, client, deployment_id) == []))


async def test_output_streams_while_running_and_cancel_stops_it(client, repo, docker_client):
    url, _ = repo("echo first line\nsleep 600\n")
    deployment_id = await start(client, url)

    async def first_line_stored():
        return "first line" in await results_of(client, deployment_id)

    await wait_for(first_line_stored)
    assert (await (await client.get(f"/info/{deployment_id}")).json())["status"] == "Running"
    response = await client.post(f"/cancel/{deployment_id}")
    assert response.status == 200
    assert (await response.json())["status"] == "Cancelled"

    async def container_gone():
        return containers_of(docker_client, client, deployment_id) == []

    await wait_for(container_gone, timeout=30)
    info = await wait_finished(client, deployment_id)
    assert info["status"] == "Cancelled"
    assert (await client.post(f"/cancel/{deployment_id}")).status == 409


async def test_container_runs_unprivileged_with_limits(make_client, repo, docker_client):
    """Attack surface: the container's configuration, as the engine reports it. Asserts: not
    privileged, memory, CPU and process limits as configured, no-new-privileges, and no Docker
    socket bound into it."""
    client = await make_client(runner__memory="64m", runner__cpus=0.5, runner__pids=64)
    url, _ = repo("echo up\nsleep 600\n")
    deployment_id = await start(client, url)

    async def container():
        found = containers_of(docker_client, client, deployment_id)
        return found[0] if found and found[0]["State"] == "running" else None

    host_config = docker_client.api.inspect_container((await wait_for(container))["Id"])["HostConfig"]
    assert host_config["Privileged"] is False
    assert host_config["Memory"] == 64 * 1024 * 1024
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["PidsLimit"] == 64
    assert "no-new-privileges" in host_config["SecurityOpt"]
    assert not any("docker.sock" in bind for bind in host_config.get("Binds") or [])
    await client.post(f"/cancel/{deployment_id}")
    await wait_finished(client, deployment_id)


async def test_stored_output_is_capped_with_a_marker(make_client, repo):
    """Fault: 2000 lines against a 4096-byte runner.max_log_bytes. Asserts: Succeeded, a truncation
    marker, the last line not stored, and under 5 KiB stored."""
    client = await make_client(runner__max_log_bytes=4096)
    url, _ = repo("i=0\nwhile [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done\n")
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded"
    assert "[output truncated:" in results
    assert "line 1999" not in results
    assert len(results.encode()) < 4096 + 1024


async def test_finished_deployment_leaves_no_container_or_workspace(client, repo, docker_client,
                                                                    tmp_path):
    url, _ = repo("echo done\n")
    deployment_id = await start(client, url)
    assert (await wait_finished(client, deployment_id))["status"] == "Succeeded"
    # The outcome is recorded first (a crash must not lose it), then the container goes.
    await wait_for(lambda: asyncio.to_thread(
        lambda: containers_of(docker_client, client, deployment_id) == []))
    # Each replica clones in a folder of its own, which stays while it runs: empty.
    assert [p.name for p in (tmp_path / "speed" / "work").rglob("*")
            if not p.name.startswith("replica-")] == []


async def test_shutting_down_as_a_deployment_finishes_lets_go_then_removes_its_container(
        aiohttp_client, tmp_path, repo, docker_client, base_image):
    """SPEED stopped while a run that recorded its outcome removes its container: the shutdown
    gives up the lease at once (what it let go is adopted meanwhile), then waits for the
    container to go, as no later start may come to sweep it."""
    from bot.app import create_app
    from runner.docker_backend import DockerBackend
    from tests.conftest import TEST_INSTANCES, speed_config

    class HeldCleanUp(DockerBackend):
        """The machine's engine; removing a container waits until the test says so."""

        def __init__(self):
            super().__init__()
            self.held, self.go = asyncio.Event(), asyncio.Event()

        async def cleanup(self, *args, **kwargs):
            self.held.set()
            await self.go.wait()
            return await super().cleanup(*args, **kwargs)

    backend = HeldCleanUp()
    client = await aiohttp_client(create_app(speed_config(tmp_path), backend))
    TEST_INSTANCES.add(instance_of(client))
    url, _ = repo("echo done\n")
    deployment_id = await start(client, url)
    await backend.held.wait()  # the outcome is recorded, the container not yet removed
    closing = asyncio.create_task(client.close())
    database = sqlite3.connect(tmp_path / "speed.db")

    async def lease_given_up():
        return database.execute("SELECT heartbeat FROM replica").fetchall() == [(0,)]

    await wait_for(lease_given_up, timeout=10, interval=0.01)
    assert not closing.done()  # still waiting for the container to go
    backend.go.set()
    await closing
    assert containers_of(docker_client, client, deployment_id) == []
    assert database.execute("SELECT status FROM deployment WHERE id = ?",
                            (deployment_id,)).fetchall() == [("Succeeded",)]
    database.close()


async def test_at_most_max_concurrent_run_in_arrival_order(make_client, repo):
    client = await make_client(runner__max_concurrent=2)
    url, _ = repo("sleep 1\n")
    ids = [await start(client, url) for _ in range(5)]
    peak = 0

    async def all_finished():
        nonlocal peak
        listing = (await (await client.get("/deployments?status=Running")).json())["deployments"]
        peak = max(peak, len(listing))
        infos = [await (await client.get(f"/info/{i}")).json() for i in ids]
        return infos if all(i["status"] == "Succeeded" for i in infos) else None

    infos = await wait_for(all_finished, timeout=90)
    assert 1 <= peak <= 2
    started = [info["started_at"] for info in infos]
    assert started == sorted(started)


async def test_forty_concurrent_starts_all_recorded_and_run(make_client, repo):
    client = await make_client(runner__max_concurrent=4)
    url, _ = repo("echo ok\n")
    responses = await asyncio.gather(
        *(client.post("/start", json={"url": url, "branch": "main"}) for _ in range(40)))
    assert [r.status for r in responses] == [201] * 40
    ids = [(await r.json())["id"] for r in responses]
    assert len(set(ids)) == 40
    for deployment_id in ids:
        info = await wait_finished(client, deployment_id, timeout=120)
        assert info["status"] == "Succeeded", await results_of(client, deployment_id)


async def test_images_are_kept_bounded(make_client, repo, docker_client):
    client = await make_client(runner__keep_images=1)
    ids = []
    for n in range(3):
        url, _ = repo(f"echo image {n}\n")  # a different context each time: a different image
        ids.append(await start(client, url))
        assert (await wait_finished(client, ids[-1]))["status"] == "Succeeded"
    repository = f"speed-{instance_of(client)}"

    async def pruned():  # pruning follows the final status
        tags = [tag for image in docker_client.api.images(repository) for tag in image["RepoTags"]]
        # <id>-<random part>: a name another deployment cannot guess
        return len(tags) == 1 and re.fullmatch(rf"{repository}:{ids[-1]}-[0-9a-f]{{16}}", tags[0])

    await wait_for(pruned, timeout=10)


async def test_instances_sharing_an_engine_do_not_mix(make_client, repo, docker_client):
    first, second = await make_client("first"), await make_client("second")
    url, _ = repo("echo running\nsleep 600\n")
    first_id, second_id = await start(first, url), await start(second, url)
    assert first_id == second_id == 1  # same ids, separate databases

    async def both_running():
        return all([c["State"] for c in containers_of(docker_client, client, 1)] == ["running"]
                   for client in (first, second))

    await wait_for(both_running)
    assert (await first.post("/cancel/1")).status == 200
    assert (await wait_finished(first, 1))["status"] == "Cancelled"
    assert (await (await second.get("/info/1")).json())["status"] == "Running"
    assert containers_of(docker_client, second, 1)[0]["State"] == "running"
    await second.post("/cancel/1")
    await wait_finished(second, 1)



async def test_a_commit_built_before_reuses_its_image(client, repo, git_server):
    url, commit = repo('echo "running $SPEED_COMMIT"\n')
    first = await start(client, url)
    assert (await wait_finished(client, first))["status"] == "Succeeded"
    second = await start(client, url)
    info = await wait_finished(client, second)
    results = await results_of(client, second)
    assert (info["status"], info["commit"]) == ("Succeeded", commit)
    assert f"reusing the image already built of {commit}" in results
    assert "cloning" not in results and f"running {commit}" in results
    # A new commit is cloned and built again.
    newer = git_server.commit(url.rsplit("/", 1)[1].removesuffix(".git"), {"more.txt": "x"})
    third = await start(client, url)
    assert (await wait_finished(client, third))["commit"] == newer
    assert "cloning" in await results_of(client, third)


async def test_a_push_between_naming_the_commit_and_cloning_builds_the_named_one(
        client, repo, git_server, monkeypatch):
    """The clone starts beside the ls-remote that names the commit (and so the image, in the
    database): a push landing between the two still gets the named commit built and run."""
    url, commit = repo("cat /app/version.txt\n", extra={"version.txt": "the named one\n"})
    name = url.rsplit("/", 1)[1].removesuffix(".git")
    named = asyncio.Event()
    resolve, checkout = git.resolve, git.checkout

    async def resolved(*args, **kwargs):
        found = await resolve(*args, **kwargs)
        named.set()
        return found

    async def pushed_then_cloned(*args, **kwargs):
        await named.wait()
        await asyncio.to_thread(git_server.commit, name, {"version.txt": "pushed after\n"})
        return await checkout(*args, **kwargs)

    monkeypatch.setattr(git, "resolve", resolved)
    monkeypatch.setattr(git, "checkout", pushed_then_cloned)
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert (info["status"], info["commit"]) == ("Succeeded", commit), results
    assert "the named one" in results and "pushed after" not in results


async def test_an_image_is_spared_from_pruning_from_the_moment_it_is_made(
        aiohttp_client, tmp_path, repo, base_image):
    """Every replica's pruning spares the images the database names for unfinished deployments:
    a deployment's image is named there before it is built or tagged (a replica pruning in
    between untagged an image another was about to run: seen with three replicas)."""
    from bot.app import create_app
    from bot.keys import store_key
    from runner.docker_backend import DockerBackend
    from storage.releases import images_in_use
    from tests.conftest import TEST_INSTANCES, speed_config

    class Watched(DockerBackend):
        """The machine's engine; says whether each image was spared when it was made."""

        def __init__(self):
            super().__init__()
            self.spared: list[bool] = []

        async def _spared(self, tag: str) -> None:
            self.spared.append(tag in await app[store_key].run(images_in_use))

        async def build(self, source, tag, *args, **kwargs):
            await self._spared(tag)
            return await super().build(source, tag, *args, **kwargs)

        async def reuse_image(self, candidates, tag):
            await self._spared(tag)
            return await super().reuse_image(candidates, tag)

    backend = Watched()
    app = create_app(speed_config(tmp_path), backend)
    client = await aiohttp_client(app)
    TEST_INSTANCES.add(instance_of(client))
    url, _ = repo("echo built\n")
    for _ in range(2):  # built, then reused
        assert (await wait_finished(client, await start(client, url)))["status"] == "Succeeded"
    assert len(backend.spared) >= 2 and all(backend.spared), backend.spared


async def test_reuse_can_be_turned_off(make_client, repo):
    client = await make_client(runner__reuse_images=False)
    url, _ = repo("echo fresh\n")
    for _ in range(2):
        deployment_id = await start(client, url)
        assert (await wait_finished(client, deployment_id))["status"] == "Succeeded"
        assert "cloning" in await results_of(client, deployment_id)


LONG_LINE_THEN_EXIT = "head -c 3300000 /dev/zero | tr '\\0' '\\1'; echo\n"


async def test_a_long_line_printed_just_before_the_exit_is_stored_whole(client, repo):
    """Loss (found by a hostile review): a container printing a 3.3 MB line and exiting at once
    kept 1-2 MB of it in most runs: Docker's followed stream ended early, and every 16 KB piece
    of a long line carries the same time, so resuming after a time skipped the rest. Asserts:
    four such deployments each store every byte."""
    url, _ = repo(LONG_LINE_THEN_EXIT)
    ids = [await start(client, url) for _ in range(4)]
    for deployment_id in ids:
        assert (await wait_finished(client, deployment_id))["status"] == "Succeeded"
        assert (await results_of(client, deployment_id)).count("\x01") == 3_300_000


async def test_a_log_cursor_resumes_inside_a_long_line(docker_client, base_image):
    """Unit, real engine: pieces of one long line share one time; a cursor (time, pieces seen)
    resumes after exactly the pieces seen, and a character cut between pieces is whole."""
    from runner.base import LogCursor
    from runner.docker_backend import DockerBackend
    api = docker_client.api
    container = api.create_container(base_image, ["sh", "-c", "head -c 70000 /dev/zero | "
                                                  "tr '\\0' 'x'; printf 'é%.0s' $(seq 20000)"])
    try:
        api.start(container)
        api.wait(container)
        backend = DockerBackend()
        pieces = [piece async for piece in backend.logs(container["Id"], None, follow=False)]
        assert len({at for at, _ in pieces}) < len(pieces)  # pieces share a time
        whole = "".join(text for _, text in pieces)
        assert whole == "x" * 70000 + "é" * 20000 and "\ufffd" not in whole
        first = pieces[0][0]
        seen = sum(1 for at, _ in pieces[:3] if at == first)
        rest = [p async for p in backend.logs(container["Id"], LogCursor(first, seen), False)]
        assert [at for at, _ in rest] == [at for at, _ in pieces[seen:]]
    finally:
        api.remove_container(container, force=True)


def processes_naming(text: str) -> list[int]:
    """The pids of the processes whose command line holds text."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


async def test_a_git_cancelled_in_any_turn_of_its_start_leaves_no_git_running(tmp_path):
    """Cancelled in the turn while asyncio connected its pipes, a clone's git ran on without a
    deadline (asyncio killed timeout(1) alone), and the cancelled task waited for it: with a
    server that never answers, for ever (found by a hostile review). Each turn from 0 to 8."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(100)  # accepts connections, never answers
        url = f"http://127.0.0.1:{server.getsockname()[1]}/app.git"
        for turns in range(9):
            clone = asyncio.ensure_future(git.checkout(url, "main", str(tmp_path / str(turns)), 600))
            for _ in range(turns):
                await asyncio.sleep(0)
            clone.cancel()
            done, _ = await asyncio.wait([clone], timeout=30)
            left = processes_naming(url)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            assert done and not left, (turns, left)
