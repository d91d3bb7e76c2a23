"""Every correctly signed delivery of any event GitHub sends gets a 2xx; only push and
pull_request deploy, and malformed deliveries are still refused."""
import itertools
import re
import uuid
import zlib

import pytest

from bot.keys import store_key, worker_key
from bot.webhook import COUNTED_EVENTS
from storage import deployments as queries
from tests.conftest import wait_finished
from tests.webhooks import (delivery_headers, encode, fake_sha, pull_request_payload, push_payload,
                            repository, sign)

SECRET = "webhook-secret-for-every-event"
RULES = [{"match": "acme/*", "pull_requests": True}]
CLOSED = "http://127.0.0.1:9"  # nothing listens: a deployment queued here fails at its clone
# No rule names this repository, so push and pull_request ask for nothing here either.
ELSEWHERE = "octo-org/hello-world"

# The events GitHub sends: name -> (actions, its own top-level keys, which of repository (R),
# sender (S), installation (I), organization (O) and enterprise (E) it carries). Upper-case
# objects are always there; lower-case ones and keys marked ? only in some deliveries (all of them
# in the "full" variant, none in the "bare" one). Shapes from GitHub's payload examples and
# webhook schemas as octokit/webhooks (payload-examples/api.github.com/<event>) and
# octokit/openapi-webhooks publish them, by event name; no payload text is copied here.
EVENTS = {
    "branch_protection_configuration": ("disabled enabled", "", "RSioe"),
    "branch_protection_rule": ("created deleted edited", "rule changes?", "RSioe"),
    "check_run": ("completed created requested_action rerequested",
                  "check_run requested_action?", "RSioe"),
    "check_suite": ("completed requested rerequested", "check_suite", "RSioe"),
    "code_scanning_alert": ("appeared_in_branch closed_by_user created fixed reopened "
                            "reopened_by_user", "alert commit_oid ref", "RSioe"),
    "commit_comment": ("created", "comment", "RSioe"),
    "create": ("", "description master_branch pusher_type ref ref_type", "RSioe"),
    "custom_property": ("created deleted promote_to_enterprise updated", "definition", "sioe"),
    "custom_property_values": ("updated", "new_property_values old_property_values", "RsiOe"),
    "delete": ("", "pusher_type ref ref_type", "RSioe"),
    "dependabot_alert": ("auto_dismissed auto_reopened created dismissed fixed reintroduced "
                         "reopened", "alert", "RSioe"),
    "deploy_key": ("created deleted", "key", "RSioe"),
    "deployment": ("created", "deployment workflow workflow_run", "RSioe"),
    "deployment_protection_rule": ("requested", "environment? event? deployment_callback_url? "
                                   "deployment? pull_requests?", "RSio"),
    "deployment_review": ("approved rejected requested", "since workflow_run approver? comment? "
                          "reviewers? workflow_job_run? workflow_job_runs? environment? "
                          "requestor?", "RSiOe"),
    "deployment_status": ("created", "deployment deployment_status check_run? workflow? "
                          "workflow_run?", "RSioe"),
    "discussion": ("answered category_changed closed created deleted edited labeled locked pinned "
                   "reopened transferred unanswered unlabeled unlocked unpinned",
                   "discussion answer? changes? label? old_answer?", "Rsioe"),
    "discussion_comment": ("created deleted edited", "comment discussion changes?", "RSioe"),
    "fork": ("", "forkee", "RSioe"),
    "github_app_authorization": ("revoked", "", "S"),
    "gollum": ("", "pages", "RSioe"),
    "installation": ("created deleted new_permissions_accepted suspend unsuspend",
                     "repositories? requester?", "rSIoe"),
    "installation_repositories": ("added removed", "repositories_added repositories_removed "
                                  "repository_selection requester", "rSIoe"),
    "installation_target": ("renamed", "account changes target_type", "rsIoe"),
    "issue_comment": ("created deleted edited", "comment issue changes?", "RSioe"),
    "issue_dependencies": ("blocked_by_added blocked_by_removed blocking_added blocking_removed",
                           "blocked_issue_id blocked_issue blocking_issue_id blocking_issue "
                           "blocking_issue_repo? blocked_issue_repo?", "RSiO"),
    "issues": ("assigned closed deleted demilestoned edited labeled locked milestoned opened "
               "pinned reopened transferred typed unassigned unlabeled unlocked unpinned untyped",
               "issue assignee? milestone? changes? label? type?", "RSioe"),
    "label": ("created deleted edited", "label changes?", "Rsioe"),
    "marketplace_purchase": ("cancelled changed pending_change pending_change_cancelled "
                             "purchased", "effective_date marketplace_purchase "
                             "previous_marketplace_purchase?", "rSioe"),
    "member": ("added edited removed", "member changes?", "RSioe"),
    "membership": ("added removed", "member scope team", "rSiOe"),
    "merge_group": ("checks_requested destroyed", "merge_group reason?", "rsio"),
    "meta": ("deleted", "hook hook_id", "rsioe"),
    "milestone": ("closed created deleted edited opened", "milestone changes?", "RSioe"),
    "org_block": ("blocked unblocked", "blocked_user", "rSiOe"),
    "organization": ("deleted member_added member_invited member_removed renamed",
                     "membership? invitation? user? changes?", "rSiOe"),
    "package": ("published updated", "package", "rSioe"),
    "page_build": ("", "build id", "RSioe"),
    "personal_access_token_request": ("approved cancelled created denied",
                                      "personal_access_token_request", "SiOe"),
    "ping": ("", "zen hook_id hook", "Sro"),
    "project": ("closed created deleted edited reopened", "project changes?", "rsioe"),
    "project_card": ("converted created deleted edited moved", "project_card changes?", "rSioe"),
    "project_column": ("created deleted edited moved", "project_column changes?", "rsioe"),
    "projects_v2": ("closed created deleted edited reopened", "projects_v2 changes?", "SiO"),
    "projects_v2_item": ("archived converted created deleted edited reordered restored",
                         "projects_v2_item changes?", "SiO"),
    "projects_v2_status_update": ("created deleted edited", "projects_v2_status_update changes?",
                                  "SiO"),
    "public": ("", "", "RSioe"),
    "pull_request": ("assigned auto_merge_disabled auto_merge_enabled closed converted_to_draft "
                     "demilestoned dequeued edited enqueued labeled locked milestoned opened "
                     "ready_for_review reopened review_request_removed review_requested "
                     "synchronize unassigned unlabeled unlocked", "number pull_request assignee? "
                     "reason? milestone? changes? label? requested_reviewer? after? before?",
                     "Rsioe"),
    "pull_request_review": ("dismissed edited submitted", "pull_request review changes?", "RSioe"),
    "pull_request_review_comment": ("created deleted edited", "comment pull_request changes?",
                                    "RSioe"),
    "pull_request_review_thread": ("resolved unresolved", "pull_request thread updated_at?",
                                   "Rsioe"),
    "push": ("", "after base_ref before commits compare created deleted forced head_commit "
                 "pusher ref", "Rsioe"),
    "registry_package": ("published updated", "registry_package", "rSioe"),
    "release": ("created deleted edited prereleased published released unpublished",
                "release changes?", "Rsioe"),
    "repository": ("archived created deleted edited privatized publicized renamed transferred "
                   "unarchived", "changes?", "RSioe"),
    "repository_advisory": ("published reported", "repository_advisory", "Rsioe"),
    # The action is the event_type its sender chose, any text.
    "repository_dispatch": ("on-demand-test", "branch client_payload", "RSIoe"),
    "repository_import": ("", "status", "RSioe"),
    "repository_ruleset": ("created deleted edited", "repository_ruleset changes?", "rSioe"),
    "repository_vulnerability_alert": ("create dismiss reopen resolve", "alert", "RSioe"),
    "secret_scanning_alert": ("assigned created publicly_leaked reopened resolved unassigned "
                              "validated", "alert assignee?", "Rsioe"),
    "secret_scanning_alert_location": ("created", "alert location", "RSio"),
    "secret_scanning_scan": ("completed", "type source started_at completed_at secret_types? "
                             "custom_pattern_name?", "rsioe"),
    "security_advisory": ("published updated withdrawn", "security_advisory", "rsioe"),
    "security_and_analysis": ("", "changes", "Rsioe"),
    "sponsorship": ("cancelled created edited pending_cancellation pending_tier_change "
                    "tier_changed", "sponsorship changes? effective_date?", "rSioe"),
    "star": ("created deleted", "starred_at", "RSioe"),
    "status": ("", "branches commit context created_at description id name sha state target_url "
                   "updated_at avatar_url?", "RSioe"),
    "sub_issues": ("parent_issue_added parent_issue_removed sub_issue_added sub_issue_removed",
                   "parent_issue_id parent_issue sub_issue_id sub_issue parent_issue_repo? "
                   "sub_issue_repo?", "rsio"),
    "team": ("added_to_repository created deleted edited removed_from_repository",
             "team changes?", "rsiOe"),
    "team_add": ("", "team", "RSioe"),
    "watch": ("started", "", "RSioe"),
    "workflow_dispatch": ("", "inputs ref workflow", "RSioe"),
    "workflow_job": ("completed in_progress queued waiting", "workflow_job deployment?", "RSioe"),
    "workflow_run": ("completed in_progress requested", "workflow workflow_run", "RSioe"),
}

