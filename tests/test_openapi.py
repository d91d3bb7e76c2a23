"""GET /openapi.json: a valid OpenAPI 3 document of every route, and the live server keeps to it.

schemathesis generates requests from the document the server serves (its examples, boundary and
negative values, random data) and checks every answer: no 5xx, and only documented status codes,
content types, headers and bodies. The only repositories this SPEED may deploy point at a tarpit
that accepts connections and never answers, so nothing is ever built: a deployment stays Running
(one at a time) or Pending until it is cancelled or moved by /update.
"""
import asyncio
import json
import time

import pytest
import requests
import schemathesis
from aiohttp import web
from schemathesis.checks import not_a_server_error
from schemathesis.engine import Status, events, from_schema
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from bot.keys import store_key
from runner.settings import Ceiling, parse
from storage import deployments as queries
from tests.conftest import wait_for

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
MAX_EXAMPLES = 25
# Open until its deployment finishes: tested on its own, with a deployment made to finish.
EVENTS = "/deployments/{id}/events"
TOKEN = "openapi-test-token-0123456789"


@pytest.fixture
async def tarpit():
    """A port that accepts connections and never answers (git waits there until cancelled)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in held:
        writer.close()
    await server.wait_closed()


@pytest.fixture
async def speed(make_client, tarpit):
    """SPEED that may deploy only from the tarpit, one deployment at a time."""
    return await make_client(runner__allowed_urls=[f"http://127.0.0.1:{tarpit}/*"],
                             runner__max_concurrent=1, runner__git_timeout=300)


async def document_of(client) -> dict:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    return await response.json()


def schema_of(document: dict, base_url: str, **settings) -> schemathesis.BaseSchema:
    """The document loaded by schemathesis, aimed at base_url; no example database, no cache."""
    config = schemathesis.Config.from_dict({
        "base-url": base_url.rstrip("/"),
        "cache": {"enabled": False},
        "workers": 1,
        "request-timeout": 10,
        "continue-on-failure": True,
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
        "checks": {"enabled": False, **{check.__name__: {"enabled": True} for check in CHECKS}},
        **settings,
    })
    return schemathesis.openapi.from_dict(document, config=config)


async def start(client, tarpit_port: int, name: str = "app") -> int:
    response = await client.post("/start", json={
        "url": f"http://127.0.0.1:{tarpit_port}/{name}.git", "branch": "main"})
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def status_of(client, deployment_id: int) -> str:
    return (await (await client.get(f"/info/{deployment_id}")).json())["status"]


def routes_served(app: web.Application) -> set[tuple[str, str]]:
    """(method, path with unnamed parameters) of every route, without aiohttp's implicit HEADs."""
    served = set()
    for route in app.router.routes():
        resource = route.resource
        if isinstance(resource, web.StaticResource):
            path = resource.canonical + "/{}"
        else:
            path = resource.canonical
        if route.method != "HEAD":
            served.add((route.method, _unnamed(path)))
    return served


def _unnamed(path: str) -> str:
    while "{" in path:
        head, _, rest = path.partition("{")
        path = head + "\0" + rest.partition("}")[2]
    return path.replace("\0", "{}")


async def test_document_is_valid_openapi_and_describes_every_route(client):
    document = await document_of(client)
    assert document["openapi"].startswith("3.")
    # Against the OpenAPI 3 meta-schema; raises with the first violation.
    schemathesis.openapi.from_dict(document).validate()
    documented = {(method.upper(), _unnamed(path))
                  for path, operations in document["paths"].items() for method in operations}
    served = routes_served(client.app)
    assert served - documented == set(), "routes the document does not describe"
    assert documented - served == set(), "documented routes the server does not serve"


