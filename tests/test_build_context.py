"""What a repository's build context may make SPEED read, and which images a build may use."""
import os
import re
import uuid

import docker
import pytest

from bot.keys import store_key
from runner import context
from runner.errors import BuildFailed
from storage import deployments as queries
from storage.db import open_database
from tests.conftest import (BASE_IMAGE, DOCKERFILE, instance_of, results_of, wait_finished,
                            wait_for)

pytestmark = pytest.mark.usefixtures("app_invariants")


async def start(client, url: str) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


def symlinked(git_server, name: str, links: dict[str, str], files: dict[str, str]) -> str:
    """A repository holding files and symbolic links (path -> target); returns its URL."""
    git_server.commit(name, files)
    work = git_server.work / name
    for path, target in links.items():
        os.symlink(target, work / path)
    git_server.commit(name, {})  # commits the links with --all
    return git_server.url(name)


@pytest.mark.parametrize("link, target", [(".dockerignore", "/dev/zero"),
                                          (".dockerignore", "/etc/shadow"),
                                          ("Dockerfile", "/etc/passwd"),
                                          (".dockerignore", "../../../../../../dev/urandom")])
async def test_a_link_out_of_the_repository_fails_once_and_reads_nothing(
        client, git_server, base_image, link, target):
    """Attack: .dockerignore (or the Dockerfile) is a symlink to /dev/zero or a host file; the
    Docker SDK read it whole, growing SPEED by 1 GB/s, and the requeued deployment crashed it
    again. Asserts: the deployment fails once, at once, naming the file and why; it is not queued
    again (attempts 1); nothing of the host file reaches the results."""
    files = {"run.sh": "echo ran\n", **({} if link == "Dockerfile" else {"Dockerfile": DOCKERFILE})}
    name = re.sub(r"[^a-z0-9]+", "-", f"link {link} {target}")
    url = symlinked(git_server, name, {link: target}, files)
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id, timeout=60)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Failed", results
    assert info["reason"] == f"{link}: leads out of the repository (SPEED follows no link out of it)"
    assert "root:" not in results and "ran\n" not in results
    assert (await client.app[store_key].run(queries.get, deployment_id)).attempts == 1


def test_read_file_refuses_what_is_not_a_small_regular_file_inside(tmp_path):
    """Unit: read_file reads a regular file inside the root; refuses a FIFO without blocking,
    a directory, a file over the limit, an absolute path, `..`, and links out; follows a link
    that stays inside; a missing file is None."""
    (tmp_path / "small").write_text("ok")
    (tmp_path / "big").write_bytes(b"x" * 101)
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    os.symlink("small", tmp_path / "inner-link")
    os.symlink("/etc/hostname", tmp_path / "outer-link")
    os.symlink("dir/../../x", tmp_path / "climbing-link")
    assert context.read_file(str(tmp_path), "small", 100) == b"ok"
    assert context.read_file(str(tmp_path), "inner-link", 100) == b"ok"
    assert context.read_file(str(tmp_path), "missing", 100) is None
    refused = {"fifo": "not a regular file", "dir": "not a regular file",
               "big": "larger than 100 bytes", "outer-link": "leads out of the repository",
               "climbing-link": "leads out of the repository", "../x": "leads out",
               "/etc/hostname": "an absolute path"}
    for path, why in refused.items():
        with pytest.raises(BuildFailed, match=re.escape(why)):
            context.read_file(str(tmp_path), path, 100)


async def test_an_oversized_dockerignore_fails_clearly(client, repo):
    """Bound: a .dockerignore over 64 KiB is refused before the build, naming it."""
    url, _ = repo("echo ran\n", extra={".dockerignore": "#" * (64 * 1024 + 1)})
    info = await wait_finished(client, await start(client, url))
    assert (info["status"], info["reason"]) == ("Failed", ".dockerignore: larger than 65536 bytes")


async def test_dockerignore_is_still_applied_and_host_links_stay_dangling(
        client, git_server, base_image):
    """Held: .dockerignore keeps a file out of the image; a link to a host file arrives in the
    image as a link (dangling there), never as the host file's content."""
    host_file = "/etc/debian_version"  # on this host, not in the image
    url = symlinked(git_server, "ignore-and-links", {"host-link": host_file}, {
        "Dockerfile": DOCKERFILE, ".dockerignore": "# comment\nsecret.txt\n",
        "secret.txt": "do not ship", "run.sh":
            'test -e /app/secret.txt && echo "secret shipped"\n'
            'test -L /app/host-link && echo "link kept: $(readlink /app/host-link)"\n'
            'cat /app/host-link 2>/dev/null || echo "link dangles"\n'})
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded", results
    assert "secret shipped" not in results
    assert f"link kept: {host_file}" in results and "link dangles" in results
    assert open(host_file).read().strip() not in results


