"""GET /openapi.json: the OpenAPI 3 document of SPEED's HTTP API.

The document is built once, here, as plain data. Keep it in step with the handlers: the tests run
schemathesis against the live server from what this route serves (tests/test_openapi.py).
"""
import copy

from aiohttp import web

from bot import feed
from bot.keys import config_key
from bot.secrets_api import MAX_PATTERNS, MAX_VALUE
from runner.secrets import MIN_VALUE
from storage.releases import ReleaseState

routes = web.RouteTableDef()

STATUSES = ["Pending", "Running", "Succeeded", "Failed", "Cancelled"]
SQLITE_MAX_INT = 2**63 - 1


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _nullable(kind: str, **more) -> dict:
    return {"type": kind, "nullable": True, **more}


def _errors(*codes: int) -> dict:
    """The error responses an operation may give, every one {"error": "..."}; 500 and 507 on all."""
    names = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
             409: "Conflict", 413: "PayloadTooLarge", 422: "KeyReused", 500: "InternalError",
             507: "InsufficientStorage"}
    return {str(code): _ref("responses", names[code]) for code in (*codes, 500, 507)}


# Seconds to wait before asking again.
RETRY_AFTER = {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}

# Mutating endpoints: a bearer token when auth.api_tokens is set, nothing otherwise. The empty
# requirement ({}) is that "nothing"; the document served by an instance with tokens leaves it out.
OPTIONAL_BEARER = [{"bearerAuth": []}, {}]

ID_PARAMETER = {
    "name": "id", "in": "path", "required": True,
    "description": "A deployment id: a positive decimal integer. Anything else (zero, a sign, "
                   "letters, more than 19 digits) is answered 404 like an unknown id.",
    "schema": {"type": "integer", "minimum": 1, "maximum": SQLITE_MAX_INT},
    "example": 1,
}

DEPLOYMENT = {
    "type": "object",
    "description": "A deployment as /info shows it.",
    "additionalProperties": False,
    "required": ["id", "repo_name", "repo_branch", "repo_full_name", "status", "commit", "trigger",
                 "progress",
                 "reason", "exit_code", "created_at", "started_at", "finished_at", "phases",
                 "waiting_reason", "settings", "environment", "pull_request", "environment_url"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "repo_name": {"type": "string", "description": "The repository URL deployed."},
        "repo_branch": {"type": "string"},
        "repo_full_name": _nullable("string", description="owner/name on GitHub when a repos: "
                                                          "rule covers the repository."),
        "status": {"type": "string", "enum": STATUSES},
        "commit": _nullable("string", description="The commit sha; null until it is known "
                                                  "(a manual deployment's, once cloned)."),
        "trigger": {"type": "string", "enum": ["manual", "push", "pull_request", "redeploy"]},
        "progress": _nullable("string", description="The latest progress report (/update)."),
        "reason": _nullable("string", description="Why it finished as it did, e.g. "
                                                  "\"exit code 3\" or \"cancelled\"."),
        "exit_code": _nullable("integer", description="The container's exit code."),
        "created_at": {"type": "string", "format": "date-time",
                       "description": "UTC, milliseconds, e.g. 2026-11-26T00:27:01.123Z."},
        "started_at": _nullable("string", format="date-time"),
        "finished_at": _nullable("string", format="date-time"),
        "phases": {
            "type": "object",
            "description": "Seconds each phase took; null until the phase finished.",
            "additionalProperties": False,
            "required": ["clone", "build", "run"],
            "properties": {phase: _nullable("number", minimum=0)
                           for phase in ("clone", "build", "run")},
        },
        "waiting_reason": _nullable("string", description="For a Pending deployment in /info "
                                    "and /deployments: its place in the queue and the limit "
                                    "holding it; null otherwise."),
        "settings": _ref("schemas", "Settings"),
        "environment": _nullable("string", description="The environment its repos: rule names "
                                                       "(SPEED_ENVIRONMENT in the container)."),
        "pull_request": _nullable("integer", minimum=1, description="The pull request's number, "
                                                                    "for a pull_request trigger."),
        "environment_url": _nullable("string", description="A service: the address of the "
                                     "environment it released to (through the proxy)."),
    },
}

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}