async def test_security_is_optional_without_tokens_and_required_with_them(make_client):
    open_ = await document_of(await make_client("open"))
    public = await document_of(await make_client("public", auth__api_tokens=[TOKEN],
                                                 auth__public_reads=True))
    private = await document_of(await make_client("private", auth__api_tokens=[TOKEN]))
    mutating = {("/start", "post"), ("/update", "post"), ("/add_results/{id}", "post"),
                ("/cancel/{id}", "post"), ("/redeploy/{id}", "post"),
                ("/environments/{id}/rollback", "post"),
                # Secrets need a token whenever tokens are set: reads too, even public_reads.
                ("/secrets", "get"), ("/secrets/{name}", "put"), ("/secrets/{name}", "delete")}
    reads = {("/", "get"), ("/info/{id}", "get"), ("/results/{id}", "get"),
             ("/deployments", "get"), ("/deployments/{id}", "get"),
             ("/deployments/{id}/events", "get"), ("/metrics", "get"),
             ("/environments", "get")}
    token_or_session = [{"bearerAuth": []}, {"sessionCookie": []}]
    for path, method in mutating:
        assert open_["paths"][path][method]["security"] == [{"bearerAuth": []}, {}]
        assert public["paths"][path][method]["security"] == token_or_session
        assert private["paths"][path][method]["security"] == token_or_session
    for path, method in reads:
        assert private["paths"][path][method]["security"] == token_or_session
        assert "401" in private["paths"][path][method]["responses"]
    # A browser opening a page it may not see is sent to sign in; the secrets page even with
    # public reads.
    for document, pages in ((open_, set()), (public, {"/secrets"}),
                            (private, {"/", "/deployments/{id}", "/secrets", "/environments"})):
        assert {path for path, operations in document["paths"].items()
                if "303" in operations.get("get", {}).get("responses", {})} == pages
    for document, expected in ((open_, mutating), (public, mutating), (private, mutating | reads)):
        secured = {(path, method) for path, operations in document["paths"].items()
                   for method, operation in operations.items() if "security" in operation}
        assert secured == expected


async def test_refusals_without_a_token_keep_to_the_document(make_client, tarpit):
    """With tokens configured, every mutating endpoint answers a documented 401."""
    guarded = await make_client("guarded", auth__api_tokens=[TOKEN],
                                runner__allowed_urls=[f"http://127.0.0.1:{tarpit}/*"])
    response = await guarded.post("/start", json={"url": f"http://127.0.0.1:{tarpit}/a.git",
                                                  "branch": "main"},
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    deployment_id = (await response.json())["id"]
    schema = schema_of(await document_of(guarded), str(guarded.make_url("")))
    calls = [("/start", "POST", {}, {"url": "https://example.com/a.git", "branch": "main"}),
             ("/update", "POST", {}, {"id": deployment_id, "new_results": "hello"}),
             ("/add_results/{id}", "POST", {"id": deployment_id}, {"results": "hello"}),
             ("/cancel/{id}", "POST", {"id": deployment_id}, None),
             ("/redeploy/{id}", "POST", {"id": deployment_id}, None)]

    def call_all() -> list[int]:
        statuses = []
        for path, method, path_parameters, body in calls:
            operation = schema[path][method]
            extra = {"body": body, "media_type": "application/json"} if body else {}
            case = operation.Case(path_parameters=path_parameters, **extra)
            response = case.call()
            case.validate_response(response, checks=CHECKS)
            statuses.append(response.status_code)
        return statuses

    assert await asyncio.to_thread(call_all) == [401] * len(calls)


def run_schemathesis(schema) -> list[str]:
    """The failures schemathesis finds, the first of each kind per operation with its
    reproduction; raises if the run itself fails."""
    found: dict[tuple[str, str], str] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.FatalError):
            raise event.exception
        if isinstance(event, events.NonFatalError):
            found.setdefault((event.label, event.info.title), f"{event.label}: {event.info}")
        if isinstance(event, events.ScenarioFinished) and event.status == Status.FAILURE:
            for case_id, checks in event.recorder.checks.items():
                response = event.recorder.find_response(case_id=case_id)
                answer = (f"[{response.status_code}] {response.content[:300]!r}"
                          if response is not None else "(no response)")
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    label = event.label or "stateful"
                    found.setdefault((label, failure.title),
                                     f"{label} ({event.phase.value}): {failure}\n{answer}\n"
                                     f"{check.failure_info.code_sample}")
    return list(found.values())


async def test_schemathesis_finds_nothing_against_the_live_server(speed, tarpit):
    # Deployments in every state to act on: one Running (git waits in the tarpit), two Pending
    # behind it (with a waiting_reason), and one finished.
    ids = [await start(speed, tarpit, f"app{n}") for n in range(4)]
    await wait_for(lambda: _has_status(speed, ids[0], "Running"), timeout=30)
    assert (await speed.post("/update", json={"id": ids[3], "new_results": "Failed"})).status \
        == 200
    schema = schema_of(await document_of(speed), str(speed.make_url(""))).exclude(path=EVENTS)
    began = time.monotonic()
    failures = await asyncio.to_thread(run_schemathesis, schema)
    took = time.monotonic() - began
    assert not failures, (f"schemathesis found {len(failures)} problem(s) in {took:.0f} s "
                          f"(seed {schema.config.seed}):\n\n" + "\n\n".join(failures))


async def _has_status(client, deployment_id: int, status: str) -> bool:
    return await status_of(client, deployment_id) == status