# Keys whose value is not an object; every other key gets a small object with an id.
SHA_VALUE = fake_sha("every-event")
VALUES = {
    "after": SHA_VALUE, "before": fake_sha("every-event:before"), "sha": SHA_VALUE,
    "commit_oid": SHA_VALUE, "ref": "refs/heads/main", "base_ref": None, "master_branch": "main",
    "branch": "main", "compare": "https://github.com/octo-org/hello-world/compare/a...b",
    "description": None, "context": "ci", "name": "octo-org/hello-world", "state": "success",
    "status": "success", "target_url": None, "avatar_url": None, "zen": "Design for failure.",
    "environment": "production", "event": "push", "scope": "team", "reason": "merged",
    "pusher_type": "user", "ref_type": "branch", "repository_selection": "selected",
    "source": "git", "target_type": "Organization", "custom_pattern_name": None,
    "deployment_callback_url": "https://api.github.com/repos/octo-org/hello-world/callback",
    "created": False, "deleted": False, "forced": False,
    "id": 1, "number": 1, "hook_id": 1, "blocked_issue_id": 1, "blocking_issue_id": 2,
    "parent_issue_id": 1, "sub_issue_id": 2,
    "created_at": "2024-05-01T12:00:00Z", "updated_at": "2024-05-01T12:00:00Z",
    "started_at": "2024-05-01T12:00:00Z", "completed_at": "2024-05-01T12:00:00Z",
    "since": "2024-05-01T12:00:00Z", "starred_at": "2024-05-01T12:00:00Z",
    "effective_date": "2024-05-01T00:00:00+00:00",
    "commits": [], "pages": [], "branches": [], "repositories": [], "repositories_added": [],
    "repositories_removed": [], "pull_requests": [], "reviewers": [], "workflow_job_runs": [],
    "secret_types": ["github_personal_access_token"], "new_property_values": [],
    "old_property_values": [],
}
EVENT_VALUES = {("secret_scanning_scan", "type"): "backfill", ("check_run", "requested_action"):
                {"identifier": "fix"}}