SETTINGS = _nullable("object", **{
    "description": "What the commit's .speed.yml set, as in effect for the deployment (the "
                   "defaults for a commit without the file); null until the file was read and "
                   "accepted (after the clone), and for good when it could not be used. "
                   "Secrets by name only: no value is ever shown.",
    "additionalProperties": False,
    "required": ["env", "secrets", "timeout", "build", "resources", "service"],
    "properties": {
        "env": {**_STRINGS, "description": "Environment variables for the container."},
        "secrets": {"type": "array", "items": {"type": "string"},
                    "description": "The names of the secrets the container gets."},
        "timeout": _nullable("number", minimum=0, description="Seconds, clone to exit (never "
                                                              "above runner.timeout); null: "
                                                              "runner.timeout."),
        "build": {
            "type": "object", "additionalProperties": False,
            "required": ["dockerfile", "context", "args", "target"],
            "properties": {
                "dockerfile": {"type": "string", "description": "A path in the repository."},
                "context": {"type": "string", "description": "A directory in the repository."},
                "args": {**_STRINGS, "description": "Build arguments."},
                "target": _nullable("string", description="The stage to build; null: the last."),
            },
        },
        "resources": {
            "type": "object", "additionalProperties": False, "required": ["memory", "cpus"],
            "properties": {
                "memory": _nullable("string", description="e.g. 512m; null: runner.memory."),
                "cpus": _nullable("number", minimum=0, description="null: runner.cpus."),
            },
        },
        "service": _nullable("object", **{
            "description": "Set when the deployment is a service (a release that stays up "
                           "behind the proxy); null: a job, whose container runs to its exit.",
            "additionalProperties": False, "required": ["port", "health", "keep", "drain"],
            "properties": {
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "health": {
                    "type": "object", "additionalProperties": False,
                    "required": ["path", "interval", "timeout", "deadline", "passes"],
                    "properties": {"path": {"type": "string"},
                                   "interval": {"type": "number", "minimum": 0},
                                   "timeout": {"type": "number", "minimum": 0},
                                   "deadline": {"type": "number", "minimum": 0},
                                   "passes": {"type": "integer", "minimum": 1}},
                },
                "keep": {"type": "integer", "minimum": 0},
                "drain": {"type": "number", "minimum": 0},
            },
        }),
    },
})

RELEASE = {
    "type": "object", "additionalProperties": False,
    "required": ["id", "deployment", "commit", "state", "started_at", "live_since", "retired_at",
                 "rollback"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "deployment": {"type": "integer", "minimum": 1, "description": "The deployment that "
                       "started it."},
        "commit": _nullable("string"),
        "state": {"type": "string", "enum": [s.value for s in ReleaseState],
                  "description": "starting → healthy → live → draining → retired; failed: "
                                 "never healthy; removed: torn down or beyond `service.keep`."},
        "started_at": {"type": "string", "format": "date-time"},
        "live_since": _nullable("string", format="date-time"),
        "retired_at": _nullable("string", format="date-time"),
        "rollback": {"type": "boolean", "description": "Whether a rollback may return to it "
                     "(a retired release whose image is kept)."},
    },
}

ENVIRONMENT = {
    "type": "object", "additionalProperties": False,
    "required": ["id", "repository", "name", "url", "live", "healthy", "health", "releases"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "repository": {"type": "string", "description": "owner/name on GitHub, else the "
                       "repository's host and path."},
        "name": {"type": "string", "description": "production (or the repos: rule's "
                 "environment) for pushes and manual starts; pr-<number> for a pull request."},
        "url": {"type": "string", "description": "Where the proxy serves it."},
        "live": {**_ref("schemas", "Release"), "nullable": True},
        "healthy": {"type": "boolean"},
        "health": _nullable("string", description="What the last check of the live release "
                            "saw; null when healthy."),
        "releases": {"type": "array", "items": _ref("schemas", "Release"),
                     "description": "The newest releases first."},
    },
}

# A secret's name: it becomes an environment variable of the container.
SECRET_NAME = "^[A-Za-z_][A-Za-z0-9_]{0,127}$"

SECRET = {
    "type": "object",
    "description": "A secret as the API shows it: everything but its value, which never leaves "
                   "SPEED except into the environment of the deployments its scope allows.",
    "additionalProperties": False,
    "required": ["name", "repositories", "branches", "pull_requests", "created_at",
                 "updated_at", "updated_by"],
    "properties": {
        "name": {"type": "string", "pattern": SECRET_NAME},
        "repositories": {"type": "array", "minItems": 1, "items": {"type": "string"},
                         "description": "host/path globs, lower case (github.com/acme/*)."},
        "branches": {"type": "array", "items": {"type": "string"},
                     "description": "Branch globs; empty: every branch."},
        "pull_requests": {"type": "boolean",
                          "description": "Whether pull requests from the repository itself get "
                                         "it (forks never do)."},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time",
                       "description": "When it was last set."},
        "updated_by": {"type": "string",
                       "description": "Which API token last set it, as the start of the "
                                      "token's sha256 (\"token sha256:0123456789ab\"), or "
                                      "\"no token (the API is open)\"."},
    },
}

