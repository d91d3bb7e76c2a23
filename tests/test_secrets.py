"""Secrets: managed through the API, encrypted at rest, scoped, and never shown."""
import base64
import glob
import hashlib
import subprocess
import sys
import uuid

import pytest

from tests.conftest import results_of, wait_finished
from tests.process import ROOT
from tests.test_github import (SECRET as WEBHOOK_SECRET, deliver, fake, github_client,  # noqa: F401
                               project)
from tests.webhooks import pull_request_payload

pytestmark = pytest.mark.usefixtures("app_invariants")

TOKEN = "secrets-test-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VALUE = "s3cr3t-" + uuid.uuid4().hex  # shaped like a real credential
PEM = ("-----BEGIN TEST KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
       "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQJAIJLixBy2qpFoS4DSmoEm\n-----END TEST KEY-----")


def app_repository(git_server, files: dict[str, str]) -> tuple[str, str]:
    """A repository acme/<unique> on the test git server: (its URL, its scope pattern)."""
    name = f"acme/app-{uuid.uuid4().hex[:8]}"
    git_server.commit(name, files)
    return git_server.url(name), f"{git_server.base_url.removeprefix('http://')}/{name}"


async def put(client, name: str, value: str, repositories: list[str], **scope):
    return await client.put(f"/secrets/{name}", headers=AUTH,
                            json={"value": value, "repositories": repositories, **scope})


async def start(client, url: str, branch: str = "main") -> int:
    response = await client.post("/start", json={"url": url, "branch": branch}, headers=AUTH)
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


@pytest.fixture
async def secured(make_client):
    """SPEED with an API token and public reads, deploying from the test git server by either
    of its names."""
    return await make_client(auth__api_tokens=[TOKEN], auth__public_reads=True, runner__allowed_urls=[
        "http://127.0.0.1:*", "http://localhost:*"])


