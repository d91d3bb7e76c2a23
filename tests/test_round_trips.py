"""Database round trips: what a deployment costs the one database thread that the API shares."""
import asyncio
import contextlib
import sqlite3

import pytest

from bot.keys import worker_key
from storage import deployments as queries
from storage.db import open_database
from storage.models import utcnow
from storage.status import Status
from storage.store import Store
from tests.conftest import wait_finished, wait_for
from tests.test_pipeline import start


@pytest.fixture
def database(tmp_path):
    """A database on this thread, queried directly; yields its file."""
    db = open_database(f"sqlite:///{tmp_path / 'speed.db'}")
    yield tmp_path / "speed.db"
    db.close()


def test_single_statement_writes_are_committed_on_return(database):
    """create and record run without BEGIN/COMMIT around them. Asserts: what they wrote is
    already visible to another connection when they return (nothing left in a transaction)."""
    created = queries.create("http://127.0.0.1:9/x.git", "main")
    queries.record(created.id, container_id="c" * 64, token_hash="t" * 64)
    with contextlib.closing(sqlite3.connect(database)) as other:
        row = other.execute("SELECT url, container_id, token_hash FROM deployment WHERE id = ?",
                            (created.id,)).fetchone()
    assert row == ("http://127.0.0.1:9/x.git", "c" * 64, "t" * 64)


def test_writes_return_the_row_as_stored(database):
    """update and transition return the row from their own statement. Asserts: it equals a
    fresh read, field for field (dates as dates); a missing id is NotFound, not None."""
    created = queries.create("http://127.0.0.1:9/x.git", "main")
    updated = queries.update(created.id, commit="a" * 40, cloned_at=utcnow())
    assert updated.__data__ == queries.get(created.id).__data__
    assert updated.commit == "a" * 40 and updated.cloned_at.year >= 2024
    moved = queries.transition(created.id, Status.FAILED, note="[speed] Failed: x", reason="x",
                               infrastructure_failure=True)
    assert moved.__data__ == queries.get(created.id).__data__
    assert (moved.status, moved.reason, moved.infrastructure_failure) == ("Failed", "x", True)
    assert moved.finished_at is not None
    assert queries.results_text(created.id) == "[speed] Failed: x\n"
    with pytest.raises(queries.NotFound):
        queries.update(created.id + 1, commit="b" * 40)


def test_clean_up_reads_whether_finished_and_spares_what_unfinished_deployments_name(database):
    """Clean-up's reads. Asserts: finished is False while the deployment is Pending or Running;
    the images spared are exactly those of the Pending and Running deployments that have one."""
    from storage.releases import images_in_use
    first, second, third, fourth = (queries.create("http://127.0.0.1:9/x.git", "main")
                                    for _ in range(4))
    for deployment in (first, second, third):
        queries.record(deployment.id, image=f"speed-x:{deployment.id}-abc")
    assert queries.claim_next("r1").id == first.id
    assert not queries.finished(first.id) and not queries.finished(second.id)
    queries.transition(third.id, Status.CANCELLED)
    assert queries.finished(third.id)
    assert images_in_use() == {f"speed-x:{first.id}-abc", f"speed-x:{second.id}-abc"}
    assert queries.pending_ids() == [second.id, fourth.id]


async def test_a_deployment_makes_only_these_round_trips(make_client, repo, monkeypatch):
    """A new commit (clone and build), then the same commit again (image reused), recording
    every query the deployment's own task sends to the database thread. Asserts: exactly these,
    in this order, besides output batches: each phase's record once, the outcome, then one read
    for clean-up (no re-read of the row, no listing of whole rows)."""
    sent = []
    run = Store.run

    async def recorded(self, query, *args, **kwargs):
        sent.append((asyncio.current_task().get_name(), query.__name__))
        return await run(self, query, *args, **kwargs)

    monkeypatch.setattr(Store, "run", recorded)
    client = await make_client()
    url, _ = repo("echo hello\n")
    # Cloned, built, the fence asked before the container is made (a replica that lost the
    # deployment makes none), container id, then container started (announced, so the row
    # comes back).
    phases = ["record", "record", "check", "record", "update", "transition",
              "finished"]
    for expected in (["name_image", *phases], ["name_image", *phases[1:]]):
        deployment_id = await start(client, url)
        assert (await wait_finished(client, deployment_id))["status"] == "Succeeded"

        async def task_ended():  # clean-up follows the outcome
            return deployment_id not in client.app[worker_key].runs

        await wait_for(task_ended)
        own = [name for task, name in sent
               if task == f"deployment-{deployment_id}" and name != "append_output"]
        assert own == expected
