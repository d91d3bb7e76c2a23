"""GitHub's outbox (storage.outbox, migration 0008): the database records each state a deployment
is to show on GitHub, once, in order, whichever query changed it; senders take rows by a
conditional write. On SQLite here; tests/test_postgres.py runs them again on PostgreSQL."""
import pytest

from storage import deployments as queries
from storage import outbox
from storage.db import open_database
from storage.models import Deployment, Report, utcnow
from storage.status import Status

GITHUB = dict(url="https://github.com/acme/app.git", branch="main", commit="a" * 40,
              repo_full_name="acme/app")


@pytest.fixture
def db(tmp_path):
    database = open_database(f"sqlite:///{tmp_path / 'speed.db'}")
    with database.connection_context():
        yield database


def keys(deployment_id: int) -> list[str]:
    return [key for key, _ in outbox.of(deployment_id)]


def test_each_state_github_shows_is_recorded_once_in_order(db):
    deployment = queries.create(**GITHUB)
    assert keys(deployment.id) == ["queued"]
    queries.claim_next("replica-a")
    assert keys(deployment.id) == ["queued"]  # Running, no container yet: GitHub still shows queued
    queries.update(deployment.id, container_started_at=utcnow())
    queries.record(deployment.id, progress="half way")  # nothing GitHub shows changed
    queries.transition(deployment.id, Status.FAILED, reason="boom", infrastructure_failure=True)
    assert outbox.of(deployment.id) == [("queued", "waiting"), ("running", "waiting"),
                                        ("error", "waiting")]


@pytest.mark.parametrize("end, fields, key", [
    (Status.SUCCEEDED, {}, "success"), (Status.FAILED, {"reason": "exit code 1"}, "failure"),
    (Status.CANCELLED, {"reason": "cancelled"}, "cancelled")])
def test_the_final_key_follows_the_outcome(db, end, fields, key):
    deployment = queries.create(**GITHUB)
    queries.transition(deployment.id, end, **fields)
    assert keys(deployment.id) == ["queued", key]


def test_a_deployment_queued_again_is_not_queued_twice_on_github(db):
    deployment = queries.create(**GITHUB)
    queries.claim_next("replica-a")
    queries.requeue(deployment.id, "[speed] interrupted before its container started")
    assert Deployment.get_by_id(deployment.id).state == Status.PENDING
    assert keys(deployment.id) == ["queued"]


def test_nothing_is_recorded_for_what_github_cannot_show(db):
    manual = queries.create(url="https://example.com/app.git", branch="main")  # no GitHub repository
    queries.transition(manual.id, Status.SUCCEEDED)
    unknown_commit = queries.create(url=GITHUB["url"], branch="main", repo_full_name="acme/app")
    assert keys(manual.id) == [] and keys(unknown_commit.id) == []
    # The commit becomes known at the clone: GitHub hears of it once its container runs.
    queries.claim_next("replica-a")
    queries.update(unknown_commit.id, commit="b" * 40)
    assert keys(unknown_commit.id) == []
    queries.update(unknown_commit.id, container_started_at=utcnow())
    assert keys(unknown_commit.id) == ["running"]


def test_a_report_waits_for_the_earlier_ones_of_its_deployment(db):
    first, second = queries.create(**GITHUB), queries.create(**GITHUB)
    queries.transition(first.id, Status.CANCELLED, reason="superseded")
    due = [(report.deployment_id, report.key) for report, _ in outbox.due()]
    assert due == [(first.id, "queued"), (second.id, "queued")]  # one per deployment, oldest first
    queued = Report.get(deployment_id=first.id, key="queued")
    assert outbox.take(queued.id, "replica-a")
    assert [r.key for r, _ in outbox.due() if r.deployment_id == first.id] == ["queued"]
    assert outbox.end(queued.id, "replica-a", outbox.SENT)
    assert [r.key for r, _ in outbox.due() if r.deployment_id == first.id] == ["cancelled"]


def test_only_the_sender_ends_a_report_and_a_silent_senders_report_can_be_taken_over(db):
    deployment = queries.create(**GITHUB)
    report = Report.get(deployment_id=deployment.id)
    assert outbox.take(report.id, "replica-a")
    assert not outbox.take(report.id, "replica-b")  # taken already
    assert not outbox.end(report.id, "replica-b", outbox.SENT)
    assert outbox.take(report.id, "replica-b", from_sender="replica-a")  # replica-a went silent
    assert not outbox.holds(report.id, "replica-a") and outbox.holds(report.id, "replica-b")
    assert not outbox.end(report.id, "replica-a", outbox.SENT)  # it woke up: it writes nothing
    assert outbox.end(report.id, "replica-b", outbox.SENT)
    assert outbox.of(deployment.id) == [("queued", "sent")]