# One event of the stream (before OpenAPI 3.2's itemSchema, the schema of an event stream is
# read as describing each event): `data` is JSON text.
SSE_EVENT = {
    "type": "object", "additionalProperties": False, "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["status", "log", "end"]},
        "data": {"type": "string", "description": "status: the deployment as /info shows it; "
                                                  "log: the result's text as a JSON string; "
                                                  "end: {\"status\": ...}."},
        "id": {"type": "string", "pattern": "^[0-9]+$",
               "description": "A log event's result id (Last-Event-ID on reconnection)."},
    },
}

HTML_PAGE = {"description": "An HTML page.",
             "content": {"text/html": {"schema": {"type": "string"}}}}

COMPONENTS = {
    "securitySchemes": {
        "sessionCookie": {
            "type": "apiKey", "in": "cookie", "name": "speed_session",
            "description": "A browser's login session (POST /login with an API token). Accepted "
                           "wherever an API token is.",
        },
        "bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "`Authorization: Bearer <token>`: one of `auth.api_tokens`. Required "
                           "on POST /start, /update, /add_results/{id}, /cancel/{id} and "
                           "/redeploy/{id}, and on every /secrets route (reads included, "
                           "whatever `auth.public_reads` says), when `auth.api_tokens` is set, "
                           "and then on other reads too (deployments, results, pages, events, "
                           "metrics) unless `auth.public_reads`; without configured tokens "
                           "everything is open "
                           "(SPEED then listens on loopback only). /update and "
                           "/add_results/{id} also take the deployment's own token "
                           "(`SPEED_TOKEN` in its container).",
        },
    },
    "schemas": {
        "Error": {
            "type": "object", "additionalProperties": False, "required": ["error"],
            "properties": {"error": {"type": "string", "description": "What went wrong."}},
        },
        "Message": {
            "type": "object", "additionalProperties": False, "required": ["message"],
            "properties": {"message": {"type": "string"}},
        },
        "Created": {
            "type": "object", "additionalProperties": False, "required": ["id"],
            "properties": {"id": {"type": "integer", "minimum": 1,
                                  "description": "The new deployment's id."}},
        },
        "Deployment": DEPLOYMENT,
        "Settings": SETTINGS,
        "Environment": ENVIRONMENT,
        "Release": RELEASE,
        "Secret": SECRET,
        "Health": {
            "type": "object", "additionalProperties": False, "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "checks": {
                    "type": "object", "additionalProperties": False,
                    "required": ["database", "docker"],
                    "properties": {
                        "database": {"type": "string", "description": "\"ok\" or \"failing: ...\""},
                        "docker": {"type": "string", "description": "\"ok\" or \"failing: ...\""},
                    },
                },
            },
        },
    },
    "responses": {
        "BadRequest": {
            "description": "Malformed JSON, a body that is not an object, a missing or "
                           "wrong-typed field (named in the message), or a refused value.",
            "content": _json(_ref("schemas", "Error"))},
        "Unauthorized": {
            "description": "No valid token (only when tokens are required); for /webhook, a "
                           "missing or wrong X-Hub-Signature-256.",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string", "enum": ["Bearer"]}}},
            "content": _json(_ref("schemas", "Error"))},
        "Forbidden": {
            "description": "Refused: a webhook while no secret is set and SPEED listens "
                           "beyond loopback, or a static path that is a directory.",
            "content": _json(_ref("schemas", "Error"))},
        "NotFound": {
            "description": "No deployment has that id (or the id is not a positive decimal "
                           "integer).",
            "content": _json(_ref("schemas", "Error"))},
        "Conflict": {
            "description": "The deployment cannot make that move (e.g. it already finished).",
            "content": _json(_ref("schemas", "Error"))},
        "KeyReused": {
            "description": "The Idempotency-Key came before with another request; nothing was "
                           "queued.",
            "content": _json(_ref("schemas", "Error"))},
        "PayloadTooLarge": {
            "description": "The request body is over the limit (1 MiB; 25 MiB for /webhook).",
            "content": _json(_ref("schemas", "Error"))},
        "MethodNotAllowed": {
            "description": "A method the path does not serve (with an `Allow` header).",
            "content": _json(_ref("schemas", "Error"))},
        "InternalError": {
            "description": "An unexpected failure; it is logged, never echoed.",
            "content": _json(_ref("schemas", "Error"))},
        "InsufficientStorage": {
            "description": "The database's disk is full: nothing was changed; retry once space "
                           "is freed.",
            "content": _json(_ref("schemas", "Error"))},
    },
}


