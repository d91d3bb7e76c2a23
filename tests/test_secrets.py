"""Secrets: managed through the API, encrypted at rest, scoped, and never shown."""
import base64
import glob
import hashlib
import json
import re
import secrets
import urllib.parse
import uuid

import pytest

from bot.keys import keyring_key, store_key
from runner.errors import SettingsInvalid
from runner.output import OutputRecorder
from runner.secrets import MIN_VALUE, SecretSource, forms
from storage import secrets as secret_queries
from storage.models import Deployment
from tests.conftest import results_of, wait_finished
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
           ("PRS", {"value": VALUE, "repositories": ["github.com/a/b"], "pull_requests": "yes"}),
           # Found by a hostile user: spaces alone, and patterns of any length, were taken.
           ("SPACES", {"value": " " * 6, "repositories": ["github.com/a/b"]}),
           ("PADDED", {"value": "  abc  ", "repositories": ["github.com/a/b"]}),
           ("LONG_REPO", {"value": VALUE, "repositories": ["github.com/" + "a" * 100_000]}),
           ("LONG_BRANCH", {"value": VALUE, "repositories": ["github.com/a/b"],
                            "branches": ["b" * 256]}),
           ("SCHEME", {"value": VALUE, "repositories": ["https://github.com/a/b"]}),
           # Misspelt "branches": ignored, it would have given the secret to every branch.
           ("TYPO", {"value": VALUE, "repositories": ["github.com/a/b"], "branch": ["main"]})]
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


async def test_text_posted_for_any_deployment_is_stored_without_any_secret(
        secured, git_server, base_image, tmp_path):
    """A secret's value posted through /add_results or /update for a deployment that never
    received it — here one finished, of a repository outside the secret's scope — is stored as
    [redacted], in every form, and the database files never hold it (only the deployment this
    process runs used to be redacted; a hostile user found it)."""
    client = secured
    url, _ = app_repository(git_server, {"Dockerfile": "FROM speed-test-base:latest\n"
                                                       "CMD [\"true\"]\n"})
    assert (await put(client, "DEPLOY_KEY", VALUE, ["example.com/other/repo"])).status == 201
    # Stored before today's limits (six spaces): redacting it from every deployment's text
    # would cut holes in ordinary output (found by a hostile review), so it is left out here.
    await client.app[store_key].run(secret_queries.put, "OLD_SPACES", client.app[keyring_key]
                                    .encrypt(" " * 6), ["example.com/x/y"], [], False, "test")
    deployment_id = await start(client, url)
    assert (await wait_finished(client, deployment_id))["status"] == "Succeeded"
    encoded = base64.b64encode(VALUE.encode()).decode()
    added = await client.post(f"/add_results/{deployment_id}", headers=AUTH,
                              json={"results": f"added: {VALUE} and {encoded}; kept:      !"})
    assert added.status == 200, await added.text()
    updated = await client.post("/update", headers=AUTH,
                                json={"id": deployment_id, "new_results": f"progress: {VALUE}"})
    assert updated.status == 200, await updated.text()
    results = await results_of(client, deployment_id)
    assert "added: [redacted] and [redacted]; kept:      !" in results
    assert "progress: [redacted]" in results
    info = await (await client.get(f"/info/{deployment_id}")).json()
    assert info["progress"] == "progress: [redacted]"
    database = b"".join(open(path, "rb").read()
                        for path in glob.glob(str(tmp_path / "speed" / "speed.db*")))
    assert database and VALUE.encode() not in database and encoded.encode() not in database