DEPLOYING = {"opened", "synchronize", "reopened"}


def _object(key: str) -> dict:
    """A stand-in for one of GitHub's objects: an id and a node id, stable per key."""
    oid = zlib.crc32(key.encode())
    return {"id": oid, "node_id": f"{key}_{oid}"}


def payload(event: str, action: str, full: bool) -> dict:
    """A delivery of event (with action) shaped as EVENTS says; full adds everything optional."""
    _, keys, carries = EVENTS[event]
    repo = repository(ELSEWHERE, f"{CLOSED}/{ELSEWHERE}.git")
    owner = repo["owner"]
    commons = {"R": ("repository", repo), "S": ("sender", owner),
               "I": ("installation", {"id": 42, "node_id": "MDIzOkludGVncmF0aW9uNDI="}),
               "O": ("organization", {k: owner[k] for k in ("login", "id", "node_id", "url")}),
               "E": ("enterprise", {"id": 7, "slug": "octo-enterprise", "name": "Octo"})}
    data = {"action": action} if action else {}
    for key in keys.split():
        if full or not key.endswith("?"):
            key = key.rstrip("?")
            data[key] = EVENT_VALUES.get((event, key), VALUES.get(key, _object(key)))
    for letter in carries:
        if full or letter.isupper():
            name, value = commons[letter.upper()]
            data[name] = value
    return data


