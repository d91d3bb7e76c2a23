"""Secrets never shown, end to end: a real SPEED process with API tokens and a GitHub token
deploys a private repository (cloned with that token) whose container prints its own
$SPEED_TOKEN and environment; then no token and no credential from a URL appears anywhere SPEED
shows or says something — its JSON, its pages, its event stream, its metrics, its error messages,
the commit statuses it posts to GitHub, and its own log."""
import asyncio
import base64
import dataclasses
import json
import pathlib
import secrets
import threading
import uuid

import pytest
import requests
import yaml

from tests.conftest import DOCKERFILE, TEST_INSTANCES, free_port
from tests.fake_github import FakeGitHub
from tests.invariants import check
from tests.process import SpeedProcess
from tests.webhooks import delivery_headers, encode, push_payload

pytestmark = pytest.mark.slow

API_TOKEN = "api-" + secrets.token_urlsafe(32)
WEBHOOK_SECRET = "whs-" + secrets.token_urlsafe(24)
URL_PASSWORD = "pw-" + secrets.token_urlsafe(24)  # a password in a URL someone asks to deploy
URL_USER_TOKEN = "ghp_" + secrets.token_hex(18)  # a token as a URL's user name (GitHub takes it)
FINAL = ("Succeeded", "Failed", "Cancelled")
HTML = {"Accept": "text/html,application/xhtml+xml"}

# The deployment of the private repository: prints its environment and its token, on stdout and
# (set -x shows the expanded command) on stderr, calls back with the token, then waits for the
# test to read its token from the engine and to let it go.
SCRIPT = """\
env | sort
echo "token=$SPEED_TOKEN"
set -x
wget -q -O- --header "Authorization: Bearer $SPEED_TOKEN" \\
     --post-data '{"results": "called back"}' "$SPEED_API_URL/add_results/$SPEED_DEPLOYMENT_ID"
wget -q -O- --header "Authorization: Bearer $SPEED_TOKEN" \\
     --post-data '{"id": '$SPEED_DEPLOYMENT_ID', "new_results": "halfway"}' "$SPEED_API_URL/update"
set +x
echo printed
while [ ! -e /tmp/go ]; do sleep 0.1; done
echo "released token=$SPEED_TOKEN"
"""

# A container that sends its token in the body of its own callbacks, as a script that reports
# its environment might.
CALLBACK_SCRIPT = """\
post() { wget -q -O- --header "Authorization: Bearer $SPEED_TOKEN" --post-data "$2" "$SPEED_API_URL$1"; }
post /add_results/$SPEED_DEPLOYMENT_ID "{\\"results\\": \\"environment: $(env | grep ^SPEED_ | sort | tr '\\n' ' ')\\"}"
post /update "{\\"id\\": $SPEED_DEPLOYMENT_ID, \\"new_results\\": \\"debug SPEED_TOKEN=$SPEED_TOKEN\\"}"
echo posted
while [ ! -e /tmp/go ]; do sleep 0.1; done
"""