async def test_build_logs_name_no_image_and_a_build_cannot_use_another_deployments_image(
        client, repo, docker_client):
    """Attack: the build log printed `Successfully tagged speed-<instance>:<id>`, and a repository
    built `FROM` that name to read another (private) deployment's files. Asserts: build logs hold
    no image name or id line; the image's name has a random part (the old guessable name does not
    exist); a Dockerfile naming one of SPEED's images in FROM, COPY --from or RUN --mount from= is
    refused before building, and one using the old guessable name finds no such image."""
    victim_url, _ = repo("cat /app/secret.txt\n", extra={"secret.txt": "victim's secret"})
    victim = await start(client, victim_url)
    assert (await wait_finished(client, victim))["status"] == "Succeeded"
    victim_log = await results_of(client, victim)
    instance = instance_of(client)
    assert "Successfully" not in victim_log and f"speed-{instance}" not in victim_log
    assert not re.search(r"^ ---> [0-9a-f]{12}$", victim_log, re.M), victim_log
    tags = [t for image in docker_client.api.images(f"speed-{instance}") for t in image["RepoTags"]]
    assert [t for t in tags if re.fullmatch(rf"speed-{instance}:{victim}-[0-9a-f]{{16}}", t)]
    assert f"speed-{instance}:{victim}" not in tags

    real = next(t for t in tags if t.startswith(f"speed-{instance}:{victim}-"))
    for dockerfile in (f"FROM {real}\n",
                       f"FROM --platform=linux/amd64 {real} AS stolen\n",
                       f"FROM {BASE_IMAGE}\nCOPY --from={real} /app/secret.txt /\n",
                       f"FROM {BASE_IMAGE}\nRUN --mount=type=bind,from={real},target=/v true\n",
                       f"FROM {BASE_IMAGE}\nCOPY \\\n  --from={real} /app /x\n"):
        url, _ = repo("cat /app/secret.txt\n", dockerfile=dockerfile + 'CMD ["true"]\n')
        thief = await start(client, url)
        info = await wait_finished(client, thief)
        assert info["status"] == "Failed"
        assert re.fullmatch(r"Dockerfile line \d: deployments may not use the images SPEED "
                            r"builds for deployments", info["reason"]), info["reason"]
        assert "victim's secret" not in await results_of(client, thief)

    url, _ = repo("true\n", dockerfile=f"FROM localhost/speed-{instance}x:{victim}\n")
    guess = await start(client, url)
    info = await wait_finished(client, guess)
    assert info["status"] == "Failed" and "victim's secret" not in await results_of(client, guess)


def test_a_deployment_that_keeps_dying_with_speed_is_not_queued_for_ever(tmp_path):
    """Crash loop: a deployment that takes SPEED down (as the /dev/zero read did) is claimed,
    and requeued by every start-up. Asserts: after MAX_ATTEMPTS claims it fails instead, with a
    reason saying so; every earlier requeue put it back in the queue."""
    db = open_database(f"sqlite:///{tmp_path / 'speed.db'}")
    with db.connection_context():
        deployment_id = queries.create("https://example.com/a.git", "main").id
        for attempt in range(1, queries.MAX_ATTEMPTS + 1):
            claimed = queries.claim_next("r1")
            assert (claimed.id, claimed.attempts) == (deployment_id, attempt)
            after = queries.requeue(deployment_id, "[speed] SPEED restarted; deploying again")
            expected = "Failed" if attempt == queries.MAX_ATTEMPTS else "Pending"
            assert after.status == expected
        assert after.reason == (f"interrupted {queries.MAX_ATTEMPTS} times before its container "
                                "started; not deploying it again")
        assert queries.claim_next("r1") is None