def deliveries(event: str):
    """(action, variant, payload) of every action of event, bare and full."""
    actions = EVENTS[event][0].split() or [""]
    for action, full in itertools.product(actions, (False, True)):
        yield action, "full" if full else "bare", payload(event, action, full)


async def deliver(client, event: str, data: dict, guid: str | None = None):
    """POST a delivery of event, signed with SECRET."""
    body = encode(data)
    return await client.post("/webhook", data=body,
                             headers=delivery_headers(event, body, SECRET, guid))


async def deployments(client) -> list[dict]:
    return (await (await client.get("/deployments")).json())["deployments"]


@pytest.fixture
def woken(monkeypatch) -> list:
    """The workers woken (each queued deployment wakes one); the wake-up itself does nothing."""
    wakes = []
    monkeypatch.setattr("runner.worker.Worker.wake", lambda self: wakes.append(self))
    return wakes


def test_the_table_covers_githubs_events():
    """EVENTS names at least 70 of GitHub's events, among them those without a repository and
    those whose names carry digits, all spelt as GitHub spells them."""
    assert len(EVENTS) >= 70
    assert {"projects_v2_item", "security_and_analysis", "merge_group", "sub_issues",
            "installation", "github_app_authorization", "marketplace_purchase",
            "sponsorship"} <= set(EVENTS)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in EVENTS)


@pytest.mark.parametrize("event", EVENTS)
async def test_every_event_and_action_gets_a_2xx(make_client, woken, event):
    """Each action of the event, bare and with every optional object, signed with the configured
    secret. Asserts: 200 with "ignored: ..." ("pong" for ping), the same answer to a redelivery,
    each delivery id recorded once, no deployment queued, and the delivery counted under a
    bounded metrics label."""
    client = await make_client(github__webhook_secret=SECRET, repos=RULES)
    guids = []
    for action, variant, data in deliveries(event):
        guid = str(uuid.uuid4())
        guids.append(guid)
        response = await deliver(client, event, data, guid)
        answer = await response.json()
        assert response.status == 200, (action, variant, answer)
        expected = "pong" if event == "ping" else "ignored: "
        assert answer["message"].startswith(expected), (action, variant, answer)
        again = await deliver(client, event, data, guid)
        assert (again.status, await again.json()) == (200, answer), (action, variant)
    known = await client.app[store_key].run(queries.known_deliveries, guids)
    assert known == set(guids)
    assert await deployments(client) == [] and woken == []
    label = event if event in COUNTED_EVENTS else "other"
    metrics = await (await client.get("/metrics")).text()
    counted = re.findall(r'speed_webhook_deliveries_total\{event="([^"]*)",outcome="([^"]*)"\} '
                         r'([0-9.]+)', metrics)
    assert [(e, o, float(n)) for e, o, n in counted] == [(label, "ignored", 2 * len(guids))]