@pytest.mark.parametrize("case", ["other host", "branch", "owner/name only", "path's case"])
async def test_a_secret_outside_its_scope_fails_the_deployment_before_the_build(
        secured, git_server, base_image, case):
    """Scope: a manual start of the same path on another host (here `localhost` for
    `127.0.0.1`), of a branch the secret is not for, or of ACME/app-x beside acme/app-x (another
    repository: the test git server's paths are case-sensitive, as most are), fails naming the
    secret and why, before anything is built, and the container never runs."""
    client = secured
    files = {"Dockerfile": "FROM speed-test-base:latest\nCMD [\"echo\", \"container ran\"]\n",
             ".speed.yml": "secrets: [DEPLOY_KEY]\n"}
    url, pattern = app_repository(git_server, files)
    branches = ["release/*"] if case == "branch" else []
    assert (await put(client, "DEPLOY_KEY", VALUE, [pattern], branches=branches)).status == 201
    shown = pattern
    if case == "path's case":
        other = pattern.partition("/")[2].replace("acme/", "ACME/")
        git_server.commit(other, files)
        url, shown = git_server.url(other), pattern.replace("/acme/", "/ACME/")
    elif case != "branch":
        url, shown = (text.replace("127.0.0.1", "localhost") for text in (url, pattern))
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    expected = ("secret DEPLOY_KEY: not defined for branch main" if case == "branch" else
                f"secret DEPLOY_KEY: not defined for this repository ({shown})")
    assert (info["status"], info["reason"]) == ("Failed", expected)
    assert "Step 1/" not in results and "container ran" not in results


async def test_pull_requests_get_secrets_only_when_allowed_and_forks_never(
        github_client, project, git_server, fake):
    """Scope: a pull request from the repository itself gets a secret only with
    pull_requests: true; one from a fork (under a rule that deploys forks) never does, and is
    told the same for a name no secret has: its GitHub status cannot tell which names exist."""
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
    probe_sha = git_server.commit(f"{full_name}-fork", {".speed.yml": "secrets: [NO_SUCH_NAME]\n"},
                                  branch="feature")
    response = await deliver(client, "pull_request", pull_request_payload(
        full_name, url, head_sha=probe_sha, head_ref="feature", number=7,
        head_full_name=f"{full_name}-fork", head_clone_url=git_server.url(f"{full_name}-fork")))
    probe = await wait_finished(client, (await response.json())["id"])
    assert (probe["status"], probe["reason"]) == (
        "Failed", "secret NO_SUCH_NAME: never for pull requests from forks")
    await fake.wait_until(lambda: any(s["state"] == "failure"
                                      for s in fake.statuses_for(full_name, probe_sha)))
    final = fake.statuses_for(full_name, probe_sha)[-1]
    assert "never for pull requests from forks" in final["description"], final


async def test_a_fork_is_answered_alike_for_every_name_before_any_lookup():
    """Forks: whether a name exists or not, a pull request from a fork is told the same, and
    no secret is looked up for it (nor could timing tell)."""

    class NoLookups:
        async def run(self, *args):
            raise AssertionError("a fork's secrets were looked up")

    source = SecretSource(NoLookups(), None)
    fork = Deployment(url="https://github.com/mallory/app.git", branch="feature", pull_request=4,
                      fork=True)
    for names in (("NO_SUCH_NAME",), ("DEPLOY_KEY", "NO_SUCH_NAME")):
        with pytest.raises(SettingsInvalid) as refused:
            await source.check(fork, names)
        assert refused.value.message == f"secret {names[0]}: never for pull requests from forks"
    assert await source.check(fork, ()) == []


# 64 characters (65 bytes): one that JSON and URLs escape (`"`, `\\`, `é`, spaces) and
# whose base64 has `+` (URL-safe: `-`).
ENCODED_VALUE = '~~~ "k\\y" é ' + secrets.token_hex(26)
ENCODER = r"""
K="$DEPLOY_KEY"
json() { printf %s "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }
quote() {  # URL-quote $1 as urllib.parse.quote(safe="") does, a space becoming $2
  printf %s "$1" | od -An -v -tx1 | tr ' ' '\n' | while read -r h; do
    case "$h" in
      '') ;;
      3[0-9]|4[1-9a-f]|5[0-9a]|6[1-9a-f]|7[0-9a]|2d|2e|5f|7e) printf "\\$(printf %o "0x$h")" ;;
      20) printf %s "$2" ;;
      *) printf %%%s "$h" | tr a-f A-F ;;
    esac
  done
}
around() { { printf %s "$1"; printf %s "$K"; printf %s "$2"; } | base64 -w 0; }
echo "plain: $K"
echo "base64 76:"; printf %s "$K" | base64
echo "base64 64:"; printf %s "$K" | base64 -w 64
echo "url-safe 76:"; printf %s "$K" | base64 | tr '+/' '-_'
echo "url-safe 64:"; printf %s "$K" | base64 -w 64 | tr '+/' '-_'
echo "offset 0: $(around '' 'xyz')"
echo "offset 1: $(around 'x' 'yz')"
echo "offset 2: $(around 'xy' 'z')"
echo "url-safe offset 1: $(around 'x' 'yz' | tr '+/' '-_')"
echo "url-safe offset 2: $(around 'xy' 'z' | tr '+/' '-_')"
echo "json: {\"key\": \"$(json "$K")\"}"
echo "json ascii: {\"key\": \"$(json "$K" | sed 's/é/\\u00e9/g')\"}"
echo "quoted: ?key=$(quote "$K" %20)&"
echo "quoted plus: ?key=$(quote "$K" +)&"
echo "done"
"""