async def test_a_build_cannot_reach_another_deployments_image_by_an_id_prefix(
        client, repo, docker_client):
    """Attack (found by a hostile review): `FROM <prefix of an image id>` and
    `COPY --from=<prefix>` reached another deployment's image without knowing its name (the
    engine takes any unique prefix of an id). Asserts: both are refused before building, and the
    victim's file never shows."""
    victim_url, _ = repo("true\n", dockerfile=f"FROM {BASE_IMAGE}\nRUN echo victim-secret-4711 > "
                                              "/secret\nCMD [\"true\"]\n")
    victim = await start(client, victim_url)
    assert (await wait_finished(client, victim))["status"] == "Succeeded"
    instance = instance_of(client)
    tag = next(t for image in docker_client.api.images(f"speed-{instance}")
               for t in image["RepoTags"] if t.startswith(f"speed-{instance}:{victim}-"))
    prefix = docker_client.api.inspect_image(tag)["Id"].removeprefix("sha256:")[:12]
    for dockerfile in (f"FROM {prefix}\nCMD [\"cat\", \"/secret\"]\n",
                       f"FROM {BASE_IMAGE}\nCOPY --from={prefix} /secret /loot\n"
                       "CMD [\"cat\", \"/loot\"]\n"):
        url, _ = repo("true\n", dockerfile=dockerfile)
        thief = await start(client, url)
        info = await wait_finished(client, thief)
        assert info["status"] == "Failed"
        assert info["reason"].endswith(f"{prefix}: images are named by repository (and tag), "
                                       "not by id"), info["reason"]
        assert "victim-secret-4711" not in await results_of(client, thief)


async def test_build_steps_are_kept_apart_from_deployments(client, repo, docker_client):
    """Attack (found by a hostile review): build steps keep raw sockets (the build API cannot
    drop capabilities) on the bridge where deployment containers send their tokens, and read
    SPEED's instance id in their cgroup's name. Asserts: a step cannot reach a running
    deployment's container, and its cgroup names no instance."""
    listener_url, _ = repo("echo listening\nsleep 600\n")
    listener = await start(client, listener_url)

    async def address():
        found = docker_client.api.containers(filters={"label": [
            f"speed.instance={instance_of(client)}", f"speed.deployment={listener}"]})
        return found and docker_client.api.inspect_container(found[0]["Id"])[
            "NetworkSettings"]["Networks"]["speed-deployments"]["IPAddress"]

    target = await wait_for(address)
    probe = (f"(ping -c 1 -W 2 {target} >/dev/null 2>&1 && echo reached || echo unreached);"
             " cat /proc/self/cgroup")
    url, _ = repo("true\n", dockerfile=f"FROM {BASE_IMAGE}\nRUN {probe}\nCMD [\"true\"]\n")
    prober = await start(client, url)
    info = await wait_finished(client, prober)
    results = await results_of(client, prober)
    assert info["status"] == "Succeeded", results
    assert "\nunreached\n" in results and "\nreached\n" not in results
    assert instance_of(client) not in results
    await client.post(f"/cancel/{listener}")


async def test_a_failed_or_stopped_build_leaves_no_image_behind(client, repo, docker_client):
    """Leak (found by a hostile review): a build that fails keeps its finished steps' images,
    untagged, for good. Asserts: once the deployment failed, no image made by its steps
    remains."""
    marker = uuid.uuid4().hex
    url, _ = repo("true\n", dockerfile=f"FROM {BASE_IMAGE}\nRUN echo {marker} > /kept\n"
                                       f"RUN echo {marker}-second > /also\nRUN exit 1\n")
    deployment_id = await start(client, url)
    assert (await wait_finished(client, deployment_id))["status"] == "Failed"

    async def no_step_images():
        left = []
        for image in docker_client.api.images(all=True, filters={"dangling": True}):
            try:
                command = docker_client.api.inspect_image(image["Id"])["ContainerConfig"]["Cmd"]
            except docker.errors.ImageNotFound:
                continue  # removed between the listing and the look (other tests clean up too)
            left += [image["Id"]] if marker in " ".join(command or []) else []
        return not left

    await wait_for(no_step_images, timeout=20)


def test_the_build_context_is_bounded(tmp_path):
    """Bound (found by a hostile review): a sparse file of a few bytes in git became a 315 MB
    archive in /tmp. Asserts: past its limit, archiving stops with a clear reason."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "Dockerfile").write_text("FROM scratch\n")
    with open(tmp_path / "src" / "sparse", "wb") as f:
        f.truncate(10_000_000)
    with pytest.raises(BuildFailed, match="the build context is larger than 1000000 bytes"):
        context.archive(str(tmp_path / "src"), limit=1_000_000)
