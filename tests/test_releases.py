"""The release state machine and environments, at the storage level: no Docker, no Caddy."""
import hashlib

import pytest

from runner.proxy import is_dns_name
from storage import deployments as queries
from storage import releases
from storage.db import open_database
from storage.models import Deployment
from storage.releases import ReleaseRefused, ReleaseState as S
from storage.status import Status


@pytest.fixture
def db(tmp_path):
    database = open_database(f"sqlite:///{tmp_path / 'speed.db'}")
    with database.connection_context():
        yield database


def running(repository: str = "acme/app") -> Deployment:
    return Deployment.create(url=f"https://github.com/{repository}.git", branch="main",
                             commit="a" * 40, status=Status.RUNNING.value,
                             repo_full_name=repository, settings='{"service": {"keep": 5}}')


def healthy(environment, deployment=None, port: int = 40000):
    deployment = deployment or running(environment.repository)
    release = releases.start(deployment.id, environment.id, f"speed-x:{deployment.id}-r")
    releases.record(release.id, container_id=f"c{release.id}", upstream=f"127.0.0.1:{port}")
    return releases.move(release.id, S.HEALTHY)


def test_a_switch_makes_one_release_live_and_the_old_one_drain(db):
    environment = releases.environment_for("acme/app", "production")
    first = healthy(environment)
    live, old = releases.go_live(first.id, drain=5)
    assert (live.state, old) == ("live", None)
    second = healthy(environment, port=40001)
    live, old = releases.go_live(second.id, drain=5)
    assert (live.state, old.id, old.state) == ("live", first.id, "draining")
    assert releases.routes() == {"production.app": "127.0.0.1:40001"}
    assert releases.upstream_ports() == {40000, 40001}


@pytest.mark.parametrize("state, new", [("starting", S.LIVE), ("live", S.HEALTHY),
                                        ("retired", S.LIVE), ("failed", S.HEALTHY)])
def test_only_legal_moves_are_made(db, state, new):
    environment = releases.environment_for("acme/app", "production")
    release = releases.start(running().id, environment.id, "img")
    releases.record(release.id, state=state)
    with pytest.raises(ReleaseRefused):
        releases.move(release.id, new)
    assert releases.get(release.id).state == state


def test_a_cancelled_deployment_never_goes_live_and_its_release_fails(db):
    """Found by a hostile review: a cancel while the release waited for the proxy made the
    killed release live."""
    environment = releases.environment_for("acme/app", "production")
    release = healthy(environment)
    queries.transition(release.deployment_id, Status.CANCELLED)
    assert releases.get(release.id).state == "failed"
    with pytest.raises(ReleaseRefused, match="Cancelled|cannot become live"):
        releases.go_live(release.id, drain=0)
    assert releases.routes() == {}


def test_an_older_deployment_never_replaces_a_later_ones_live_release(db):
    environment = releases.environment_for("acme/app", "production")
    older, later = running(), running()
    late = healthy(environment, later)
    releases.go_live(late.id, drain=0)
    early = healthy(environment, older, port=40001)
    with pytest.raises(ReleaseRefused, match=f"later deployment \\({later.id}\\)"):
        releases.go_live(early.id, drain=0)
    assert releases.routes() == {"production.app": "127.0.0.1:40000"}


def test_addresses_stay_distinct_and_valid_host_names(db):
    """Found by a hostile review: a second collision crashed with IntegrityError, and a long
    name could end its label with a hyphen."""
    first = releases.environment_for("x/app", "production")
    digest = hashlib.sha256(b"z/app").hexdigest()[:6]
    squatter = releases.environment_for(f"y/app-{digest}", "production")
    third = releases.environment_for("z/app", "production")
    assert len({first.address, squatter.address, third.address}) == 3
    long = releases.environment_for("acme/" + "a" * 39 + "-service", "pr-12")
    for environment in (first, squatter, third, long):
        assert is_dns_name(f"{environment.address}.localhost"), environment.address
    assert releases.environment_for("x/app", "production").id == first.id


