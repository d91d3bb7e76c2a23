"""A commit's `.speed.yml` on a real engine: each key takes effect; bad files fail before the
build, naming the key."""
import os
import re

import pytest

from tests.conftest import BASE_IMAGE, DOCKERFILE, results_of, wait_finished

pytestmark = pytest.mark.usefixtures("app_invariants")


async def start(client, url: str) -> int:
    response = await client.post("/start", json={"url": url, "branch": "main"})
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def deployed(client, url: str, timeout: float = 60) -> tuple[dict, str]:
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id, timeout)
    return info, await results_of(client, deployment_id)


SETTINGS = """\
env:
  GREETING: hello world
  COUNT: 3
  DEBUG: true
timeout: 30
build:
  dockerfile: deploy/Dockerfile.app
  context: app
  args:
    FLAVOUR: vanilla
  target: final
resources:
  memory: 48m
  cpus: 0.5
"""
STAGED = f"""\
FROM {BASE_IMAGE} AS final
ARG FLAVOUR
RUN echo "flavour=$FLAVOUR" > /flavour
COPY . /app
CMD ["sh", "/app/run.sh"]
FROM {BASE_IMAGE} AS later
RUN echo "stage after the target $((1+1))"
"""
SHOW = """\
echo "greeting=$GREETING count=$COUNT debug=$DEBUG"
echo "event=$SPEED_EVENT"
cat /flavour
test -e /app/outside.txt && echo "context leaked"
cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max
"""


async def test_every_key_takes_effect_and_is_shown(client, repo):
    """Each key: env in the container (numbers and booleans as text), the Dockerfile at
    another path, the context directory (nothing outside it reaches the image), a build argument,
    the target stage (a later stage's steps not run), the memory limit; /info shows them and
    SPEED_EVENT says how it was started. Redeploying the same commit reuses the image and keeps
    the settings. The deployment page shows them too."""
    url, _ = repo("", extra={".speed.yml": SETTINGS, "deploy/Dockerfile.app": STAGED,
                             "app/run.sh": SHOW, "outside.txt": "not in the context"},
                  dockerfile=None)
    info, results = await deployed(client, url)
    assert info["status"] == "Succeeded", results
    assert "greeting=hello world count=3 debug=true" in results
    assert "event=manual" in results and "flavour=vanilla" in results
    assert "stage after the target 2" not in results and "context leaked" not in results
    assert str(48 * 1024 * 1024) in results
    assert info["settings"] == {
        "env": {"GREETING": "hello world", "COUNT": "3", "DEBUG": "true"}, "secrets": [],
        "timeout": 30.0, "resources": {"memory": "48m", "cpus": 0.5},
        "build": {"dockerfile": "deploy/Dockerfile.app", "context": "app",
                  "args": {"FLAVOUR": "vanilla"}, "target": "final"}, "service": None}

    page = await (await client.get(f"/deployments/{info['id']}")).text()
    for shown in ("GREETING=hello world", "deploy/Dockerfile.app", "FLAVOUR", "48m", "30 s"):
        assert shown in page, shown

    again = await client.post(f"/redeploy/{info['id']}")
    redeployed = await wait_finished(client, (await again.json())["id"])
    results = await results_of(client, redeployed["id"])
    assert "reusing the image already built" in results
    assert "greeting=hello world count=3 debug=true" in results and "event=redeploy" in results
    assert redeployed["settings"] == info["settings"]


async def test_a_lower_timeout_in_the_file_holds(client, repo):
    """timeout: 3 in the file stops a container that sleeps, with the file's number."""
    url, _ = repo("echo started\nsleep 60\n", extra={".speed.yml": "timeout: 3\n"})
    info, _ = await deployed(client, url)
    assert (info["status"], info["reason"]) == ("Failed", "timed out after 3 s")


async def test_no_file_is_todays_behaviour(client, repo):
    url, _ = repo("echo plain\n")
    info, results = await deployed(client, url)
    assert info["status"] == "Succeeded" and "plain" in results
    assert info["settings"]["env"] == {} and info["settings"]["timeout"] is None


@pytest.mark.parametrize("text, reason", [
    ("env:\n  A: 1\n B: 2\n", ".speed.yml: file (line 3): not valid YAML"),
    ("env:\n  SPEED_TOKEN: x\n", ".speed.yml: env.SPEED_TOKEN (line 2): names starting SPEED_ are "
                                 "SPEED's own"),
    ("timeout: 99999\n", ".speed.yml: timeout (line 1): 99999 s is over the server's limit of 60 s"),
    ("bulid: {}\n", ".speed.yml: bulid (line 1): unknown key"),
    ("resources: {memory: 64g}\n", ".speed.yml: resources.memory (line 1): 64g is over the "
                                   "server's limit of 1g"),
    ("build: {dockerfile: ../../etc/passwd}\n", ".speed.yml: build.dockerfile (line 1): leads out"),
    ("build: {dockerfile: missing/Dockerfile}\n", "build.dockerfile: no missing/Dockerfile in the "
                                                  "repository"),
    ("build: {context: run.sh}\n", "build.context: run.sh is not a directory in the repository"),
    ("secrets: [NOPE]\n", "secret NOPE: not defined"),
    ("resources: {cpus: 1.0e-10}\n", ".speed.yml: resources.cpus (line 1): 1e-10 is under Docker's "
                                     "minimum of 0.01"),
    ("resources: {memory: 1k}\n", ".speed.yml: resources.memory (line 1): 1k is under Docker's "
                                  "minimum of 6m"),
    ("timeout: 1" + "0" * 400 + "\n", ".speed.yml: timeout (line 1): about 1e+400 s is over the "
                                      "server's limit of 60 s"),
    ("env:\n  A: 1\0\n", ".speed.yml: file (line 2): not valid YAML: character U+0000 is not "
                         "allowed"),
    ("env:\n  A: \x1b[2J\n", ".speed.yml: file (line 2): not valid YAML: character U+001B is not "
                             "allowed"),
    ("env:\n  <<: {A: 1}\n", ".speed.yml: file (line 2): merge keys (<<) are not supported"),
], ids=["yaml", "reserved", "timeout", "unknown", "memory", "outside", "missing", "context",
        "secret", "tiny-cpus", "tiny-memory", "huge-timeout", "nul", "escape", "merge"])
