"""One reader of the database for every open live stream: it reads once per tick and hands out."""
import asyncio
import bisect
import collections
import contextlib
import json
import logging
from typing import Iterator, NamedTuple

from aiohttp import web

from bot.api import describe, environment_urls, waiting_reasons
from bot.errors import json_error
from bot.keys import store_key
from storage import feeds as queries
from storage.models import Deployment

log = logging.getLogger(__name__)

# Output is stored in batches every 0.25 s (runner.output); reading more often finds nothing new.
TICK_SECONDS = 0.25
# Results per deployment per read: what a stream catching up on a long log is handed at once.
BATCH = 500
# Open streams. Browsers open at most 6 connections to a host, so 8 per client leaves a browser
# and a `speed logs -f` room; the total bounds what one tick hands out and holds in memory.
MAX_PER_CLIENT = 8
MAX_STREAMS = 200
RETRY_AFTER_SECONDS = 10


def event(kind: str, data, event_id: int | None = None) -> bytes:
    """One Server-Sent Event."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


class _Caller(NamedTuple):
    """What waiting_reasons reads of a request: its app."""
    app: web.Application


class Watch:
    """One open stream: where it stands in its deployment's log, and what it has yet to write."""

    def __init__(self, client: str):
        self.client = client
        self.deployment_id: int | None = None
        self.request: web.Request | None = None
        self.after = 0  # the last result id handed to it
        self.shown: bytes | None = None  # the last status event handed to it
        self.outbox: list[bytes] = []
        self.writing = False
        self.ended = False  # `end` was handed to it: nothing more comes
        self.closed = False  # its client went away, or the feed stopped
        self._handed = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Whether it may be handed more: one batch at a time, so a slow reader holds at most one
        in memory and the others do not wait for it."""
        return not (self.outbox or self.writing or self.ended or self.closed)

    def hand(self, events: list[bytes]) -> None:
        self.outbox.extend(events)
        self._handed.set()

    def close(self) -> None:
        self.closed = True
        self._handed.set()

    def gone(self) -> bool:
        """Whether its client disconnected: aiohttp does not cancel a handler when that happens,
        and the stream would otherwise hold its slot until its next write fails."""
        transport = self.request.transport if self.request is not None else None
        return transport is None or transport.is_closing()

    async def take(self, timeout: float) -> list[bytes] | None:
        """What it was handed since the last take, [] after `timeout` s of nothing, None once
        closed. Call Feed.written once it is written."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._handed.wait()
        self._handed.clear()
        if self.closed:
            return None
        events, self.outbox = self.outbox, []
        self.writing = bool(events)
        return events


