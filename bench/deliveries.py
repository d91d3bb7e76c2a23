"""Signed GitHub push deliveries sent to a /webhook, a given number in flight; their latencies."""
import asyncio
import time

import aiohttp

from bench.common import WEBHOOK_SECRET, ms, percentile
from tests.webhooks import delivery_headers, encode, push_payload


def signed_pushes(clone_url: str, commit: str, count: int, first: int = 0) -> list:
    """count signed push deliveries (body, headers), to branches burst-<first...> of bench/app."""
    # burst-*: what accept_webhooks' rule deploys. Each has a delivery id of its own.
    deliveries = []
    for n in range(first, first + count):
        body = encode(push_payload("bench/app", clone_url, ref=f"refs/heads/burst-{n}",
                                   after=commit))
        deliveries.append((body, delivery_headers("push", body, WEBHOOK_SECRET)))
    return deliveries


async def _send(url: str, deliveries: list, in_flight: int) -> tuple[list, list, float]:
    gate = asyncio.Semaphore(in_flight)
    # At most in_flight connections, each kept alive from one delivery to the next.
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def connect() -> None:  # an unsigned POST, refused: it queues nothing
            async with session.post(url, data=b"{}") as response:
                await response.read()

        # Every connection open before the clock, so no delivery's time includes a connect.
        await asyncio.gather(*(connect() for _ in range(in_flight)))

        async def deliver(body: bytes, headers: dict) -> tuple[float, int]:
            async with gate:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                took = time.perf_counter() - started
            assert response.status == 202, (response.status, answer[:500])
            return took, (await response.json())["id"]

        started = time.perf_counter()
        samples, ids = zip(*await asyncio.gather(*(deliver(*d) for d in deliveries)))
        return list(samples), list(ids), time.perf_counter() - started


def send(url: str, deliveries: list, in_flight: int) -> tuple[dict, list[int]]:
    """Send deliveries to url, in_flight at a time: their summary, and the ids answered."""
    # in_flight 1: one after another on one keep-alive connection.
    samples, ids, wall = asyncio.run(_send(url, deliveries, in_flight))
    return {"deliveries": len(samples), "in_flight": in_flight,
            "p50_ms": ms(percentile(samples, 50)), "p99_ms": ms(percentile(samples, 99)),
            "max_ms": ms(max(samples)), "per_second": round(len(samples) / wall, 1),
            "wall_s": round(wall, 3)}, ids