def test_a_closed_preview_comes_back_only_when_its_pull_request_reopens(db):
    """Found by a hostile review: a late synchronize after closed brought the preview back."""
    environment = releases.environment_for("acme/app", "pr-5")
    releases.go_live(healthy(environment).id, drain=0)
    gone = releases.teardown(environment.id)
    assert [r.state for r in gone] == ["live"] and releases.routes() == {}
    with pytest.raises(ReleaseRefused, match="pull request was closed"):
        releases.environment_for("acme/app", "pr-5")
    releases.reopen("acme/app", "pr-5")
    assert releases.environment_for("acme/app", "pr-5").id == environment.id


def test_rollback_returns_to_a_kept_release_and_refuses_anything_else(db):
    environment = releases.environment_for("acme/app", "production")
    first = healthy(environment)
    releases.go_live(first.id, drain=0)
    live, _ = releases.go_live(healthy(environment, port=40001).id, drain=0)
    queued = releases.rollback(environment.id)
    assert (queued.trigger, queued.image, queued.status) == ("rollback", first.image, "Pending")
    # Each refusal says why (all were "not kept for rollback": found by a hostile user).
    for wrong in (2**63, -1, 10**30, 999):
        with pytest.raises(ReleaseRefused, match=f"^production has no release {wrong}$"):
            releases.rollback(environment.id, wrong)
    with pytest.raises(ReleaseRefused, match=f"^release {live.id} of production is live, not kept"):
        releases.rollback(environment.id, live.id)
    with pytest.raises(releases.NoEnvironment):
        releases.rollback(2**64)


def test_retired_releases_beyond_keep_are_removed_and_their_images_freed(db):
    environment = releases.environment_for("acme/app", "production")
    made = [healthy(environment, port=40000 + n) for n in range(4)]
    for release in made:
        _, old = releases.go_live(release.id, drain=0)
        if old:
            releases.move(old.id, S.RETIRED)
    removed = releases.surplus(environment.id, keep=1)
    assert [r.id for r in removed] == [made[1].id, made[0].id]
    assert releases.kept_images() == {made[2].image, made[3].image}


def test_an_environments_history_is_its_newest_releases_with_their_commits(db):
    environment = releases.environment_for("acme/app", "production")
    other = releases.environment_for("acme/app", "pr-1")
    made = [healthy(environment, port=41000 + n) for n in range(releases.HISTORY + 5)]
    healthy(other, port=42000)
    listed = {e["environment"].name: e["releases"] for e in releases.environments()}
    assert [r["id"] for r in listed["production"]] == [r.id for r in made[::-1][:releases.HISTORY]]
    assert listed["production"][0]["commit"] == "a" * 40 and len(listed["pr-1"]) == 1


def test_a_deployment_whose_release_went_live_can_only_succeed(db):
    """Found by a hostile review: a cancel that came just after go_live made a serving release's
    deployment Cancelled. Asserts: once live, Cancelled and Failed are refused; Succeeded is not."""
    environment = releases.environment_for("acme/app", "production")
    release = healthy(environment)
    releases.go_live(release.id, drain=0)
    for refused in (Status.CANCELLED, Status.FAILED):
        with pytest.raises(queries.IllegalTransition):
            queries.transition(release.deployment_id, refused)
    assert queries.transition(release.deployment_id, Status.SUCCEEDED).status == "Succeeded"


def test_a_services_deployment_succeeds_only_by_its_release_going_live(db):
    """Found by a hostile user: /update "Succeeded" during the health checks made the deployment
    Succeeded while its release failed and nothing new served. Asserts: Succeeded is refused,
    saying why, until the release goes live; Failed is not; a job may still be told Succeeded."""
    environment = releases.environment_for("acme/app", "production")
    deployment = running()
    with pytest.raises(queries.IllegalTransition, match="succeeds once its release serves"):
        queries.transition(deployment.id, Status.SUCCEEDED)
    release = healthy(environment, deployment)
    with pytest.raises(queries.IllegalTransition):
        queries.transition(deployment.id, Status.SUCCEEDED)
    releases.go_live(release.id, drain=0)
    assert queries.transition(deployment.id, Status.SUCCEEDED).status == "Succeeded"
    assert queries.transition(running().id, Status.FAILED).status == "Failed"
    job = Deployment.create(url="https://github.com/acme/job.git", branch="main",
                            status=Status.RUNNING.value, settings='{"service": null}')
    assert queries.transition(job.id, Status.SUCCEEDED).status == "Succeeded"