class Feed:
    """Reads, once per tick, the rows and new results of every deployment an open stream
    follows — one query each, however many streams — and hands each stream what it has not had.

    Streams on one deployment share its read from the lowest cursor among them, and each takes
    the results after its own; the store's listener wakes it early when a followed deployment
    changes status."""

    def __init__(self, app: web.Application):
        self._app = app
        self._per_client: collections.Counter[str] = collections.Counter()
        self._open = 0
        self._following: dict[int, set[Watch]] = {}
        self._hungry: set[Watch] = set()  # handed a full batch: read again once they wrote it
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.ticks = 0  # reads so far, for tests and measurements

    @contextlib.contextmanager
    def stream(self, client: str) -> Iterator[Watch]:
        """A slot for one stream of this client, freed on leaving; 429 when the client has
        MAX_PER_CLIENT open, 503 when MAX_STREAMS are open."""
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if self._per_client[client] >= MAX_PER_CLIENT:
            raise json_error(429, f"Too many live streams from this client ({MAX_PER_CLIENT} "
                                  "open); close one or retry later", **retry)
        if self._open >= MAX_STREAMS:
            raise json_error(503, f"Too many live streams are open ({MAX_STREAMS}); retry later",
                             **retry)
        watch = Watch(client)
        self._per_client[client] += 1
        self._open += 1
        try:
            yield watch
        finally:
            watch.close()
            self._unfollow(watch)
            self._open -= 1
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]

    def follow(self, watch: Watch, deployment_id: int, after: int, request: web.Request) -> None:
        """Start handing the watch its deployment's status and its results after `after`."""
        watch.deployment_id, watch.after, watch.request = deployment_id, after, request
        self._following.setdefault(deployment_id, set()).add(watch)
        self._wake.set()  # a new stream gets its status and backlog at once, not a tick later
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="speed-feed")

    def written(self, watch: Watch) -> None:
        """The watch wrote what it took: it is ready for more."""
        watch.writing = False
        self._fed(watch)

    def changed(self, deployment: Deployment) -> None:
        """A Store listener: a followed deployment's new status reaches its streams now."""
        if deployment.id in self._following:
            self._wake.set()

    def close(self) -> None:
        """Stop reading and close every stream."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for watches in list(self._following.values()):
            for watch in list(watches):
                watch.close()
                self._unfollow(watch)

    def _fed(self, watch: Watch) -> None:
        if watch in self._hungry:
            self._hungry.discard(watch)
            if not self._hungry:
                self._wake.set()  # every stream that had a full batch wrote it: read the next

    def _unfollow(self, watch: Watch) -> None:
        watches = self._following.get(watch.deployment_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._following[watch.deployment_id]
        self._fed(watch)

    async def _run(self) -> None:
        while self._following:
            self._wake.clear()
            try:
                await self._tick()
            except Exception:  # noqa: BLE001 - logged; the streams close and their clients resume
                log.exception("reading for the live streams failed; closing them")
                for watches in list(self._following.values()):
                    for watch in list(watches):
                        watch.close()
                        self._unfollow(watch)
            self.ticks += 1
            # Until the next tick; sooner when a status changes, a stream opens, or every stream
            # handed a full batch wrote it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_SECONDS):
                    await self._wake.wait()
        self._task = None

    async def _tick(self) -> None:
        for watches in list(self._following.values()):
            for watch in [w for w in watches if w.gone()]:
                watch.close()
                self._unfollow(watch)
        ready = {d: [w for w in watches if w.ready] for d, watches in self._following.items()}
        ready = {d: watches for d, watches in ready.items() if watches}
        if not ready:
            return
        store = self._app[store_key]
        # The rows before the results: what was stored with a final status is then among the
        # results read after it, so `end` comes after the last of them.
        rows = await store.run(queries.rows, sorted(ready))
        reasons = await waiting_reasons(_Caller(self._app), list(rows.values()))
        urls = await environment_urls(self._app, list(rows.values()))
        # Result ids are assigned in commit order on SQLite (one writer), so a result with an id
        # below a cursor is never committed after the cursor passed it. On PostgreSQL ids come
        # from a sequence and transactions can commit out of order: a cursor there must stay
        # behind ids still in flight (e.g. read only below the oldest open transaction's ids).
        cursors = {d: min(w.after for w in watches) for d, watches in ready.items()}
        results = await store.run(queries.results_of_many, cursors, BATCH)
        hungry = set()
        for deployment_id, watches in ready.items():
            row = rows.get(deployment_id)
            if row is None:  # gone from the database: nothing more will come
                for watch in watches:
                    watch.close()
                    self._unfollow(watch)
                continue
            status = event("status", describe(row, reasons.get(deployment_id),
                                              urls.get(deployment_id)))
            found = results[deployment_id]
            ids = [result_id for result_id, _ in found]
            logs = [event("log", text, result_id) for result_id, text in found]
            complete = len(found) < BATCH
            for watch in watches:
                if watch.closed:  # went away while the database was read
                    continue
                handed = [] if status == watch.shown else [status]
                watch.shown = status
                handed += logs[bisect.bisect_right(ids, watch.after):]
                watch.after = max(watch.after, ids[-1]) if ids else watch.after
                if not complete:
                    if handed:  # one handed nothing has nothing to write: do not wait for it
                        hungry.add(watch)
                elif row.state.finished:
                    handed.append(event("end", {"status": row.status}))
                    watch.ended = True
                    self._unfollow(watch)
                if handed:
                    watch.hand(handed)
        self._hungry = hungry