async def test_event_stream_ends_once_the_deployment_finishes(speed, tarpit):
    deployment_id = await start(speed, tarpit)
    await wait_for(lambda: _has_status(speed, deployment_id, "Running"), timeout=30)
    schema = schema_of(await document_of(speed), str(speed.make_url("")))
    operation = schema[EVENTS]["GET"]
    live = operation.Case(path_parameters={"id": deployment_id})
    missing = operation.Case(path_parameters={"id": 10**6})

    def follow(case):
        response = case.call(timeout=30)
        case.validate_response(response, checks=CHECKS)
        return response

    stream = asyncio.create_task(asyncio.to_thread(follow, live))
    await asyncio.sleep(0.5)
    assert not stream.done(), "the stream must stay open while the deployment runs"
    assert (await speed.post(f"/cancel/{deployment_id}")).status == 200
    response = await asyncio.wait_for(stream, timeout=30)
    assert response.status_code == 200
    kinds = [(line.partition(": ")[2]) for line in response.text.splitlines()
             if line.startswith("event: ")]
    assert kinds[-1] == "end" and "status" in kinds
    data = [json.loads(line.partition(": ")[2]) for line in response.text.splitlines()
            if line.startswith("data: ")]
    assert data[-1] == {"status": "Cancelled"}
    info = await (await speed.get(f"/info/{deployment_id}")).json()
    last_status = [d for kind, d in zip(kinds, data) if kind == "status"][-1]
    assert last_status == info, "status events show the deployment as /info does"
    assert (await asyncio.to_thread(follow, missing)).status_code == 404


# Inputs the bounded random run does not reach (or rarely), each to be answered as the document
# says: a 4xx {"error"}; each once answered 500.
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("headers, body", [
    pytest.param({"X-GitHub-Event": "ping", "Content-Type": "application/json"}, DEEP,
                 id="json-nested-too-deep"),
    pytest.param({"X-GitHub-Event": "ping", "Content-Type": "application/json; charset=nope"},
                 "{}", id="unknown-charset"),
    pytest.param({"X-GitHub-Event": "issues", "Content-Type": "application/json"},
                 '{"action": "\\ud800"}', id="lone-surrogate-in-payload"),
    pytest.param({"X-GitHub-Event": "\xff", "Content-Type": "application/json"}, "{}",
                 id="non-utf8-event-header"),
    pytest.param({"X-GitHub-Event": "ping", "Content-Type": "application/x-www-form-urlencoded"},
                 "payload=%7B%7D", id="form-encoded-ping"),
    pytest.param({"X-GitHub-Event": "ping", "Content-Type": "application/json"}, "[1]",
                 id="not-an-object"),
])
async def test_webhook_edge_inputs_keep_to_the_document(client, headers, body):
    schema = schema_of(await document_of(client), str(client.make_url("")))
    case = schema["/webhook"]["POST"].Case(body={}, media_type="application/json")
    headers = {"X-GitHub-Delivery": f"edge-{time.monotonic_ns()}", **headers}

    def deliver():
        response = requests.post(str(client.make_url("/webhook")), headers=headers,
                                 data=body.encode(), timeout=10)
        case.validate_response(response, checks=CHECKS)
        return response

    response = await asyncio.to_thread(deliver)
    assert response.status_code in (200, 400), response.text


async def test_an_unserved_method_is_405_with_allow(client):
    response = await client.put("/start")
    assert response.status == 405
    assert await response.json() == {"error": "Method Not Allowed"}
    assert response.headers.get("Allow") == "POST"


async def test_a_static_name_too_long_is_not_found(client):
    schema = schema_of(await document_of(client), str(client.make_url("")))
    case = schema["/static/{file}"]["GET"].Case(path_parameters={"file": "a" * 300})

    def fetch():
        response = case.call()
        case.validate_response(response, checks=CHECKS)
        return response

    assert (await asyncio.to_thread(fetch)).status_code == 404


def call_and_validate(schema, path: str, method: str, expected: int, headers=None,
                      **case):
    """One documented call (never following a redirect), its answer checked against the
    document; it must be `expected`."""
    operation = schema[path][method]
    built = operation.Case(headers=headers or {}, **case)
    response = built.call(allow_redirects=False)
    built.validate_response(response, checks=CHECKS)
    assert response.status_code == expected, (method, path, case, response.text)
    return response