def test_only_the_newest_given_up_report_is_tried_again(db):
    deployment = queries.create(**GITHUB)
    queries.transition(deployment.id, Status.SUCCEEDED)
    queued, success = (Report.get(deployment_id=deployment.id, key=k) for k in ("queued", "success"))
    assert outbox.take(queued.id, "replica-a")
    assert outbox.overtaken(queued)
    assert outbox.end(queued.id, "replica-a", outbox.DROPPED)
    assert outbox.take(success.id, "replica-a")
    assert not outbox.overtaken(success)
    assert outbox.end(success.id, "replica-a", outbox.GIVEN_UP)
    assert outbox.unsent() == 0
    assert outbox.revive(within=0.0) == 0  # made before the window
    assert outbox.revive(within=3600.0) == 1
    assert outbox.of(deployment.id) == [("queued", "dropped"), ("success", "waiting")]
    # Still naming who tried: the next sender looks on GitHub before it posts.
    assert Report.get_by_id(success.id).sender == "replica-a"


def test_a_given_up_state_of_a_closed_pull_request_is_tried_again_before_its_inactive_mark(db):
    """Found by a review: the inactive mark, the newest row, hid a given-up `success` from
    reviving. Asserts: the state is revived and the mark is queued again behind it (sent
    after it, so the state cannot make the torn-down Deployment active again)."""
    deployment = queries.create(**dict(GITHUB, trigger="pull_request", pull_request=3))
    queries.transition(deployment.id, Status.SUCCEEDED)
    queries.close_pull_request("acme/app", 3)
    rows = {r.key: r for r in Report.select().where(Report.deployment_id == deployment.id)}
    for key, outcome in (("queued", outbox.SENT), ("success", outbox.GIVEN_UP),
                         ("inactive", outbox.SENT)):
        assert outbox.take(rows[key].id, "replica-a")
        assert outbox.end(rows[key].id, "replica-a", outcome)
    assert outbox.revive(within=3600.0) == 1
    assert outbox.of(deployment.id) == [("queued", "sent"), ("success", "waiting"),
                                        ("inactive", "waiting")]
    [(due, _)] = outbox.due()
    assert due.key == "success"


def test_a_report_handed_back_waits_again_naming_who_began_it(db):
    """A sender that stops without an outcome (an error, no longer leading) hands the report
    back: any replica may take it, and knows an attempt may have reached GitHub."""
    deployment = queries.create(**GITHUB)
    report = Report.get(deployment_id=deployment.id)
    assert outbox.take(report.id, "replica-a")
    outbox.hand_back(report.id, "replica-b")  # not its sender: nothing changes
    assert outbox.holds(report.id, "replica-a")
    outbox.hand_back(report.id, "replica-a")
    [(due, _)] = outbox.due()
    assert (due.id, due.state, due.sender) == (report.id, outbox.WAITING, "replica-a")
    assert outbox.take(report.id, "replica-b")



def test_a_closed_pull_requests_deployments_are_marked_inactive_once_after_their_states(db):
    """Closing a pull request queues each of its deployments' inactive mark behind the states
    they still have to show (a cancelled one's `cancelled` first); closing it again queues
    nothing more; the mark overtakes no state (a failing success is not dropped for it)."""
    fields = dict(GITHUB, trigger="pull_request", pull_request=7)
    done = queries.create(**fields)
    queries.claim_next("replica-a")
    queries.transition(done.id, Status.SUCCEEDED)
    waiting = queries.create(**fields)
    other = queries.create(**dict(fields, pull_request=8))
    assert [d.id for d in queries.close_pull_request("acme/APP", 7)] == [waiting.id]
    queries.close_pull_request("acme/app", 7)
    assert keys(done.id) == ["queued", "success", "inactive"]
    assert keys(waiting.id) == ["queued", "cancelled", "inactive"]
    assert keys(other.id) == ["queued"]
    success = Report.get(Report.deployment_id == done.id, Report.key == "success")
    assert not outbox.overtaken(success)