SECRET_NAME_PARAMETER = {
    "name": "name", "in": "path", "required": True,
    "description": "Letters, digits and _, not starting with a digit nor with SPEED_ (any "
                   "case): it becomes an environment variable. Any other name is answered 400.",
    "schema": {"type": "string", "pattern": SECRET_NAME}, "example": "DEPLOY_KEY",
}

SECRET_NOT_A_NAME = {"description": "Not a secret's path (e.g. an empty name).",
                     "content": _json(_ref("schemas", "Error"))}


def _json_body(schema: dict, example: dict) -> dict:
    return {"required": True,
            "description": "A JSON object; a field not named here is refused (400). The "
                           "Content-Type header is not checked.",
            "content": {"application/json": {
                "schema": {**schema, "additionalProperties": False}, "example": example}}}


PATHS = {
    "/": {
        "get": {
            "operationId": "deployments_list_page", "tags": ["pages"],
            "summary": "Deployments, newest first, as a page (filtered, a page at a time)",
            "parameters": [
                {"name": "status", "in": "query", "required": False, "allowEmptyValue": True,
                 "description": "Only deployments in this status (any case; empty: all).",
                 "schema": {"type": "string", "enum": STATUSES}},
                {"name": "repo", "in": "query", "required": False, "allowEmptyValue": True,
                 "description": "Only deployments whose repository URL contains this text.",
                 "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "required": False, "allowEmptyValue": True,
                 "description": "Deployments per page (empty: the default).",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                {"name": "before", "in": "query", "required": False, "allowEmptyValue": True,
                 "description": "Only deployments older than this id: the next page.",
                 "schema": {"type": "integer", "minimum": 1, "maximum": SQLITE_MAX_INT}},
            ],
            "responses": {"200": HTML_PAGE, **_errors(400)},
        },
    },
    "/start": {
        "post": {
            "operationId": "start", "tags": ["deployments"],
            "summary": "Queue a deployment of a repository's branch",
            "description": "With an `Idempotency-Key` header, a request sent again (its answer "
                           "lost) within a day with the same API token gets the deployment the "
                           "first one queued, with `Idempotent-Replayed: true`, instead of a "
                           "second one. Keys are each token's own.",
            "security": OPTIONAL_BEARER,
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,100}$"}}],
            "requestBody": _json_body({
                "type": "object", "required": ["url", "branch"],
                "properties": {
                    "url": {"type": "string", "minLength": 1, "maxLength": 2048,
                            "description": "A repository URL that `runner.allowed_urls` "
                                           "permits (https, http, ssh or git)."},
                    "branch": {"type": "string", "minLength": 1, "maxLength": 255,
                               "description": "A valid git branch name."},
                },
            }, {"url": "https://github.com/acme/app.git", "branch": "main"}),
            "responses": {
                "201": {"description": "Queued.", "content": _json(_ref("schemas", "Created"))},
                **_errors(400, 401, 413, 422),
            },
        },
    },
    "/info/{id}": {
        "get": {
            "operationId": "info", "tags": ["deployments"], "summary": "One deployment",
            "description": "Answered with an `ETag`; a client that sends it back in "
                           "`If-None-Match` gets `304` with no body while the deployment is "
                           "unchanged.",
            "parameters": [ID_PARAMETER, {
                "name": "If-None-Match", "in": "header", "required": False,
                "schema": {"type": "string"},
                "description": "The `ETag` of an earlier answer."}],
            "responses": {
                "200": {"description": "The deployment.",
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                        "content": _json(_ref("schemas", "Deployment"))},
                "304": {"description": "Unchanged since the answer whose `ETag` was sent.",
                        "headers": {"ETag": {"schema": {"type": "string"}}}},
                **_errors(404),
            },
        },
    },
    "/update": {
        "post": {
            "operationId": "update", "tags": ["deployments"],
            "summary": "Move a deployment to a status, or record a progress report",
            "description": "A `new_results` that is a status word (Pending, Running, Succeeded, "
                           "Failed, Cancelled; any case, surrounding spaces ignored) moves the "
                           "deployment, legal moves only; any other text becomes its `progress` "
                           "and is appended to its results.",
            "security": OPTIONAL_BEARER,
            "requestBody": _json_body({
                "type": "object", "required": ["id", "new_results"],
                "properties": {
                    "id": {"type": "integer", "description": "The deployment's id."},
                    "new_results": {"type": "string", "minLength": 1},
                },
            }, {"id": 1, "new_results": "migrations done"}),
            "responses": {
                "200": {"description": "Recorded.", "content": _json(_ref("schemas", "Message"))},
                **_errors(400, 401, 404, 409, 413),
            },
        },
    },
    "/add_results/{id}": {
        "post": {
            "operationId": "add_results", "tags": ["deployments"],
            "summary": "Append text to a deployment's results",
            "security": OPTIONAL_BEARER,
            "parameters": [ID_PARAMETER],
            "requestBody": _json_body({
                "type": "object", "required": ["results"],
                "properties": {"results": {"type": "string", "minLength": 1}},
            }, {"results": "smoke test passed"}),
            "responses": {
                "200": {"description": "Appended.", "content": _json(_ref("schemas", "Message"))},
                **_errors(400, 401, 404, 413),
            },
        },
    },
    "/results/{id}": {
        "get": {
            "operationId": "results", "tags": ["deployments"],
            "summary": "Everything recorded for a deployment, in order, as one string",
            "parameters": [ID_PARAMETER],
            "responses": {
                "200": {"description": "Build log, container output and added results.",
                        "content": _json({
                            "type": "object", "additionalProperties": False,
                            "required": ["results"],
                            "properties": {"results": {"type": "string"}}})},
                **_errors(404),
            },
        },
    },
    "/deployments": {
        "get": {
            "operationId": "deployments", "tags": ["deployments"],
            "summary": "Deployments, newest first, filtered",
            "parameters": [
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                {"name": "status", "in": "query", "required": False,
                 "description": "Only deployments in this status (any case).",
                 "schema": {"type": "string", "enum": STATUSES}},
                {"name": "repo", "in": "query", "required": False,
                 "description": "Only deployments whose repository URL contains this text.",
                 "schema": {"type": "string"}},
                {"name": "before", "in": "query", "required": False,
                 "description": "Only deployments older than this id (the next page).",
                 "schema": {"type": "integer", "minimum": 0, "maximum": SQLITE_MAX_INT}},
            ],
            "responses": {
                "200": {"description": "The deployments.",
                        "content": _json({
                            "type": "object", "additionalProperties": False,
                            "required": ["deployments"],
                            "properties": {"deployments": {
                                "type": "array", "maxItems": 500,
                                "items": _ref("schemas", "Deployment")}}})},
                **_errors(400),
            },
        },
    },
    "/cancel/{id}": {
        "post": {
            "operationId": "cancel", "tags": ["deployments"],
            "summary": "Stop a queued or running deployment",
            "security": OPTIONAL_BEARER,
            "parameters": [ID_PARAMETER],
            "responses": {
                "200": {"description": "The deployment, now Cancelled.",
                        "content": _json(_ref("schemas", "Deployment"))},
                **_errors(401, 404, 409),
            },
        },
    },
    "/redeploy/{id}": {
        "post": {
            "operationId": "redeploy", "tags": ["deployments"],
            "summary": "Queue a new deployment of the same repository, branch and commit",
            "security": OPTIONAL_BEARER,
            "parameters": [ID_PARAMETER],
            "responses": {
                "201": {"description": "Queued.", "content": _json(_ref("schemas", "Created"))},
                **_errors(401, 404),
            },
        },
    },
    "/environments": {
        "get": {
            "operationId": "environments", "tags": ["environments"],
            "summary": "Every environment with its live release, health and history; for a "
                       "browser, the environments page (with rollback buttons)",
            "responses": {
                "200": {"description": "The environments, by repository and name (or the page).",
                        "content": {**_json({
                            "type": "object", "additionalProperties": False,
                            "required": ["environments"],
                            "properties": {"environments": {
                                "type": "array", "items": _ref("schemas", "Environment")}}}),
                            **HTML_PAGE["content"]}},
                **_errors(),
            },
        },
    },
    "/environments/{id}/rollback": {
        "post": {
            "operationId": "rollback", "tags": ["environments"],
            "summary": "Queue a deployment that makes an earlier kept release live again",
            "description": "No clone and no build: the release's image and settings, health-"
                           "gated like any switch. Without a body, the newest kept release.",
            "security": OPTIONAL_BEARER,
            "parameters": [{**ID_PARAMETER, "description": "An environment id."}],
            "requestBody": {**_json_body({
                "type": "object", "properties": {"release": {"type": "integer", "minimum": 1}},
            }, {"release": 1}), "required": False},
            "responses": {
                "201": {"description": "Queued.", "content": _json(_ref("schemas", "Created"))},
                **_errors(400, 401, 404, 409, 413),
            },
        },
    },
    "/secrets": {
        "get": {
            "operationId": "secrets", "tags": ["secrets"],
            "summary": "Every secret's name, scope and history (never a value); for a browser, "
                       "the secrets page",
            "description": "A request whose Accept names text/html (a browser opening the page) "
                           "gets the secrets page; any other gets JSON. Needs an API token "
                           "whenever `auth.api_tokens` is set, even with `auth.public_reads`.",
            "security": OPTIONAL_BEARER,
            "responses": {
                "200": {"description": "The secrets, by name (or the page).",
                        "content": {**_json({
                            "type": "object", "additionalProperties": False,
                            "required": ["secrets"],
                            "properties": {"secrets": {"type": "array",
                                                       "items": _ref("schemas", "Secret")}}}),
                            **HTML_PAGE["content"]}},
                **_errors(401),
            },
        },
    },
    "/secrets/{name}": {
        "put": {
            "operationId": "set_secret", "tags": ["secrets"],
            "summary": "Create or replace a secret",
            "description": "The value is encrypted at rest and never shown again: deployments "
                           "whose commit's .speed.yml names the secret get it as an "
                           "environment variable, if its scope allows them.",
            "security": OPTIONAL_BEARER,
            "parameters": [SECRET_NAME_PARAMETER],
            "requestBody": _json_body({
                "type": "object", "required": ["value", "repositories"],
                "properties": {
                    "value": {"type": "string", "minLength": MIN_VALUE, "maxLength": MAX_VALUE,
                              "description": "The secret itself (no NUL)."},
                    "repositories": {
                        "type": "array", "minItems": 1, "maxItems": MAX_PATTERNS,
                        "items": {"type": "string", "minLength": 1},
                        "description": "Which repositories may get it: host/path globs, the "
                                       "host written out, `*` and `?` within one path segment "
                                       "(github.com/acme/app, github.com/acme/*)."},
                    "branches": {
                        "type": "array", "maxItems": MAX_PATTERNS,
                        "items": {"type": "string", "minLength": 1},
                        "description": "Branch globs; absent or empty: every branch."},
                    "pull_requests": {
                        "type": "boolean", "default": False,
                        "description": "Whether pull requests from the repository itself get "
                                       "it; pull requests from forks never do."},
                },
            }, {"value": "s3cr3t-value", "repositories": ["github.com/acme/app"],
                "branches": ["main"], "pull_requests": False}),
            "responses": {
                "200": {"description": "Replaced.", "content": _json(_ref("schemas", "Secret"))},
                "201": {"description": "Created.", "content": _json(_ref("schemas", "Secret"))},
                **_errors(400, 401, 413),
                "404": SECRET_NOT_A_NAME,
            },
        },
        "delete": {
            "operationId": "delete_secret", "tags": ["secrets"],
            "summary": "Delete a secret",
            "description": "Deployments that ask for it afterwards fail, saying it is not "
                           "defined.",
            "security": OPTIONAL_BEARER,
            "parameters": [SECRET_NAME_PARAMETER],
            "responses": {
                "200": {"description": "Deleted.", "content": _json(_ref("schemas", "Message"))},
                **_errors(400, 401),
                "404": {"description": "No secret has that name.",
                        "content": _json(_ref("schemas", "Error"))},
            },
        },
    },
    "/deployments/{id}": {
        "get": {
            "operationId": "deployment_page", "tags": ["pages"],
            "summary": "One deployment and its results as a page (GitHub's target_url)",
            "parameters": [ID_PARAMETER],
            "responses": {"200": HTML_PAGE, **_errors(404)},
        },
    },
    "/deployments/{id}/events": {
        "get": {
            "operationId": "deployment_events", "tags": ["deployments"],
            "summary": "Live progress as Server-Sent Events",
            "description": "`status` events (data: the deployment as /info shows it), `log` "
                           "events (data: one new result's text, JSON-encoded; id: the result's "
                           "id) until the deployment finished, then one `end` event (data: "
                           "`{\"status\": ...}`) and the stream closes. It stays open while the "
                           "deployment is unfinished. Open streams are capped: "
                           f"{feed.MAX_PER_CLIENT} per client (an API token, a login session, "
                           f"else an address) and {feed.MAX_STREAMS} in all.",
            "parameters": [
                ID_PARAMETER,
                {"name": "after", "in": "query", "required": False,
                 "description": "Resume after this result id; anything but a decimal integer "
                                "counts as 0.",
                 "schema": {"type": "integer", "minimum": 0}},
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "description": "As `after`, and preferred to it (sent by EventSource on "
                                "reconnection).",
                 "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {"description": "An event stream.",
                        "headers": {"Cache-Control": {"schema": {"type": "string",
                                                                 "enum": ["no-cache"]}}},
                        "content": {"text/event-stream": {"schema": SSE_EVENT}}},
                "429": {"description": "This client has as many live streams open as it may "
                                       "(one ends when its deployment finishes or its client "
                                       "hangs up).",
                        "headers": {"Retry-After": RETRY_AFTER},
                        "content": _json(_ref("schemas", "Error"))},
                "503": {"description": "As many live streams are open as SPEED serves.",
                        "headers": {"Retry-After": RETRY_AFTER},
                        "content": _json(_ref("schemas", "Error"))},
                **_errors(404),
            },
        },
    },
    "/webhook": {
        "post": {
            "operationId": "webhook", "tags": ["github"],
            "summary": "Receive a GitHub webhook delivery",
            "description": "Verified with `X-Hub-Signature-256` (HMAC-SHA256 of the body with "
                           "`github.webhook_secret`) before anything else. Without a secret, "
                           "deliveries are refused (403) unless SPEED listens on loopback only; "
                           "with none set, a signed delivery cannot be verified (401). A "
                           "redelivered `X-GitHub-Delivery` gets the first answer.",
            "parameters": [
                {"name": "X-GitHub-Event", "in": "header", "required": True,
                 "description": "push and pull_request deploy; ping answers pong; others are "
                                "ignored.",
                 "schema": {"type": "string", "minLength": 1}, "example": "push"},
                {"name": "X-GitHub-Delivery", "in": "header", "required": True,
                 "description": "The delivery's GUID; stored, so a redelivery creates nothing "
                                "new.",
                 "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                 "example": "72d3162e-cc78-11e3-81ab-4c9367dc0958"},
                {"name": "X-Hub-Signature-256", "in": "header", "required": False,
                 "description": "`sha256=<hex HMAC>`; required when `github.webhook_secret` is "
                                "set (X-Hub-Signature, SHA-1, alone is not accepted).",
                 "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"}},
            ],
            "requestBody": {
                "required": True,
                "description": "GitHub's payload: JSON, or form-encoded with the JSON in "
                               "`payload` (GitHub's two content types).",
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "description": "The event's payload "
                                   "(GitHub documents each event's fields)."},
                        "example": {"ref": "refs/heads/main",
                                    "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                                    "repository": {"full_name": "acme/app", "clone_url":
                                                   "https://github.com/acme/app.git"}}},
                    "application/x-www-form-urlencoded": {
                        "schema": {"type": "object", "required": ["payload"],
                                   "properties": {"payload": {
                                       "type": "string",
                                       "description": "The JSON payload as text."}}}},
                },
            },
            "responses": {
                "200": {"description": "Nothing to deploy: `pong`, or `ignored: <why>`.",
                        "content": _json(_ref("schemas", "Message"))},
                "202": {"description": "A deployment was queued (or had been, for a "
                                       "redelivery).",
                        "content": _json(_ref("schemas", "Created"))},
                **_errors(400, 401, 403, 413),
            },
        },
    },
    "/healthz": {
        "get": {
            "operationId": "healthz", "tags": ["operations"],
            "summary": "Whether the database and the container engine answer",
            "responses": {
                "200": {"description": "Healthy.", "content": _json(_ref("schemas", "Health"))},
                "503": {"description": "Unhealthy; the failing check says why.",
                        "content": _json(_ref("schemas", "Health"))},
                **_errors(),
            },
        },
    },
    "/metrics": {
        "get": {
            "operationId": "metrics", "tags": ["operations"],
            "summary": "Prometheus metrics",
            "responses": {
                "200": {"description": "The Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
                **_errors(),
            },
        },
    },
    "/badge/{owner}/{repo}.svg": {
        "get": {
            "operationId": "badge", "tags": ["pages"],
            "summary": "A status badge for a repository",
            "description": "The status of the newest deployment of the GitHub repository "
                           "owner/repo (any case): passing, failing, running, cancelled, or "
                           "unknown when it has none (as any other name has).",
            "parameters": [
                {"name": "owner", "in": "path", "required": True,
                 "schema": {"type": "string", "minLength": 1}, "example": "acme"},
                {"name": "repo", "in": "path", "required": True,
                 "schema": {"type": "string", "minLength": 1}, "example": "app"},
                {"name": "branch", "in": "query", "required": False,
                 "description": "Only deployments of this branch.",
                 "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {"description": "An SVG image.",
                        "headers": {"Cache-Control": {"schema": {"type": "string",
                                                                 "enum": ["no-cache"]}}},
                        "content": {"image/svg+xml": {"schema": {"type": "string"}}}},
                "404": {"description": "Not a badge path (a name with { or }).",
                        "content": _json(_ref("schemas", "Error"))},
                **_errors(),
            },
        },
    },
    "/static/{file}": {
        "get": {
            "operationId": "static", "tags": ["pages"],
            "summary": "The pages' stylesheet and scripts",
            "parameters": [
                {"name": "file", "in": "path", "required": True,
                 "schema": {"type": "string", "minLength": 1}, "example": "speed.css"},
            ],
            "responses": {
                "200": {"description": "The file.",
                        "content": {media: {"schema": {"type": "string"}} for media in
                                    ("text/css", "application/javascript", "text/javascript")}},
                **_errors(403, 404),
            },
        },
    },
    "/login": {
        "get": {
            "operationId": "login_page", "tags": ["pages"],
            "summary": "The sign-in form (with auth.api_tokens, reads need a token or a session)",
            "parameters": [{"name": "next", "in": "query", "required": False,
                            "description": "Where to go after signing in (a path here).",
                            "schema": {"type": "string"}}],
            "responses": {"200": HTML_PAGE, **_errors()},
        },
        "post": {
            "operationId": "login", "tags": ["pages"],
            "summary": "Exchange an API token for a session cookie (HttpOnly, SameSite=Strict)",
            "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": {
                    "token": {"type": "string"}, "next": {"type": "string"}}}}}},
            "responses": {"303": {"description": "Signed in: on to `next` (a path here, else /)."},
                          "401": {"description": "Not one of the API tokens: the form again.",
                                  "content": HTML_PAGE["content"]},
                          **_errors(400, 403, 413)},
        },
    },
    "/logout": {
        "post": {
            "operationId": "logout", "tags": ["pages"],
            "summary": "End the browser's session",
            "responses": {"303": {"description": "Signed out: on to /login."}, **_errors(403)},
        },
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi", "tags": ["operations"],
            "summary": "This document",
            "responses": {
                "200": {"description": "The OpenAPI document.",
                        "content": _json({"type": "object",
                                          "required": ["openapi", "info", "paths"]})},
                **_errors(),
            },
        },
    },
}