async def test_secrets_are_managed_with_a_token_and_their_values_never_come_back(secured):
    """Set (201), replace (200), list (names, scope, when and which token — no value, no
    ciphertext), delete (then 404); every call without a token is 401, even with public reads;
    bad input is a 400 that changes nothing."""
    client = secured
    created = await put(client, "DEPLOY_KEY", VALUE, ["github.com/acme/app"])
    assert created.status == 201
    replaced = await put(client, "DEPLOY_KEY", VALUE + "2", ["github.com/acme/*"],
                         branches=["main"], pull_requests=True)
    assert replaced.status == 200
    listed = await (await client.get("/secrets", headers=AUTH)).json()
    assert listed["secrets"] == [{
        "name": "DEPLOY_KEY", "repositories": ["github.com/acme/*"], "branches": ["main"],
        "pull_requests": True, "created_at": listed["secrets"][0]["created_at"],
        "updated_at": listed["secrets"][0]["updated_at"],
        "updated_by": "token sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:12]}]
    assert VALUE not in str(listed) and "gAAAAA" not in str(listed)  # no value, no Fernet token
    for method, path in (("GET", "/secrets"), ("PUT", "/secrets/X"), ("DELETE", "/secrets/X")):
        assert (await client.request(method, path, json={})).status == 401
    bad = [("lower-case-ok", {"value": "short", "repositories": ["github.com/a/b"]}),
           ("SPEED_X", {"value": VALUE, "repositories": ["github.com/a/b"]}),
           ("1ABC", {"value": VALUE, "repositories": ["github.com/a/b"]}),
           ("OWNER_ONLY", {"value": VALUE, "repositories": ["acme/app"]}),
           ("HOST_GLOB", {"value": VALUE, "repositories": ["github.*/acme/app"]}),
           ("NO_SCOPE", {"value": VALUE, "repositories": []}),
           ("NUL", {"value": VALUE + "\0", "repositories": ["github.com/a/b"]}),
           ("PRS", {"value": VALUE, "repositories": ["github.com/a/b"], "pull_requests": "yes"})]
    for name, body in bad:
        response = await client.put(f"/secrets/{name}", headers=AUTH, json=body)
        assert response.status == 400, (name, await response.text())
    assert [s["name"] for s in (await (await client.get("/secrets", headers=AUTH)).json())
            ["secrets"]] == ["DEPLOY_KEY"]
    assert (await client.delete("/secrets/DEPLOY_KEY", headers=AUTH)).status == 200
    assert (await client.delete("/secrets/DEPLOY_KEY", headers=AUTH)).status == 404


LEAKER = """\
echo "plain: $DEPLOY_KEY"
head="${DEPLOY_KEY%????????????????????}"
printf 'split: %s' "$head"; sleep 0.6; echo "${DEPLOY_KEY#"$head"}"
echo "base64: $(printf %s "$DEPLOY_KEY" | base64)"
echo "multi-line:"; echo "$PEM_KEY"
post() { wget -q -O- --header "Authorization: Bearer $SPEED_TOKEN" --post-data "$2" "$SPEED_API_URL$1" 2>&1; }
post /add_results/$SPEED_DEPLOYMENT_ID "{\\"results\\": \\"posted: $DEPLOY_KEY\\"}" >/dev/null
echo "length: ${#DEPLOY_KEY}"
"""


async def test_a_deployment_gets_its_secrets_and_no_form_of_them_is_ever_shown(
        secured, git_server, base_image, tmp_path):
    """The secrets a repository's .speed.yml names reach its container's environment; the value
    printed whole, split across two writes, base64-encoded, each line of a multi-line value, and
    posted back through /add_results is stored as [redacted]; /info lists the names; the database
    files hold neither the value nor its base64, only ciphertext."""
    client = secured
    url, pattern = app_repository(git_server, {
        "Dockerfile": "FROM speed-test-base:latest\nCOPY . /app\nCMD [\"sh\", \"/app/run.sh\"]\n",
        "run.sh": LEAKER, ".speed.yml": "secrets: [DEPLOY_KEY, PEM_KEY]\n"})
    assert (await put(client, "DEPLOY_KEY", VALUE, [pattern])).status == 201
    assert (await put(client, "PEM_KEY", PEM, [pattern])).status == 201
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded", results
    assert f"length: {len(VALUE)}" in results  # the container had the real value
    assert info["settings"]["secrets"] == ["DEPLOY_KEY", "PEM_KEY"]
    encoded = base64.b64encode(VALUE.encode()).decode()
    for shown in (VALUE, encoded, VALUE[:-20], VALUE[-20:], *PEM.splitlines()[1:3]):
        assert shown not in results, shown
    for line in ("plain: [redacted]", "split: [redacted]", "base64: [redacted]",
                 "posted: [redacted]"):
        assert line in results, results
    page = await (await client.get(f"/deployments/{deployment_id}")).text()
    assert "DEPLOY_KEY, PEM_KEY" in page and VALUE not in page
    database = b"".join(open(path, "rb").read()
                        for path in glob.glob(str(tmp_path / "speed" / "speed.db*")))
    assert b"s3cr3t-" in VALUE.encode() and database  # the files were read
    for shown in (VALUE, encoded, PEM.splitlines()[1]):
        assert shown.encode() not in database, shown


@pytest.mark.parametrize("case", ["other host", "branch", "owner/name only"])
async def test_a_secret_outside_its_scope_fails_the_deployment_before_the_build(
        secured, git_server, base_image, case):
    """Scope: a manual start of the same path on another host (here `localhost` for
    `127.0.0.1`), of a branch the secret is not for, fails naming the secret and why, before
    anything is built, and the container never runs."""
    client = secured
    url, pattern = app_repository(git_server, {
        "Dockerfile": "FROM speed-test-base:latest\nCMD [\"echo\", \"container ran\"]\n",
        ".speed.yml": "secrets: [DEPLOY_KEY]\n"})
    branches = ["release/*"] if case == "branch" else []
    assert (await put(client, "DEPLOY_KEY", VALUE, [pattern], branches=branches)).status == 201
    if case != "branch":
        url = url.replace("127.0.0.1", "localhost")
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    expected = ("secret DEPLOY_KEY: not defined for branch main" if case == "branch" else
                f"secret DEPLOY_KEY: not defined for this repository "
                f"({pattern.replace('127.0.0.1', 'localhost')})")
    assert (info["status"], info["reason"]) == ("Failed", expected)
    assert "Step 1/" not in results and "container ran" not in results


async def test_pull_requests_get_secrets_only_when_allowed_and_forks_never(
        github_client, project, git_server):
    """Scope: a pull request from the repository itself gets a secret only with
    pull_requests: true; one from a fork (under a rule that deploys forks) never does."""
    client = await github_client(runner__allowed_urls=["http://127.0.0.1:*"])
    full_name, url, sha = project("open", 'echo "key=[$DEPLOY_KEY]"\n', branch="feature")
    sha = git_server.commit(full_name, {".speed.yml": "secrets: [DEPLOY_KEY]\n"},
                            branch="feature")
    pattern = f"{git_server.base_url.removeprefix('http://')}/{full_name}"
    put_secret = lambda prs: client.put("/secrets/DEPLOY_KEY", json={  # noqa: E731
        "value": VALUE, "repositories": [pattern, f"{pattern}-fork"], "pull_requests": prs})

    async def deploy_pull_request(**head) -> dict:
        response = await deliver(client, "pull_request", pull_request_payload(
            full_name, url, head_sha=sha, head_ref="feature", number=5, **head))
        assert response.status == 202, await response.text()
        return await wait_finished(client, (await response.json())["id"])

    assert (await put_secret(False)).status == 201
    refused = await deploy_pull_request()
    assert (refused["status"], refused["reason"]) == (
        "Failed", "secret DEPLOY_KEY: not for pull requests")
    assert (await put_secret(True)).status == 200
    allowed = await deploy_pull_request()
    assert allowed["status"] == "Succeeded"
    assert "key=[[redacted]]" in await results_of(client, allowed["id"])
    fork_sha = git_server.commit(f"{full_name}-fork", {
        "Dockerfile": "FROM speed-test-base:latest\n", ".speed.yml": "secrets: [DEPLOY_KEY]\n"},
        branch="feature")
    response = await deliver(client, "pull_request", pull_request_payload(
        full_name, url, head_sha=fork_sha, head_ref="feature", number=6,
        head_full_name=f"{full_name}-fork", head_clone_url=git_server.url(f"{full_name}-fork")))
    fork = await wait_finished(client, (await response.json())["id"])
    assert (fork["status"], fork["reason"]) == (
        "Failed", "secret DEPLOY_KEY: never for pull requests from forks")
    again = await client.post(f"/redeploy/{fork['id']}")  # a redeploy of it is one as well
    refused_again = await wait_finished(client, (await again.json())["id"])
    assert (refused_again["reason"], refused_again["pull_request"]) == (
        "secret DEPLOY_KEY: never for pull requests from forks", 6)


async def test_rotation_re_encrypts_under_a_new_key_and_the_old_one_may_go(
        make_client, git_server, base_image, tmp_path):
    """Rotation: with a secret stored, `main.py rotate-secrets --new-key` puts a new key first
    and re-encrypts; with the old key then removed from the key file, a new SPEED on the same
    database still gives the deployment its secret. Removing the only key that a ciphertext
    was made with instead fails the deployment, saying so."""
    first = await make_client("rotated", runner__allowed_urls=["http://127.0.0.1:*"])
    url, pattern = app_repository(git_server, {
        "Dockerfile": "FROM speed-test-base:latest\nCMD [\"sh\", \"-c\", \"echo length=${#DEPLOY_KEY}\"]\n",
        ".speed.yml": "secrets: [DEPLOY_KEY]\n"})
    assert (await put(first, "DEPLOY_KEY", VALUE, [pattern])).status == 201
    await first.close()
    directory = tmp_path / "rotated"
    key_file = directory / "secrets.key"
    old_key = key_file.read_text().strip()
    config = directory / "app.yaml"
    config.write_text(f"database:\n  url: sqlite:///{directory / 'speed.db'}\n")
    done = subprocess.run([sys.executable, "main.py", "--config", str(config), "rotate-secrets",
                           "--new-key"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 1 secret under the first key" in done.stdout
    new_key, kept = key_file.read_text().split()
    assert kept == old_key != new_key
    key_file.write_text(new_key + "\n")
    second = await make_client("rotated", runner__allowed_urls=["http://127.0.0.1:*"])
    deployment_id = await start(second, url)
    info = await wait_finished(second, deployment_id)
    assert info["status"] == "Succeeded"
    assert f"length={len(VALUE)}" in await results_of(second, deployment_id)
    await second.close()
    key_file.write_text(old_key + "\n")  # the key the secret is no longer encrypted under
    third = await make_client("rotated", runner__allowed_urls=["http://127.0.0.1:*"])
    deployment_id = await start(third, url)
    info = await wait_finished(third, deployment_id)
    assert (info["status"], info["reason"]) == (
        "Failed", "secrets: a secret was encrypted under a key secrets.key no longer holds")


async def test_the_key_file_is_made_once_and_private(make_client, tmp_path):
    """The embedded default needs no set-up: the first start makes secrets.key beside the
    database, readable by its owner only; a second start reuses it."""
    await make_client("keyed")
    key_file = tmp_path / "keyed" / "secrets.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    key = key_file.read_text()
    await make_client("keyed")
    assert key_file.read_text() == key


TICKER = """\
i=0
while [ $i -lt 40 ]; do echo "tick $i $DEPLOY_KEY"; i=$((i+1)); sleep 0.25; done
"""


@pytest.mark.slow
def test_a_restart_in_the_middle_of_a_deployment_keeps_its_secrets_redacted(
        tmp_path, docker_client, base_image, git_server):
    """Restart: SPEED is killed (-9) while a container prints its secret every 0.25 s; the next
    start reattaches. Asserts: the deployment succeeds with output from both sides of the
    restart, none of which shows the value, and the database files never hold it."""
    from tests.process import speed_processes
    with speed_processes(tmp_path, docker_client) as make:
        bot = make()
        url, pattern = app_repository(git_server, {
            "Dockerfile": "FROM speed-test-base:latest\nCOPY . /app\nCMD [\"sh\", \"/app/run.sh\"]\n",
            "run.sh": TICKER, ".speed.yml": "secrets: [DEPLOY_KEY]\n"})
        status, _ = bot.call("PUT", "/secrets/DEPLOY_KEY", {"value": VALUE,
                                                            "repositories": [pattern]})
        assert status == 201
        deployment_id = bot.start_deployment(url)
        bot.wait_output(deployment_id, "tick 2 ")
        bot.kill9()
        bot.start()
        info = bot.wait_finished(deployment_id, timeout=90)
        results = bot.results(deployment_id)
        assert info["status"] == "Succeeded", results
        assert "tick 39 [redacted]" in results and "tick 2 [redacted]" in results
        assert VALUE not in results
        database = b"".join(open(path, "rb").read() for path in glob.glob(f"{bot.db_path}*"))
        assert VALUE.encode() not in database