class GitHubInThread:
    """The stand-in GitHub, serving from an event loop of its own, so the test may block."""

    def __init__(self, token: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake = self.run(self._start(token))

    @staticmethod
    async def _start(token: str) -> FakeGitHub:
        fake = FakeGitHub(token=token)
        await fake.start()
        return fake

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self) -> None:
        self.run(self.fake.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclasses.dataclass
class Exposure:
    """What the scenario showed, by where it was shown, and the secrets that must not be in it."""
    secrets: dict[str, str]  # name -> secret (SPEED_TOKEN, clone token, API token, ...)
    shown: dict[str, str]  # where -> everything shown there
    errors: dict[str, tuple[int, str]]  # probe -> (status, body)
    deployed: dict  # /info of the private deployment
    failed: dict  # /info of the private deployment of a missing branch
    results: str  # /results of the private deployment
    container_saw: str  # env and a grep for the clone token, run inside the container
    callback_token: str  # the SPEED_TOKEN of the deployment that posted it in callbacks
    callback_shown: dict[str, str]  # where -> what that deployment shows
    log: str  # SPEED's own log output, start to stop


def leaks(text: str, named: dict[str, str]) -> list[str]:
    """The names of the secrets that text shows, whole or by their first or last 12 characters
    (what a cut at a cap or a frame boundary would leave)."""
    found = []
    for name, secret in named.items():
        pieces = {secret, secret[:12], secret[-12:]} if len(secret) >= 24 else {secret}
        if any(piece in text for piece in pieces):
            found.append(name)
    return found


def follow_events(session: requests.Session, url: str, on_log: str | None = None,
                  then=None) -> str:
    """The raw event stream until `end`; once a log event contains on_log, call then()."""
    lines, event = [], None
    with session.get(url, stream=True, timeout=(5, 60)) as response:
        assert response.status_code == 200, response.text
        # One byte at a time: a larger read could wait for bytes that come only after then().
        for line in response.iter_lines(chunk_size=1, decode_unicode=True):
            lines.append(line)
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                if event == "end":
                    return "\n".join(lines)
                if event == "log" and then and on_log in json.loads(line.removeprefix("data: ")):
                    then()
                    then = None
    raise AssertionError(f"the event stream ended without `end`: {lines[-5:]}")


def page_texts(session: requests.Session, base: str, deployment_ids: list[int]) -> dict[str, str]:
    """The list page and each deployment's page, as a browser asks for them."""
    texts = {}
    for path in ["/", *(f"/deployments/{i}" for i in deployment_ids)]:
        response = session.get(base + path, headers=HTML, timeout=10, allow_redirects=False)
        assert response.status_code == 200, (path, response.status_code)
        texts[path] = response.text
    return texts


@pytest.fixture(scope="module")
def exposure(tmp_path_factory, git_server, docker_client, base_image):
    """Run the scenario once: deploy, probe, collect what every surface shows, stop SPEED."""
    clone_token = git_server.private_token
    github = GitHubInThread(clone_token)  # SPEED's GitHub token is the repository's clone token
    github.fake.fail_next(2)  # two failed reports: SPEED logs them, and must not log the token
    bot = SpeedProcess(tmp_path_factory.mktemp("speed"), free_port(), free_port())
    config = yaml.safe_load(bot.config_path.read_text())
    config["server"]["public_url"] = bot.base_url
    config["runner"]["allowed_urls"] = ["http://127.0.0.1:*", "https://*", "ssh://*"]
    config["auth"] = {"api_tokens": [API_TOKEN]}
    config["github"] = {"token": clone_token, "api_url": github.fake.url,
                        "web_url": git_server.base_url, "webhook_secret": WEBHOOK_SECRET,
                        "report_retry_for": 60}
    config["repos"] = [{"match": "private/*"}]
    bot.config_path.write_text(yaml.safe_dump(config))
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {API_TOKEN}"
    base = bot.base_url
    try:
        bot.start()
        TEST_INSTANCES.add(bot.instance)

        def start(url: str, branch: str = "main") -> int:
            response = api.post(f"{base}/start", json={"url": url, "branch": branch}, timeout=10)
            assert response.status_code == 201, response.text
            return response.json()["id"]

        def info(deployment_id: int) -> dict:
            return api.get(f"{base}/info/{deployment_id}", timeout=10).json()

        def results(deployment_id: int) -> str:
            return api.get(f"{base}/results/{deployment_id}", timeout=10).json()["results"]

        def wait_finished(deployment_id: int) -> dict:
            return bot.wait_until(lambda: (i := info(deployment_id))["status"] in FINAL and i)

        def container_of(deployment_id: int) -> str:
            found = docker_client.api.containers(filters={"label": [
                f"speed.instance={bot.instance}", f"speed.deployment={deployment_id}"]})
            assert len(found) == 1, found
            return found[0]["Id"]

        def token_of(container_id: str) -> str:
            env = docker_client.api.inspect_container(container_id)["Config"]["Env"]
            return next(e.split("=", 1)[1] for e in env if e.startswith("SPEED_TOKEN="))

        def release(container_id: str) -> None:
            run = docker_client.api.exec_create(container_id, ["touch", "/tmp/go"])
            docker_client.api.exec_start(run["Id"])

        # The private repository, cloned with SPEED's GitHub token.
        full_name = f"private/secrets-{uuid.uuid4().hex[:8]}"
        git_server.commit(full_name, {"Dockerfile": DOCKERFILE, "run.sh": SCRIPT})
        url = git_server.url(full_name)
        deployed_id = start(url)
        bot.wait_until(lambda: "printed\n" in results(deployed_id))
        container_id = container_of(deployed_id)
        speed_token = token_of(container_id)
        basic = base64.b64encode(f"x-access-token:{clone_token}".encode()).decode()
        # What the repository's code can see: its environment, and its files and /etc, /tmp
        # searched for the clone token (grep exits 1: it ran and found nothing).
        look = docker_client.api.exec_create(container_id, [
            "sh", "-c", 'env; grep -rlF -e "$1" -e "$2" /app /etc /tmp; echo "grep exit $?"',
            "sh", clone_token, basic])
        container_saw = docker_client.api.exec_start(look["Id"]).decode()
        # The event stream, followed live: the container is let go once its output came.
        events = follow_events(api, f"{base}/deployments/{deployed_id}/events", on_log="printed",
                               then=lambda: release(container_id))
        deployed = wait_finished(deployed_id)
        # A clone of a missing branch of the private repository: git's error output is stored.
        failed_id = start(url, "no-such-branch")
        failed = wait_finished(failed_id)
        failed_events = follow_events(api, f"{base}/deployments/{failed_id}/events")

        # Probes that carry credentials in what they send.
        errors = {}
        port = git_server.base_url.rsplit(":", 1)[1]
        for probe in [f"https://user:{URL_PASSWORD}@github.com/acme/app.git",
                      f"https://x-access-token:{URL_PASSWORD}@github.com/acme/app.git",
                      f"https://{URL_USER_TOKEN}@github.com/acme/app.git",
                      f"https://{URL_USER_TOKEN}:x-oauth-basic@github.com/acme/app.git",
                      f"http://user:{URL_PASSWORD}@127.0.0.1:{port}/{full_name}.git",
                      f"ssh://git:{URL_PASSWORD}@github.com/acme/app.git",
                      f"https://user:{URL_PASSWORD}@github.com/acme/app .git",
                      f"https://user:{URL_PASSWORD}@-github.com/acme/app.git",
                      f"ext::sh -c echo%20{URL_PASSWORD}"]:
            response = api.post(f"{base}/start", json={"url": probe, "branch": "main"}, timeout=10)
            errors[f"/start {probe}"] = (response.status_code, response.text)
        payload = push_payload(f"private/probe-{uuid.uuid4().hex[:8]}",
                               f"http://x-access-token:{URL_PASSWORD}@127.0.0.1:{port}/x.git")
        body = encode(payload)
        response = requests.post(f"{base}/webhook", data=body, timeout=10,
                                 headers=delivery_headers("push", body, WEBHOOK_SECRET))
        errors["/webhook with a credential in clone_url"] = (response.status_code, response.text)
        response = requests.post(f"{base}/login", data={"token": URL_PASSWORD, "next": "/"},
                                 timeout=10, allow_redirects=False)
        errors["/login with a wrong token"] = (response.status_code, response.text)
        response = requests.post(f"{base}/start", json={"url": url, "branch": "main"}, timeout=10,
                                 headers={"Authorization": f"Bearer {URL_PASSWORD}"})
        errors["/start with a wrong API token"] = (response.status_code, response.text)

        # A browser's session: signed in with the API token, then only the cookie.
        browser = requests.Session()
        response = browser.post(f"{base}/login", data={"token": API_TOKEN, "next": "/"},
                                timeout=10, allow_redirects=False)
        assert response.status_code == 303 and browser.cookies, response.text
        # What the sign-in answers besides the cookie it exists to set (which holds no token).
        login_answer = "\n".join([*(f"{k}: {v}" for k, v in response.headers.items()
                                     if k.lower() != "set-cookie"), response.text])
        session_cookie = next(iter(browser.cookies)).value

        ids = [deployed_id, failed_id]
        shown = {f"/results/{i}": results(i) for i in ids}
        shown.update({f"/info/{i}": api.get(f"{base}/info/{i}", timeout=10).text for i in ids})
        shown["/deployments"] = api.get(f"{base}/deployments", timeout=10).text
        shown["/metrics"] = api.get(f"{base}/metrics", timeout=10).text
        shown[f"/deployments/{deployed_id}/events, live"] = events
        shown[f"/deployments/{failed_id}/events"] = failed_events
        shown.update({f"page {path}, bearer": text
                      for path, text in page_texts(api, base, ids).items()})
        shown.update({f"page {path}, session": text
                      for path, text in page_texts(browser, base, ids).items()})
        shown["POST /login answer"] = login_answer
        # Every deployment finished, its container gone, GitHub's last status final.
        check(bot.target(), docker_client, github=github.fake)
        shown["commit statuses posted to GitHub"] = json.dumps(
            [{"repository": name, "sha": sha, "statuses": posted}
             for (name, sha), posted in github.fake.statuses.items()])
        results_text = shown[f"/results/{deployed_id}"]

        # Then the container that posts its own token in its callbacks.
        callback_name = f"private/callback-{uuid.uuid4().hex[:8]}"
        git_server.commit(callback_name, {"Dockerfile": DOCKERFILE, "run.sh": CALLBACK_SCRIPT})
        callback_id = start(git_server.url(callback_name))
        bot.wait_until(lambda: "posted\n" in results(callback_id))
        callback_container = container_of(callback_id)
        callback_token = token_of(callback_container)
        release(callback_container)
        wait_finished(callback_id)
        callback_shown = {"/results": results(callback_id),
                          "/info": api.get(f"{base}/info/{callback_id}", timeout=10).text,
                          "/deployments": api.get(f"{base}/deployments", timeout=10).text,
                          "events": follow_events(api, f"{base}/deployments/{callback_id}/events")}
        callback_shown.update(page_texts(api, base, [callback_id]))
        check(bot.target(), docker_client, github=github.fake)
    finally:
        bot.stop()
        github.close()
    yield Exposure(
        secrets={"SPEED_TOKEN": speed_token, "clone token": clone_token,
                 "clone token as git's Basic credential": basic, "API token": API_TOKEN,
                 "webhook secret": WEBHOOK_SECRET, "password from a URL": URL_PASSWORD,
                 "token from a URL": URL_USER_TOKEN, "session cookie": session_cookie},
        shown=shown, errors=errors, deployed=deployed, failed=failed, results=results_text,
        container_saw=container_saw, callback_token=callback_token,
        callback_shown=callback_shown, log=pathlib.Path(bot.log_path).read_text())


def test_the_secrets_were_in_play(exposure, git_server):
    """Guards against passing vacuously. Asserts: the private deployment Succeeded, cloned with the
    token (the git server saw it), its container had a SPEED_TOKEN, printed it (stored only as
    [redacted]) and called back with it; the missing branch failed with git's message."""
    assert exposure.deployed["status"] == "Succeeded", exposure.results
    expected = "Basic " + exposure.secrets["clone token as git's Basic credential"]
    assert expected in git_server.seen_authorization
    assert len(exposure.secrets["SPEED_TOKEN"]) >= 40
    for line in ("SPEED_TOKEN=[redacted]\n", "token=[redacted]\n", "called back",
                 "released token=[redacted]\n"):
        assert line in exposure.results, line
    assert exposure.deployed["progress"] == "halfway"
    assert "Bearer [redacted]" in exposure.results  # set -x on stderr, redacted too
    assert exposure.failed["status"] == "Failed"
    assert "no-such-branch" in exposure.shown[f"/results/{exposure.failed['id']}"]


def test_api_json_shows_no_secret(exposure):
    """Leak: a token or URL credential in /results, /info or /deployments (the container's output,
    git's output, reasons, progress). Asserts: none of the secrets, whole or cut, in any of them."""
    for where, text in exposure.shown.items():
        if where.startswith(("/results", "/info", "/deployments")) and "events" not in where:
            assert leaks(text, exposure.secrets) == [], where


def test_pages_show_no_secret(exposure):
    """Leak: a token rendered into the HTML pages — the list `/` and each deployment's page with its
    full log — read with a bearer token and with a browser's session cookie. Asserts: none of the
    secrets (the session cookie's value included) in any page, nor in the sign-in's answer."""
    pages = {w: t for w, t in exposure.shown.items() if w.startswith(("page ", "POST /login"))}
    assert len(pages) == 7
    for where, text in pages.items():
        assert leaks(text, exposure.secrets) == [], where


def test_event_stream_shows_no_secret(exposure):
    """Leak: a token in the Server-Sent Events of a deployment, followed live from its start to
    `end` while the container printed its token, and replayed for a failed clone. Asserts: none
    of the secrets in either stream, which carried the log (`[redacted]`) and ended."""
    streams = {w: t for w, t in exposure.shown.items() if "events" in w}
    assert len(streams) == 2
    for where, text in streams.items():
        assert "event: end" in text and "event: log" in text, where
        assert leaks(text, exposure.secrets) == [], where
    live = exposure.shown[f"/deployments/{exposure.deployed['id']}/events, live"]
    assert "token=[redacted]" in live and "released token=[redacted]" in live


def test_metrics_show_no_secret(exposure):
    """Leak: a token or URL in a Prometheus label. Asserts: none of the secrets in /metrics."""
    assert "speed_deployments_finished_total" in exposure.shown["/metrics"]
    assert leaks(exposure.shown["/metrics"], exposure.secrets) == []


def test_error_messages_do_not_echo_credentials(exposure):
    """Leak: an error that quotes what it refused — /start of URLs with a password or a token in
    them (valid, with a space, with a '-' host, ext::), a signed push whose clone_url carries a
    credential, a sign-in and a /start with a wrong token. Asserts: each refused (400, an
    'ignored' 200 for the webhook, 401) without the credential in its answer, and nothing of them
    recorded (only the scenario's two deployments are listed)."""
    for probe, (status, body) in exposure.errors.items():
        expected = {"/webhook": 200, "/login": 401, "/start with a wrong": 401}
        want = next((code for prefix, code in expected.items() if probe.startswith(prefix)), 400)
        assert status == want, (probe, status, body)
        assert leaks(body, exposure.secrets) == [], probe
    webhook = json.loads(exposure.errors["/webhook with a credential in clone_url"][1])
    assert webhook["message"].startswith("ignored: url: credentials")
    listed = json.loads(exposure.shown["/deployments"])["deployments"]
    assert sorted(d["id"] for d in listed) == [exposure.deployed["id"], exposure.failed["id"]]


def test_commit_statuses_posted_to_github_show_no_secret(exposure):
    """Leak: a token in what SPEED posts to GitHub, which shows it on pull requests (descriptions,
    target_url). Asserts: statuses were posted, final ones included, and none holds a secret."""
    statuses = exposure.shown["commit statuses posted to GitHub"]
    assert '"state": "success"' in statuses
    assert leaks(statuses, exposure.secrets) == []


def test_speed_log_shows_no_secret(exposure):
    """Leak: a token in SPEED's own log (stderr): access lines, failed GitHub reports (the stand-in
    failed two), git failures, refused webhooks, callbacks. Asserts: the log recorded those
    events, and holds none of the secrets, the callback deployment's SPEED_TOKEN included."""
    log = exposure.log
    assert "to GitHub failed" in log  # the two failed reports were logged
    assert "POST /start" in log and "ignored: url: credentials" in log
    named = {**exposure.secrets, "callback SPEED_TOKEN": exposure.callback_token}
    assert leaks(log, named) == []


def test_clone_token_never_reaches_the_container(exposure):
    """Leak: SPEED's GitHub token handed to the repository's own code — in the container's
    environment, or left in the cloned .git/config or files copied into the image. Asserts: the
    container's env and a search of /app, /etc and /tmp (run inside it) find neither the token
    nor git's Basic credential, while the search did run."""
    assert "SPEED_DEPLOYMENT_ID=" in exposure.container_saw
    assert "grep exit 1" in exposure.container_saw, exposure.container_saw
    tokens = {k: v for k, v in exposure.secrets.items() if k.startswith("clone token")}
    assert leaks(exposure.container_saw, tokens) == []


def test_container_posting_its_token_in_callbacks_does_not_show_it(exposure):
    """Leak: a container reports its environment through its own callbacks (/add_results with
    `env`, /update with a progress line holding $SPEED_TOKEN). SPEED knows the token (the request
    authenticates with it). Asserts: the token is not in /results, /info (progress),
    /deployments, the event stream or the deployment's page."""
    assert "environment: SPEED_API_URL=" in exposure.callback_shown["/results"]
    named = {"callback SPEED_TOKEN": exposure.callback_token}
    shown_in = [where for where, text in exposure.callback_shown.items() if leaks(text, named)]
    assert shown_in == [], f"the token is shown in: {shown_in}"
