"""The sender of GitHub's outbox (bot/reporter.py): what a replica does as it leads or not, and
as it stops. On SQLite (tests/test_outbox.py has the outbox's rows, on both databases)."""
import asyncio

import pytest

from bot.config import load
from bot.reporter import Reporter
from storage import replicas
from storage.store import Store


@pytest.fixture
async def follower(tmp_path):
    """A reporter of a replica that does not lead (another joined), on SQLite."""
    store = Store(f"sqlite:///{tmp_path / 'speed.db'}")
    await store.run(replicas.join, "leader", "host", 1)
    yield Reporter(load(None), store, github=None, replica="follower")
    store.close()


async def test_a_replica_that_does_not_lead_keeps_nothing_of_the_reports_it_sent(follower):
    """What a sender remembers of its sends (rests after errors, commit statuses posted, timed
    out ones) is stale once another replica leads: a replica that does not lead drops it, so the
    memory is bounded by what it sends now."""
    follower._resting[1] = float("inf")
    follower._posted[1] = {"success": 1}
    follower._uncertain.add(1)
    await follower.idle()
    assert (follower._resting, follower._posted, follower._uncertain) == ({}, {}, set())


async def test_a_reporter_stopped_as_it_is_woken_stops(follower):
    """Fault: the shutdown's cancel comes in the same moment as a wake-up (Python 3.11's
    asyncio.wait_for swallowed such a cancel, and the shutdown waited for ever)."""
    sending = asyncio.create_task(follower.run())
    async with asyncio.timeout(10):
        while not follower._wake._waiters:  # until it waits to be woken
            await asyncio.sleep(0.01)
    follower.heard()
    sending.cancel()
    async with asyncio.timeout(10):
        await asyncio.gather(sending, return_exceptions=True)
    assert sending.cancelled()
