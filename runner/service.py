"""What a service's releases need beyond a job's container: the health check that gates a switch,
and the retirement of releases once they drained or their environment went away."""
import asyncio
import contextlib
import contextvars
import datetime
import json
import logging
from typing import Callable

import aiohttp

from runner.base import Backend, ContainerState
from runner.errors import RunFailed, RunnerError
from runner.proxy import ProxyError
from runner.router import Router
from runner.settings import Health, Service
from storage import releases
from storage.models import Release, utcnow
from storage.releases import ReleaseState

log = logging.getLogger(__name__)

DEFAULT_KEEP = 5  # kept releases of an environment whose settings no longer say
RETRY_FIRST_SECONDS = 1.0  # a retirement the engine refused is tried again after this, doubling
RETRY_MAX_SECONDS = 30.0


class HealthCheckFailed(RunFailed):
    """A release did not become healthy within its deadline."""


async def probe(session: aiohttp.ClientSession, upstream: str, health: Health) -> str | None:
    """One check of a release: None if GET path answered 2xx, else what it saw."""
    try:
        async with session.get(f"http://{upstream}{health.path}", allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=health.timeout)) as response:
            if 200 <= response.status < 300:
                return None
            return f"answered {response.status}"
    except asyncio.TimeoutError:
        return f"had no answer within {health.timeout:g} s"
    except aiohttp.ClientConnectorError:
        return "was refused a connection"
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        # What the engine's port forwarder does when nothing in the container listens.
        return "had the connection closed without an answer (is the app listening on its port?)"
    except aiohttp.ClientError as e:
        return f"failed ({type(e).__name__})"


def _trouble(state: ContainerState) -> str:
    """What went wrong with a service's container just now, if anything did."""
    if state.oom_killed:
        return "ran out of memory"
    if state.status in ("exited", "dead", "restarting") and state.last_exit:
        return f"exited with code {state.last_exit}"
    return ""


async def wait_healthy(backend: Backend, container_id: str, upstream: str, health: Health,
                       stopped: Callable[[], bool] = lambda: False) -> None:
    """Return once the release passed health.passes checks in a row (and its image's
    HEALTHCHECK, if any, says healthy); HealthCheckFailed saying what the checks saw when
    health.deadline runs out first."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    tries, passed, seen, trouble = 0, 0, "was not tried: the container never ran", ""
    # A fresh connection per check: a kept-alive one would prove nothing about the app now.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while not stopped():
            # Both at once: the check's time is the app's, not the engine's plus the app's.
            state, seen_now = await asyncio.gather(backend.state(container_id),
                                                   probe(session, upstream, health))
            if state is None:
                raise HealthCheckFailed("health check: the container vanished")
            trouble = _trouble(state) or trouble  # a restart clears the engine's memory of it
            if state.status == "running":
                tries += 1
                if seen_now is None and state.health not in (None, "healthy"):
                    seen_now = f"passed, but the image's HEALTHCHECK says {state.health}"
                passed = passed + 1 if seen_now is None else 0
                if passed >= health.passes:
                    return
                seen = seen_now or seen
            elapsed = loop.time() - began
            if state.exited or elapsed >= health.deadline:
                # A restart says it exited even when no check caught it between exit and restart.
                restarted = f"restarted {state.restarts} times" if state.restarts else ""
                about = ", ".join(filter(None, (trouble, restarted)))
                raise HealthCheckFailed(
                    f"health check: GET {health.path} {seen} ({tries} tries in {elapsed:.0f} s)"
                    + (f"; the container {about}" if about else ""))
            await asyncio.sleep(min(health.interval, max(health.deadline - elapsed, 0)))


WATCH_SECONDS = 5.0  # how often live releases are checked


def service_of(settings_json: str | None) -> Service | None:
    """The service block of stored settings as it was checked when stored (None: a job)."""
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        stored = json.loads(settings_json)["service"]
        if stored:
            return Service(**{**stored, "health": Health(**stored["health"])})
    return None




class HealthWatch:
    """Checks every live release now and then and records what it saw: a crashed release is
    restarted by the engine, and meanwhile its environment shows unhealthy."""

    def __init__(self, store, backend: Backend):
        self.store = store
        self.backend = backend

    async def check(self) -> None:
        """Check each live release once and record what changed."""
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            live = await self.store.run(releases.live)
            # All at once: one app that hangs must not hold up the checks of the others.
            seen_all = await asyncio.gather(*(self._look(session, r) for r in live))
            for release, seen in zip(live, seen_all):
                if seen != release.health:
                    await self.store.run(releases.record, release.id, health=seen)
                    log.info("%s is %s", release.environment.address,
                             f"unhealthy: {seen}" if seen else "healthy again")

    async def _look(self, session: aiohttp.ClientSession, release: Release) -> str | None:
        state = await self.backend.state(release.container_id) if release.container_id else None
        if state is None:
            return "its container is gone"
        if state.status != "running":
            trouble = _trouble(state)
            return f"its container is {state.status}" + (f" ({trouble})" if trouble else "")
        service = service_of(release.deployment.settings)
        health = service.health if service else Health()
        seen = await probe(session, release.upstream, health)
        return f"GET {health.path} {seen}" if seen else None

    async def run(self, interval: float = WATCH_SECONDS) -> None:
        """Check forever; the engine being away only pauses it."""
        while True:
            try:
                await self.check()
            except RunnerError as e:
                log.warning("could not check live releases: %s", e.message)
            except Exception:  # e.g. the database away for a moment: the watch must go on
                log.exception("could not check live releases")
            await asyncio.sleep(interval)


def keep_of(settings_json: str | None) -> int:
    """How many earlier releases a deployment's settings keep."""
    service = service_of(settings_json)
    return service.keep if service else DEFAULT_KEEP


