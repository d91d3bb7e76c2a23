"""After downtime: ask GitHub to redeliver the App's webhook deliveries SPEED never recorded."""
import asyncio
import logging
from typing import Awaitable, Callable, TypeVar

import aiohttp
from gidgethub import GitHubBroken, RateLimitExceeded

from bot.github import GitHub
from storage import deployments as queries
from storage.store import Store

log = logging.getLogger(__name__)

# GitHub lists the newest deliveries first; one page covers any ordinary outage.
PAGE = 100
# Seconds between tries of a call GitHub failed: one hiccup at take-up must not lose what was
# missed until the next one (there is no other time they are asked for).
RETRY_AFTER = (1, 2, 4, 8, 16)
_PASSING = (GitHubBroken, RateLimitExceeded, aiohttp.ClientError, asyncio.TimeoutError)
T = TypeVar("T")


async def redeliver_missed(github: GitHub, store: Store) -> list[int]:
    """Request redelivery of each missed delivery (its newest attempt), oldest first; return
    the ids asked for."""
    jwt = github.jwt()
    try:
        listed = await _tried(lambda: github.api.getitem(
            f"/app/hook/deliveries?per_page={PAGE}", jwt=jwt))
    except _PASSING as e:
        log.error("could not list the App's webhook deliveries, so those missed are not asked "
                  "for again until this replica leads anew: %s", e)
        return []
    newest: dict[str, dict] = {}
    for delivery in listed:
        newest.setdefault(delivery["guid"], delivery)
    known = await store.run(queries.known_deliveries, list(newest))
    # Oldest first: of two missed pushes to a branch, the one arriving last supersedes the
    # other, and that must be the newer.
    missed = [d for guid, d in reversed(newest.items()) if guid not in known]
    asked = []
    for delivery in missed:
        try:
            await _tried(lambda: github.api.post(
                f"/app/hook/deliveries/{delivery['id']}/attempts", data=b"", jwt=jwt))
        except _PASSING as e:  # the others are still asked for
            log.warning("could not ask GitHub to redeliver %s: %s", delivery["guid"], e)
            continue
        asked.append(delivery["id"])
        log.info("asked GitHub to redeliver %s (%s, answered %s)", delivery["guid"],
                 delivery.get("event"), delivery.get("status_code"))
    return asked


async def _tried(call: Callable[[], Awaitable[T]]) -> T:
    """call's answer, tried again after each of RETRY_AFTER while GitHub fails it passingly."""
    for delay in (*RETRY_AFTER, None):
        try:
            return await call()
        except _PASSING:
            if delay is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
