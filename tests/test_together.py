"""Group commit (storage/together.py): writes queued together share a transaction, yet each
is answered with its own outcome, and one refused takes none of the others with it."""
import asyncio

import pytest

from storage import deployments as queries
from storage.models import Delivery
from storage.store import Store

PUSH = dict(url="http://127.0.0.1:1/app.git", branch="main", commit="a" * 40,
            repo_full_name="acme/app", trigger="push")


class Refused(Exception):
    pass


def _refuse() -> None:
    """A write that fails after writing: its savepoint must undo what it wrote."""
    queries.record_delivery("refused", "push", None, "written, then refused")
    raise Refused()


@pytest.fixture
async def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'speed.db'}")
    yield store
    store.close()


async def test_writes_sent_together_each_get_their_own_outcome(store):
    calls = [store.run_together(queries.record_delivery, f"g-{n}", "push", dict(PUSH),
                                f"delivery {n}", True) for n in range(20)]
    calls.insert(7, store.run_together(_refuse))
    calls.append(store.run_together(queries.record_delivery, "g-3", "push", dict(PUSH), "again"))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(outcomes.pop(7), Refused)
    *firsts, again = outcomes
    assert [(d.guid, new) for d, new, _, _ in firsts] == [(f"g-{n}", True) for n in range(20)]
    assert again[0].guid == "g-3" and again[1] is False  # recorded once, answered as before
    # Each push superseded the one before it, in the order they were sent.
    assert [[s.id for s in superseded] for _, _, _, superseded in firsts[1:]] == [
        [created.id] for _, _, created, _ in firsts[:-1]]
    stored = await store.run(lambda: sorted(d.guid for d in Delivery.select()))
    assert stored == sorted(f"g-{n}" for n in range(20))  # the refused one's write undone


async def test_a_write_sent_alone_is_answered_at_once(store):
    delivery, new, created, _ = await store.run_together(
        queries.record_delivery, "g-1", "push", dict(PUSH), "alone")
    assert new and created is not None and delivery.deployment_id == created.id


async def test_a_write_sent_after_the_store_closed_fails_and_does_not_hang(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'speed.db'}")
    store.close()
    with pytest.raises(RuntimeError):
        await store.run_together(queries.record_delivery, "g-1", "push", None, "late")