class Retirer:
    """Stops releases once they drained, and what a torn-down environment ran; keeps images
    a rollback may want."""

    def __init__(self, store, backend: Backend, router: Router):
        self.store = store
        self.backend = backend
        self.router = router
        self._tasks: set[asyncio.Task] = set()

    def schedule(self, release: Release, keep: int) -> None:
        """Retire a draining release when its drain time is up."""
        self._spawn(self._retire_later(release, keep), f"retire-release-{release.id}")

    def _spawn(self, work, name: str) -> None:
        # Not the scheduling deployment's work: none of its run's fencing (storage.replicas).
        task = asyncio.create_task(work, name=name, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self) -> None:
        """After a restart: retire what was draining when SPEED stopped."""
        for release in await self.store.run(releases.draining):
            settings = await self.store.run(releases.settings_of, release.id)
            self.schedule(release, keep_of(settings))

    async def _retire_later(self, release: Release, keep: int) -> None:
        wait = ((release.drain_until or utcnow()) - utcnow()) / datetime.timedelta(seconds=1)
        await asyncio.sleep(max(wait, 0))
        await self._until_done(lambda: self.retire(release, keep), f"retiring release {release.id}")

    @staticmethod
    async def _until_done(work, what: str) -> None:
        """Do work, again and again while the engine is away (backing off), until it is done."""
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                return await work()
            except RunnerError as e:
                log.warning("%s: %s; trying again in %g s", what, e.message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def retire(self, release: Release, keep: int) -> None:
        """Stop a drained release (its image stays for rollback) and drop what the
        environment keeps no longer."""
        if release.container_id:
            await self.backend.cleanup(release.container_id)
        try:
            await self.store.run(releases.move, release.id, ReleaseState.RETIRED,
                                 retired_at=utcnow())
        except releases.ReleaseRefused:
            return  # its environment was torn down meanwhile: nothing left to retire
        await self._remove(await self.store.run(releases.surplus, release.environment_id, keep))

    async def teardown(self, environment_id: int) -> None:
        """Take an environment down: at once in the database; its route, then its containers
        and images, in the background (a proxy or an engine that is slow or away must not hold
        up the webhook that asked)."""
        gone = await self.store.run(releases.teardown, environment_id)
        self._spawn(self._take_down(gone), f"teardown-environment-{environment_id}")

    async def _take_down(self, gone: list[Release]) -> None:
        try:
            await self.router.sync()
        except ProxyError as e:  # the watch removes the route once the proxy answers
            log.warning("could not remove the route now: %s", e.message)
        await self._until_done(lambda: self._remove(gone), "removing a torn-down environment")

    async def idle(self) -> None:
        """Wait until every retirement and teardown under way is done (for tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _remove(self, gone: list[Release]) -> None:
        for release in gone:
            if release.container_id:
                await self.backend.cleanup(release.container_id)
        in_use = await self.store.run(releases.images_in_use)
        for image in {release.image for release in gone} - in_use:
            await self.backend.cleanup(image=image)

    async def close(self) -> None:
        """Stop waiting; the next start retires what is left."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