async def test_deploying_events_still_deploy(make_client):
    """A push to a deployed branch and pull_request opened, synchronize and reopened on a repository
    with pull_requests: true answer 202 with a deployment (which fails at its clone: nothing
    listens there); closed answers 200 (its preview goes) and every other pull request action 200
    "ignored: ..."."""
    client = await make_client(github__webhook_secret=SECRET, repos=RULES)
    full_name, url = "acme/app", f"{CLOSED}/acme/app.git"
    queued = []
    response = await deliver(client, "push", push_payload(full_name, url,
                                                          after=fake_sha("push"), installation_id=9))
    assert response.status == 202, await response.json()
    queued.append((await response.json())["id"])
    for number, action in enumerate(EVENTS["pull_request"][0].split(), start=1):
        data = pull_request_payload(full_name, url, action=action, number=number,
                                    head_ref=f"feature-{number}", head_sha=fake_sha(action))
        response = await deliver(client, "pull_request", data)
        answer = await response.json()
        if action in DEPLOYING:
            assert response.status == 202, (action, answer)
            queued.append(answer["id"])
        elif action == "closed":  # its preview goes (tests/test_previews.py)
            assert response.status == 200, (action, answer)
            assert answer["message"].startswith(f"pull request #{number} closed"), answer
        else:
            assert response.status == 200, (action, answer)
            assert answer["message"].startswith("ignored: "), (action, answer)
    assert len(queued) == 1 + len(DEPLOYING)
    assert sorted(d["id"] for d in await deployments(client)) == sorted(queued)
    for deployment_id in queued:
        assert (await wait_finished(client, deployment_id))["status"] in ("Failed", "Cancelled")


GONE = object()  # a key left out


def _changed(data: dict, **changes) -> dict:
    """data with values replaced at paths spelt a__b for data["a"]["b"] (GONE drops the key)."""
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = data
        for key in parents:
            node = node[key]
        if value is GONE:
            del node[last]
        else:
            node[last] = value
    return data


def _push(**changes) -> dict:
    """A push to a deployed branch of acme/app, changed."""
    data = push_payload("acme/app", f"{CLOSED}/acme/app.git", after=fake_sha("odd push"))
    return _changed(data, **changes)


def _pull(**changes) -> dict:
    """A pull request opened on acme/app, changed."""
    data = pull_request_payload("acme/app", f"{CLOSED}/acme/app.git",
                                head_sha=fake_sha("odd pull"))
    return _changed(data, **changes)


# Signed payloads of push and pull_request, for a repository that deploys both, that are JSON
# objects but not what a deployment needs.
ODD_SHAPES = {
    "empty push": ("push", {}),
    "push without repository": ("push", _push(repository=GONE)),
    "push whose repository is a list": ("push", _push(repository=[1])),
    "push whose ref is a number": ("push", _push(ref=7)),
    "push whose after is an object": ("push", _push(after={"sha": 1})),
    "push whose clone_url is null": ("push", _push(repository__clone_url=None)),
    "empty pull request": ("pull_request", {"action": "opened"}),
    "pull request whose action is a list": ("pull_request", _pull(action=["opened"])),
    "pull request whose action is an object": ("pull_request", _pull(action={"a": 1})),
    "pull request without pull_request": ("pull_request", _pull(pull_request=GONE)),
    "pull request whose number is text": ("pull_request", _pull(pull_request__number="7")),
    "pull request whose number is huge": ("pull_request", _pull(pull_request__number=10**30)),
    "pull request from a deleted head repository":
        ("pull_request", _pull(pull_request__head__repo=None)),
    "pull request whose head is null": ("pull_request", _pull(pull_request__head=None)),
    "issues whose action is a list": ("issues", {"action": ["opened"]}),
    "repository_dispatch with a long action": ("repository_dispatch", {"action": "x" * 1000}),
}


@pytest.mark.parametrize("shape", ODD_SHAPES)
async def test_payloads_of_any_shape_get_a_2xx(make_client, woken, shape):
    """A correctly signed JSON object of any shape, even one a deployment cannot be made of,
    answers 200 "ignored: ..." and queues nothing."""
    event, data = ODD_SHAPES[shape]
    client = await make_client(github__webhook_secret=SECRET, repos=RULES)
    response = await deliver(client, event, data)
    answer = await response.json()
    assert response.status == 200, answer
    assert answer["message"].startswith("ignored: ")
    assert await deployments(client) == [] and woken == []