async def test_a_bad_file_fails_before_the_build_naming_the_key(client, repo, text, reason):
    """Bad input: the deployment fails with the reason (no 500, no traceback in the results),
    and nothing was built."""
    url, _ = repo("echo ran\n", extra={".speed.yml": text})
    info, results = await deployed(client, url)
    assert info["status"] == "Failed"
    assert info["reason"].startswith(reason), info["reason"]
    assert "Step 1/" not in results and "Traceback" not in results and "ran\n" not in results


async def test_aliases_cannot_make_the_settings_huge(client, repo):
    """Leak: a 64 KiB file with a 32,000-character build argument aliased 2,884 times in env
    was 92 MB of settings, stored and sent by /deployments. Asserts: the deployment fails before
    the build with the reason, no settings are stored, and /deployments stays small."""
    bomb = ("build:\n  args:\n    A: &a " + "x" * 32_000 + "\nenv:\n"
            + "".join(f"  E{i}: *a\n" for i in range(2_884)))
    assert len(bomb.encode()) <= 64 * 1024
    url, _ = repo("echo ran\n", extra={".speed.yml": bomb})
    info, results = await deployed(client, url)
    assert (info["status"], info["reason"]) == (
        "Failed", ".speed.yml: file: its values come to more than 65536 bytes (YAML aliases count "
                  "each time they are used)")
    assert info["settings"] is None and "Step 1/" not in results
    listed = await client.get("/deployments")
    assert listed.status == 200 and len(await listed.read()) < 10_000


async def test_a_reason_shows_an_odd_key_spelt_out_and_cut(client, repo):
    """A key with zero-width and bidi characters, thousands of characters long: the reason
    spells them out (`\\u202e`) and quotes at most 100 characters of the key."""
    key = "\u202eA\u200b" + "x-" * 3_000
    url, _ = repo("echo ran\n", extra={".speed.yml": f"env:\n  ? {key}\n  : 1\n"})
    info, _ = await deployed(client, url)
    assert info["status"] == "Failed"
    assert info["reason"] == (".speed.yml: env.\\u202eA\\u200b" + ("x-" * 50)[:92]
                              + "… (line 3): not a valid name (letters, digits and _, not "
                                "starting with a digit)")


async def test_a_file_that_is_a_link_out_or_too_large_is_refused(client, git_server, base_image):
    """A .speed.yml that is a link to a host file, a build.dockerfile that is one, or a file over
    64 KiB fails the deployment."""
    git_server.commit("yml-link", {"Dockerfile": DOCKERFILE, "run.sh": "true\n"})
    os.symlink("/etc/passwd", git_server.work / "yml-link" / ".speed.yml")
    git_server.commit("yml-link", {})
    info, results = await deployed(client, git_server.url("yml-link"))
    assert (info["status"], info["reason"]) == (
        "Failed", ".speed.yml: leads out of the repository (SPEED follows no link out of it)")
    assert "root:" not in results
    git_server.commit("dockerfile-link", {"run.sh": "true\n",
                                          ".speed.yml": "build: {dockerfile: docker/Dockerfile}\n",
                                          "docker/README": "the Dockerfile is a link\n"})
    os.symlink("/etc/passwd", git_server.work / "dockerfile-link" / "docker" / "Dockerfile")
    git_server.commit("dockerfile-link", {})
    info, _ = await deployed(client, git_server.url("dockerfile-link"))
    assert (info["status"], info["reason"]) == (
        "Failed", "docker/Dockerfile: leads out of the repository (SPEED follows no link out of it)")
    git_server.commit("yml-big", {"Dockerfile": DOCKERFILE, "run.sh": "true\n",
                                  ".speed.yml": "# " + "x" * 70_000 + "\n"})
    info, _ = await deployed(client, git_server.url("yml-big"))
    assert (info["status"], info["reason"]) == ("Failed", ".speed.yml: larger than 65536 bytes")


async def test_container_context_variables(make_client, git_server, base_image):
    """SPEED_ENVIRONMENT comes from the repos: rule covering the repository (a manual start of a
    repository on the configured GitHub); SPEED_PULL_REQUEST is absent outside pull requests."""
    client = await make_client(github__web_url=git_server.base_url,
                               repos=[{"match": "acme/*", "environment": "staging"}])
    git_server.commit("acme/context", {"Dockerfile": DOCKERFILE, "run.sh":
                                       'echo "env=[$SPEED_ENVIRONMENT] pr=[$SPEED_PULL_REQUEST]"\n'})
    info, results = await deployed(client, git_server.url("acme/context"))
    assert info["status"] == "Succeeded", results
    assert "env=[staging] pr=[]" in results
    assert info["environment"] == "staging"