async def test_secrets_routes_keep_to_the_document(make_client):
    """Every answer of PUT, GET and DELETE /secrets..., for a browser as for a program, with
    tokens and public reads (secrets still need the token): created, replaced, listed (JSON
    and the page), refused without a token (401, a browser sent to sign in: 303), a name SPEED
    refuses (400), a bad body (400), one too large (413), an unknown name (404)."""
    client = await make_client(auth__api_tokens=[TOKEN], auth__public_reads=True)
    schema = schema_of(await document_of(client), str(client.make_url("")))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    html = {"Accept": "text/html,application/xhtml+xml"}
    body = {"value": "s3cr3t-value", "repositories": ["github.com/acme/*"],
            "branches": ["main"], "pull_requests": True}
    named = {"path_parameters": {"name": "DEPLOY_KEY"}, "media_type": "application/json"}

    def calls() -> None:
        call_and_validate(schema, "/secrets/{name}", "PUT", 201, auth, body=body, **named)
        replaced = call_and_validate(schema, "/secrets/{name}", "PUT", 200, auth,
                                     body={**body, "branches": []}, **named)
        assert replaced.json()["branches"] == []
        call_and_validate(schema, "/secrets/{name}", "PUT", 401, body=body, **named)
        call_and_validate(schema, "/secrets/{name}", "PUT", 400, auth, body=body,
                          path_parameters={"name": "SPEED_TOKEN"},
                          media_type="application/json")
        call_and_validate(schema, "/secrets/{name}", "PUT", 400, auth,
                          body={**body, "repositories": ["acme/app"]}, **named)
        call_and_validate(schema, "/secrets/{name}", "PUT", 413, auth,
                          body={**body, "value": "x" * (2 * 1024 * 1024)}, **named)
        listed = call_and_validate(schema, "/secrets", "GET", 200, auth)
        assert [s["name"] for s in listed.json()["secrets"]] == ["DEPLOY_KEY"]
        page = call_and_validate(schema, "/secrets", "GET", 200, {**auth, **html})
        assert page.headers["content-type"][0].startswith("text/html")
        call_and_validate(schema, "/secrets", "GET", 401)
        signing_in = call_and_validate(schema, "/secrets", "GET", 303, html)
        assert signing_in.headers["location"] == ["/login?next=/secrets"]
        call_and_validate(schema, "/secrets/{name}", "DELETE", 401,
                          path_parameters={"name": "DEPLOY_KEY"})
        call_and_validate(schema, "/secrets/{name}", "DELETE", 200, auth,
                          path_parameters={"name": "DEPLOY_KEY"})
        call_and_validate(schema, "/secrets/{name}", "DELETE", 404, auth,
                          path_parameters={"name": "DEPLOY_KEY"})
        call_and_validate(schema, "/secrets/{name}", "DELETE", 400, auth,
                          path_parameters={"name": "1_NOT_A_NAME"})

    await asyncio.to_thread(calls)


SPEED_YML = """\
env: {GREETING: hello, WORKERS: 4}
secrets: [DEPLOY_KEY]
timeout: 120
build: {dockerfile: docker/Dockerfile, context: docker, args: {VERSION: 1.2}, target: runtime}
resources: {memory: 256m, cpus: 0.5}
"""


async def test_a_deployments_settings_environment_and_pull_request_keep_to_the_document(client):
    """A deployment of a pull request whose commit carries every .speed.yml setting, under a
    rule naming an environment, as /info and /deployments show it; and one without settings
    yet (null). Both answers match the document's Deployment exactly (no field left out)."""
    settings = parse(SPEED_YML, Ceiling(timeout=1800, memory="1g", cpus=1.0))
    store = client.app[store_key]
    full = await store.run(queries.create, "https://github.com/acme/app.git", "feature",
                           status="Failed", trigger="pull_request", pull_request=42,
                           environment="staging", settings=settings.to_json())
    bare = await store.run(queries.create, "https://github.com/acme/app.git", "main",
                           status="Cancelled")
    schema = schema_of(await document_of(client), str(client.make_url("")))

    def calls() -> tuple[dict, dict, list]:
        shown = [call_and_validate(schema, "/info/{id}", "GET", 200,
                                   path_parameters={"id": d.id}).json() for d in (full, bare)]
        listed = call_and_validate(schema, "/deployments", "GET", 200).json()["deployments"]
        return *shown, listed

    info, bare_info, listed = await asyncio.to_thread(calls)
    assert info["settings"] == {
        "env": {"GREETING": "hello", "WORKERS": "4"}, "secrets": ["DEPLOY_KEY"], "timeout": 120.0,
        "build": {"dockerfile": "docker/Dockerfile", "context": "docker",
                  "args": {"VERSION": "1.2"}, "target": "runtime"},
        "resources": {"memory": "256m", "cpus": 0.5}, "service": None}
    assert (info["environment"], info["pull_request"]) == ("staging", 42)
    assert (bare_info["settings"], bare_info["environment"], bare_info["pull_request"]) == (
        None, None, None)
    assert [d["id"] for d in listed] == [bare.id, full.id]