def decoded_leaks(text: str, value: str) -> list[str]:
    """The pieces of value, MIN_VALUE bytes or longer, that a base64 run in text decodes to at
    any alignment, in either alphabet."""
    data = value.encode()
    pieces = {data[at:at + MIN_VALUE] for at in range(len(data) - MIN_VALUE + 1)}
    found = []
    for run in re.findall(r"[A-Za-z0-9+/_-]{8,}", text):
        run = run.translate(str.maketrans("-_", "+/"))
        for shift in range(4):
            chunk = run[shift:][:(len(run) - shift) // 4 * 4]
            decoded = base64.b64decode(chunk)
            found += [piece.decode(errors="replace") for piece in pieces if piece in decoded]
    return found


def text_forms(value: str) -> list[str]:
    """value as JSON writes it in a string (escaping non-ASCII or not) and URL-quoted."""
    return [json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
            urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)]


def base64_lines(value: str) -> list[str]:
    """The lines of value's base64, standard and URL-safe, wrapped at 76 and at 64."""
    encoded = base64.b64encode(value.encode()).decode()
    lines = [encoded[at:at + width] for width in (76, 64) for at in range(0, len(encoded), width)]
    return lines + [line.replace("+", "-").replace("/", "_") for line in lines]


def redacted(text: str, value: str) -> str:
    """text as the output recorder stores it with value's forms redacted."""
    recorder = OutputRecorder(0, None, 0)
    for form in forms(value):
        recorder.redact(form)
    return recorder.redacted(text)


def test_forms_are_what_tools_print_of_a_value():
    """forms(): the value JSON-escaped (\\", \\\\, \\u00e9 or é) and URL-quoted (%22, %5C,
    %C3%A9, + or %20); each 76- and 64-character line of its base64, standard and URL-safe; and,
    base64-encoded amid other bytes at any offset, nothing that decodes to MIN_VALUE bytes of it
    is left once they are redacted, nor of its base64 wrapped. Never a form shorter than
    MIN_VALUE."""
    assert len(ENCODED_VALUE) == 64 and "+" in base64.b64encode(ENCODED_VALUE.encode()).decode()
    found = forms(ENCODED_VALUE)
    for form in (ENCODED_VALUE, *text_forms(ENCODED_VALUE), *base64_lines(ENCODED_VALUE)):
        assert form in found, form
    data = ENCODED_VALUE.encode()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for before in (b"", b"x", b"xy", b"xyz", b"wxyz"):
            for after in (b"", b"z", b"zz", b"zzz"):
                shown = redacted(encode(before + data + after).decode(), ENCODED_VALUE)
                assert decoded_leaks(shown, ENCODED_VALUE) == [], (before, after, shown)
        for width in (76, 64):
            wrapped = "\n".join(re.findall(f".{{1,{width}}}", encode(data).decode()))
            shown = redacted(wrapped, ENCODED_VALUE)
            assert decoded_leaks(shown, ENCODED_VALUE) == [], (width, shown)
    assert all(len(form) >= MIN_VALUE for form in found)
    assert all(len(form) >= MIN_VALUE for form in forms("abcdef"))
    assert json.dumps(PEM)[1:-1] in forms(PEM)  # a key logged as JSON, its lines as \\n