DOCUMENT = {
    "openapi": "3.0.3",
    "info": {
        "title": "SPEED",
        "version": "1",
        "description": "SPEED deploys a git repository's branch: it clones it, builds its "
                       "Dockerfile, runs the image and records what it prints. Every error is "
                       "JSON, `{\"error\": \"...\"}`; a method a path does not serve is answered "
                       "405 with an `Allow` header, an unknown path 404.",
    },
    "tags": [{"name": "deployments"}, {"name": "environments"}, {"name": "secrets"},
             {"name": "github"},
             {"name": "pages"}, {"name": "operations"}],
    "paths": PATHS,
    "components": COMPONENTS,
}


# Reads that stay open with tokens (see bot/auth.py): health, this document, badges, sign-in.
OPEN_READS = {"/healthz", "/openapi.json", "/login", "/static/{file}", "/badge/{owner}/{repo}.svg"}


def _tokens_required(document: dict, private_reads: bool) -> dict:
    """The document for an instance with auth.api_tokens: no anonymous alternative, and reads
    secured too unless auth.public_reads."""
    required = copy.deepcopy(document)
    for path, operations in required["paths"].items():
        for method, operation in operations.items():
            if "security" in operation:
                operation["security"] = [s for s in operation["security"] if s]
            elif private_reads and method == "get" and path not in OPEN_READS:
                operation["security"] = [{"bearerAuth": []}]
                operation["responses"]["401"] = _ref("responses", "Unauthorized")
            if "security" in operation:
                operation["security"].append({"sessionCookie": []})
                if "text/html" in operation["responses"].get("200", {}).get("content", {}):
                    operation["responses"]["303"] = {
                        "description": "A browser (Accept: text/html) without a session: on to "
                                       "/login?next=<this page>."}
    return required


DOCUMENT_WITH_TOKENS = _tokens_required(DOCUMENT, private_reads=True)
DOCUMENT_WITH_PUBLIC_READS = _tokens_required(DOCUMENT, private_reads=False)


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """This instance's API as an OpenAPI 3 document."""
    auth = request.app[config_key].auth
    if not auth.api_tokens:
        return web.json_response(DOCUMENT)
    return web.json_response(DOCUMENT_WITH_PUBLIC_READS if auth.public_reads
                             else DOCUMENT_WITH_TOKENS)