async def test_an_installation_id_that_is_no_number_is_left_out(make_client):
    """A push to a deployed branch whose installation id is text still deploys (202), with no
    installation id stored: it is then looked up for the repository, as without one."""
    client = await make_client(github__webhook_secret=SECRET, repos=RULES)
    response = await deliver(client, "push", _push(installation={"id": "x" * 30}))
    assert response.status == 202, await response.json()
    deployment_id = (await response.json())["id"]
    stored = await client.app[store_key].run(queries.get, deployment_id)
    assert stored.installation_id is None
    await wait_finished(client, deployment_id)


def _headers(event: str = "push", body: bytes = b"{}", **changes) -> dict:
    """Signed delivery headers for body, with headers replaced (None drops one)."""
    headers = {**delivery_headers(event, body, SECRET), **changes}
    return {k: v for k, v in headers.items() if v is not None}


# name -> (body, headers, the status that refuses it, as before this change)
MALFORMED = {
    "bad JSON": (b"{not json", _headers(body=b"{not json"), 400),
    "a JSON array": (b"[1]", _headers(body=b"[1]"), 400),
    "a JSON string": (b'"x"', _headers(body=b'"x"'), 400),
    "JSON null": (b"null", _headers(body=b"null"), 400),
    "no X-GitHub-Event": (b"{}", _headers(**{"X-GitHub-Event": None}), 400),
    "empty X-GitHub-Event": (b"{}", _headers(**{"X-GitHub-Event": ""}), 400),
    "no X-GitHub-Delivery": (b"{}", _headers(**{"X-GitHub-Delivery": None}), 400),
    "a delivery id with a slash": (b"{}", _headers(**{"X-GitHub-Delivery": "../x"}), 400),
    "a delivery id of 65 characters": (b"{}", _headers(**{"X-GitHub-Delivery": "a" * 65}), 400),
    "event ../x": (b"{}", _headers("../x"), 400),
    "an event name of 70 characters": (b"{}", _headers("a" * 70), 400),
    "an upper-case event name": (b"{}", _headers("Projects_V2_Item"), 400),
    "an event name with a hyphen": (b"{}", _headers("projects-v2-item"), 400),
    "an event name beginning with a digit": (b"{}", _headers("2fa"), 400),
    "Content-Type text/plain": (b"{}", _headers(**{"Content-Type": "text/plain"}), 400),
    "unsigned": (b"{}", _headers(**{"X-Hub-Signature-256": None, "X-Hub-Signature": None}),
                 401),
    "signed with another secret": (b"{}", {**_headers(), "X-Hub-Signature-256":
                                           sign(b"{}", "not-the-secret")}, 401),
    "signature of another body": (b"{}", {**_headers(), "X-Hub-Signature-256":
                                          sign(b"{ }", SECRET)}, 401),
    "SHA-1 only": (b"{}", _headers(**{"X-Hub-Signature-256": None}), 401),
}


@pytest.mark.parametrize("case", MALFORMED)
async def test_malformed_deliveries_are_still_refused(make_client, woken, case):
    """Bad or non-object JSON, missing or junk headers (event names such as ../x, 70 characters or
    upper-case) and bad signatures. Asserts: the same 400 or 401 as before, a JSON error, nothing
    recorded (a genuine delivery with the same id is then answered afresh)."""
    body, headers, status = MALFORMED[case]
    client = await make_client(github__webhook_secret=SECRET, repos=RULES)
    response = await client.post("/webhook", data=body, headers=headers)
    assert response.status == status
    assert "error" in await response.json()
    assert await deployments(client) == [] and woken == []
    guid = headers.get("X-GitHub-Delivery", "")
    if re.fullmatch(r"[0-9a-f-]{36}", guid):
        assert await client.app[store_key].run(queries.known_deliveries, [guid]) == set()