async def test_no_encoding_of_a_secret_is_shown(secured, git_server, base_image):
    """Encoded forms, end to end: a container prints a 64-character secret base64-encoded and
    wrapped (76 and 64, standard and URL-safe), base64-encoded amid other bytes at each offset,
    JSON-escaped both ways, and URL-quoted both ways; every one is stored as [redacted], and no
    base64 left in the output decodes to any piece of the value."""
    client = secured
    url, pattern = app_repository(git_server, {
        "Dockerfile": "FROM speed-test-base:latest\nCOPY . /app\nCMD [\"sh\", \"/app/run.sh\"]\n",
        "run.sh": ENCODER, ".speed.yml": "secrets: [DEPLOY_KEY]\n"})
    assert (await put(client, "DEPLOY_KEY", ENCODED_VALUE, [pattern])).status == 201
    deployment_id = await start(client, url)
    info = await wait_finished(client, deployment_id)
    results = await results_of(client, deployment_id)
    assert info["status"] == "Succeeded" and "done" in results, results
    for form in (ENCODED_VALUE, *text_forms(ENCODED_VALUE), *base64_lines(ENCODED_VALUE)):
        assert form not in results, form
    assert decoded_leaks(results, ENCODED_VALUE) == [], results
    for line in ("plain: [redacted]", 'json: {"key": "[redacted]"}',
                 'json ascii: {"key": "[redacted]"}', "quoted: ?key=[redacted]&",
                 "quoted plus: ?key=[redacted]&", "base64 76:\n[redacted]\n[redacted]\n",
                 "base64 64:\n[redacted]\n[redacted]\n", "url-safe 76:\n[redacted]\n[redacted]\n",
                 "url-safe 64:\n[redacted]\n[redacted]\n"):
        assert line in results, (line, results)
    for label in ("offset 0", "offset 1", "offset 2", "url-safe offset 1", "url-safe offset 2"):
        # What is left is the groups the bytes around it change: up to 2 bytes of the value.
        shown = re.search(f"^{label}: (.*)$", results, re.M)
        assert shown and re.fullmatch(r"\S{0,4}\[redacted\]\S{0,8}", shown[1]), (label, results)


TICKER = """\
i=0
while [ $i -lt 40 ]; do echo "tick $i $DEPLOY_KEY"; i=$((i+1)); sleep 0.25; done
"""


@pytest.mark.slow
def test_a_restart_in_the_middle_of_a_deployment_keeps_its_secrets_redacted(
        tmp_path, docker_client, base_image, git_server):
    """Restart: SPEED is killed (-9) while a container prints its secret every 0.25 s; meanwhile
    the operator deletes the secret and lowers runner.timeout under the file's timeout (found
    by a hostile review: each made the restarted SPEED store the value in clear); the next start
    reattaches. Asserts: the deployment succeeds with output from both sides of the restart,
    none of which shows the value, and the database files never hold it."""
    import sqlite3

    import yaml

    from tests.process import speed_processes
    with speed_processes(tmp_path, docker_client) as make:
        bot = make()
        url, pattern = app_repository(git_server, {
            "Dockerfile": "FROM speed-test-base:latest\nCOPY . /app\nCMD [\"sh\", \"/app/run.sh\"]\n",
            "run.sh": TICKER, ".speed.yml": "secrets: [DEPLOY_KEY]\ntimeout: 100\n"})
        status, _ = bot.call("PUT", "/secrets/DEPLOY_KEY", {"value": VALUE,
                                                            "repositories": [pattern]})
        assert status == 201
        deployment_id = bot.start_deployment(url)
        bot.wait_output(deployment_id, "tick 2 ")
        bot.kill9()
        with sqlite3.connect(bot.db_path) as db:
            db.execute("DELETE FROM secret")
        config = yaml.safe_load(bot.config_path.read_text())
        config["runner"]["timeout"] = 90
        bot.config_path.write_text(yaml.safe_dump(config))
        bot.start()
        info = bot.wait_finished(deployment_id, timeout=90)
        results = bot.results(deployment_id)
        assert info["status"] == "Succeeded", results
        assert "tick 39 [redacted]" in results and "tick 2 [redacted]" in results
        assert VALUE not in results
        database = b"".join(open(path, "rb").read() for path in glob.glob(f"{bot.db_path}*"))
        assert VALUE.encode() not in database
        assert bot.row(deployment_id)["secrets_sealed"] is None  # kept only while it ran
