"""Reports deployments back to GitHub: commit statuses and Deployments, in order, retried."""
import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import datetime
import logging
import urllib.parse
from typing import Callable

import aiohttp
from gidgethub import GitHubException, RateLimitExceeded

from bot.config import Config, public_url
from bot.github import GitHub
from bot.redelivery import redeliver_missed
from bot.rules import rule_for
from storage import deployments as queries
from storage import outbox, releases, replicas
from storage.models import Deployment, Report as Record, utcnow
from storage.releases import environment_name
from storage.store import Store

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 140
MAX_BACKOFF = 60.0
CATCH_UP_WINDOW = datetime.timedelta(days=1)
# How often the outbox is looked at without a word of a change (another replica's, when
# PostgreSQL's notices do not arrive), and whether this replica leads.
POLL_SECONDS = 0.5
PASSING = ("queued", "running")  # the states a deployment shows before its final one
STATUS_PAGES = 10  # of 100: GitHub keeps at most 1000 statuses per commit and context
# What a call to GitHub may fail with: its answers, the connection, the time limit.
GITHUB_FAILURES = (GitHubException, aiohttp.ClientError, asyncio.TimeoutError, OSError)


@dataclasses.dataclass(frozen=True)
class Report:
    """One state of a deployment as GitHub shows it."""

    key: str  # the outbox row's (storage.outbox): queued, running, success, ...
    state: str  # commit status: pending, success, failure, error
    description: str
    deployment_state: str  # Deployment status: queued, in_progress, success, failure, error


def _seconds(deployment: Deployment) -> int:
    start = deployment.started_at or deployment.created_at
    end = deployment.finished_at or utcnow()
    return max(round((end - start).total_seconds()), 0)


def report_of(key: str, deployment: Deployment) -> Report:
    """How GitHub shows the state key (an outbox row's: see migration 0008) of a deployment."""
    if key == outbox.INACTIVE:  # a Deployment status only: no commit status
        return Report(key, "", "Environment torn down", "inactive")
    if key == "queued":
        return Report("queued", "pending", "Queued", "queued")
    if key == "running":
        return Report("running", "pending", "Running", "in_progress")
    took = f"after {_seconds(deployment)} s"
    if key == "success":
        return Report("success", "success", f"Succeeded {took}", "success")
    if key == "cancelled":
        return Report("cancelled", "error", f"Cancelled ({deployment.reason or 'cancelled'})",
                      "error")
    description = f"Failed: {deployment.reason or 'unknown reason'} {took}"
    if len(description) > MAX_DESCRIPTION:
        description = description[:MAX_DESCRIPTION - 1] + "…"
    return Report(key, key, description, key)


class Reporter:
    """Sends GitHub's outbox (storage.outbox) while this replica is the oldest live one: each
    deployment's states in order, each once, whichever replica made them.

    A report that fails is logged and retried with backoff for github.report_retry_for seconds,
    then given up (tried again, if it is still its deployment's newest, when a replica next
    takes up the outbox); it never changes the deployment. One that a newer state of the same
    deployment overtakes while failing is dropped, so a late `pending` never lands after a final
    state. A post that timed out may still have been applied: before posting it again the
    reporter looks whether GitHub shows it (_landed), and after a final state _settle makes
    sure a late one did not cover it.
    """

    def __init__(self, config: Config, store: Store, github: GitHub, replica: str,
                 on_failure: Callable[[], None] = lambda: None):
        self.config = config
        self.store = store
        self.github = github
        self.replica = replica
        self._on_failure = on_failure
        self._wake = asyncio.Event()
        self._passing = asyncio.Lock()
        self._leading = False
        self._led_at = 0.0  # the event loop's time this replica last saw itself lead
        self._tasks: dict[int, asyncio.Task] = {}  # by deployment: the report being sent
        self._resting: dict[int, float] = {}  # by deployment: no send before this time
        # Per deployment: the commit statuses GitHub applied or may still apply, and whether
        # one of them timed out (so GitHub may apply it after a later one).
        self._posted: dict[int, collections.Counter] = {}
        self._uncertain: set[int] = set()
        self._background: set[asyncio.Task] = set()  # work not of one deployment's states
        self.failures = 0

    def __call__(self, deployment: Deployment) -> None:
        """A deployment changed here (a Store listener): the outbox may hold a new report."""
        self._wake.set()

    def heard(self) -> None:
        """A report was made that no deployment change here announced: another replica's
        (PostgreSQL's notice), or a torn-down preview's inactive marks."""
        self._wake.set()

    async def run(self) -> None:
        """Send what the outbox holds whenever this replica leads, until cancelled."""
        while True:
            self._wake.clear()
            try:
                await self._pass()
            except Exception:  # noqa: BLE001 - the database away: the next pass tries again
                log.exception("sending GitHub's outbox failed")
            await self._woken()

    async def idle(self) -> None:
        """Wait until the outbox holds nothing to send and nothing is being sent (for tests and
        shutdown): on a replica that does not lead, until the one that does sent it."""
        while True:
            await self._pass()
            if self._tasks or self._background:
                await asyncio.gather(*self._tasks.values(), *self._background,
                                     return_exceptions=True)
            elif not await self.store.run(outbox.unsent):
                return
            else:
                await self._woken()
                self._wake.clear()

    async def _woken(self) -> None:
        """Wait until woken, or POLL_SECONDS."""
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that comes as the event is
        # set, and run() then never ended (a shutdown hung on it: seen in the tests).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL_SECONDS):
                await self._wake.wait()

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pass(self) -> None:
        """If this replica leads: start sending each deployment's next report."""
        async with self._passing:
            lease = self.config.runner.lease
            live = [r.id for r in await self.store.run(replicas.live, lease)]
            leading = bool(live) and live[0] == self.replica
            if leading and not self._leading:
                await self._take_up()
            self._leading = leading
            now = asyncio.get_running_loop().time()
            if not leading:
                # What this replica knew of the reports it sent is stale once another leads
                # (a sender looks on GitHub first when it takes up a begun row): kept only for
                # sends still under way.
                self._posted = {d: c for d, c in self._posted.items() if d in self._tasks}
                self._uncertain &= self._tasks.keys()
                self._resting.clear()
                return
            self._led_at = now
            self._resting = {d: until for d, until in self._resting.items() if until > now}
            for report, deployment in await self.store.run(outbox.due):
                if deployment.id in self._tasks or self._resting.get(deployment.id, 0) > now:
                    continue
                from_sender = None
                if report.state == outbox.SENDING:
                    if report.sender in live and report.sender != self.replica:
                        continue  # the replica that led before still sends it
                    from_sender = report.sender  # it went silent, or a send of ours broke off
                # Sends are not a run's writes: none of its fencing (storage.replicas).
                self._tasks[deployment.id] = asyncio.create_task(
                    self._send_one(report, deployment, from_sender), context=contextvars.Context())

    async def _take_up(self) -> None:
        """Begin to lead: states given up earlier are tried again; with an App, the webhook
        deliveries missed while no replica ran are fetched. Once per lead, not per replica."""
        log.info("this replica sends GitHub's outbox now")
        revived = await self.store.run(outbox.revive, CATCH_UP_WINDOW.total_seconds())
        if revived:
            log.info("trying again %d GitHub reports given up earlier", revived)
        if self.github.config.app:
            self._in_background(redeliver_missed(self.github, self.store))

    def _in_background(self, work) -> None:
        task = asyncio.create_task(work, context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_one(self, report: Record, deployment: Deployment,
                        from_sender: str | None) -> None:
        ended = False
        try:
            if await self.store.run(outbox.take, report.id, self.replica, from_sender):
                # A sender before this one (a replica gone silent, or this one's attempt that
                # broke off) may have got it through: look on GitHub first.
                outcome = await self._deliver(report, deployment,
                                              uncertain=report.sender is not None)
                ended = outcome is not None and await self.store.run(
                    outbox.end, report.id, self.replica, outcome)
        except Exception:  # noqa: BLE001 - logged; tried again after a rest, not at once
            log.exception("sending a GitHub report failed", extra={"deployment": deployment.id})
            self._resting[deployment.id] = asyncio.get_running_loop().time() + MAX_BACKOFF
        finally:
            del self._tasks[deployment.id]
            if not ended:
                # Handed back, marked as begun, so whoever sends it next looks on GitHub first
                # (a replica that no longer leads would otherwise hold it for ever).
                with contextlib.suppress(Exception):
                    await self.store.run(outbox.hand_back, report.id, self.replica)
            self._wake.set()  # its next state may go now

    async def _deliver(self, report: Record, deployment: Deployment,
                       uncertain: bool) -> str | None:
        """Send one report, retrying; what came of it (storage.outbox's SENT, DROPPED or
        GIVEN_UP), None when another replica took it over meanwhile."""
        shown = report_of(report.key, deployment)
        deadline = asyncio.get_running_loop().time() + self.config.github.report_retry_for
        delay, steps = 1.0, report.steps
        if report.key == outbox.INACTIVE:
            steps = max(steps, 1)  # it has no commit status
        # Commit statuses posted (inactive posts none: no entry, which nothing would remove).
        posted = (collections.Counter() if report.key == outbox.INACTIVE
                  else self._posted.setdefault(deployment.id, collections.Counter()))
        if uncertain:
            self._uncertain.add(deployment.id)
        loop = asyncio.get_running_loop()
        while True:
            if not await self.store.run(outbox.holds, report.id, self.replica):
                log.info("report %s taken over by another replica", report.key,
                         extra={"deployment": deployment.id})
                return None
            if loop.time() - self._led_at > self.config.runner.lease / 2:
                # Not seen leading for a while (frozen, or the database away): another replica
                # may lead by now, and a post of this one could land after its newer ones.
                log.info("report %s handed back: this replica may no longer lead", report.key,
                         extra={"deployment": deployment.id})
                return None
            try:
                if uncertain:
                    steps = await self._landed(deployment, shown, steps)
                steps = await self._send(report, deployment, shown, steps, posted)
                break
            except GITHUB_FAILURES as e:
                if isinstance(e, (asyncio.TimeoutError, aiohttp.ServerDisconnectedError)):
                    uncertain = True  # GitHub may have applied it, and may still
                    self._uncertain.add(deployment.id)
                if getattr(e, "status_code", None) == 401:  # revoked, or expired early
                    self.github.forget_tokens()
                self.failures += 1
                self._on_failure()
                log.warning("reporting %s to GitHub failed: %s", report.key, _describe(e),
                            extra={"deployment": deployment.id})
                if await self.store.run(outbox.overtaken, report):
                    log.info("report %s overtaken by a newer state; dropped", report.key,
                             extra={"deployment": deployment.id})
                    return outbox.DROPPED
                wait = _retry_after(e) or delay
                if asyncio.get_running_loop().time() + wait > deadline:
                    log.error("gave up reporting %s to GitHub", report.key,
                              extra={"deployment": deployment.id})
                    return outbox.GIVEN_UP
                await asyncio.sleep(wait)
                delay = min(delay * 2, MAX_BACKOFF)
        if report.key not in (*PASSING, outbox.INACTIVE):  # its final state
            if deployment.id in self._uncertain:
                await self._settle(deployment, shown, posted)
            self._posted.pop(deployment.id, None)
            self._uncertain.discard(deployment.id)
        return outbox.SENT

    async def _landed(self, deployment: Deployment, shown: Report, steps: int) -> int:
        """How far an earlier attempt whose answer was lost got on GitHub: 1 once the commit
        status shows, 2 once the GitHub Deployment's status does too."""
        if steps == 0:
            mine = [s for s in await self._statuses(deployment)
                    if (s["state"], s["description"]) == (shown.state, shown.description)]
            if not mine:
                return 0
            steps = 1
        rule = rule_for(self.config, deployment.repo_full_name)
        if not (rule and rule.environment):
            return steps
        token = await self.github.token(deployment.repo_full_name, deployment.installation_id)
        github_id = await self._github_deployment(deployment, token, make=False)
        if github_id is None:
            return steps
        listed = await self.github.api.getitem(
            f"/repos/{deployment.repo_full_name}/deployments/{github_id}/statuses?per_page=100",
            oauth_token=token)
        if any((s["state"], s["description"]) == (shown.deployment_state, shown.description)
               for s in listed):
            return 2
        return steps

    async def _github_deployment(self, deployment: Deployment, token: str | None,
                                 make: bool) -> int | None:
        """The id of the deployment's GitHub Deployment: as recorded; else as GitHub lists it
        (by commit, environment and the description naming ours: an attempt whose answer was
        lost, or whose report was dropped, may have made it); else, with make, made now."""
        github_id = deployment.github_deployment_id or (
            await self.store.run(queries.get, deployment.id)).github_deployment_id
        if github_id is not None:
            return github_id
        repo = f"/repos/{deployment.repo_full_name}"
        listed = await self.github.api.getitem(
            f"{repo}/deployments?sha={deployment.commit}"
            f"&environment={urllib.parse.quote(environment_name(deployment))}&per_page=100",
            oauth_token=token)
        ours = _github_description(deployment)
        github_id = next((d["id"] for d in listed if d.get("description") == ours), None)
        if github_id is None and make:
            created = await self.github.api.post(f"{repo}/deployments", oauth_token=token, data={
                "ref": deployment.commit, "environment": environment_name(deployment),
                "auto_merge": False, "required_contexts": [], "description": ours,
                "transient_environment": deployment.trigger == "pull_request"})
            github_id = created["id"]
        if github_id is not None:
            await self.store.run(queries.update, deployment.id, github_deployment_id=github_id)
        return github_id

    async def _settle(self, deployment: Deployment, final: Report,
                      posted: collections.Counter) -> None:
        """Once every timed-out post has shown up on GitHub (or the retry window ends), make sure
        the final state is the newest: a post GitHub applied late would leave `pending` on top."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.github.report_retry_for
        delay = self.config.github.request_timeout
        while True:
            try:
                shown = [(s["state"], s["description"]) for s in await self._statuses(deployment)]
                if shown and shown[0] != (final.state, final.description):
                    log.info("a late report covered %s; posting it again", final.key,
                             extra={"deployment": deployment.id})
                    posted[final.state, final.description] += 1
                    await self._post_status(deployment, final)
                elif all(collections.Counter(shown)[key] >= count for key, count in posted.items()):
                    return
            except GITHUB_FAILURES as e:
                log.warning("checking GitHub's statuses failed: %s", _describe(e),
                            extra={"deployment": deployment.id})
            if loop.time() + delay > deadline:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    def _context(self, deployment: Deployment) -> str:
        rule = rule_for(self.config, deployment.repo_full_name)
        return rule.context if rule else "speed/deploy"

    async def _statuses(self, deployment: Deployment) -> list[dict]:
        """This deployment's statuses (its context, its page) on its commit as GitHub lists
        them, newest first: other deployments of the same commit have statuses of their own,
        so every page is read (GitHub keeps at most 1000 per commit and context)."""
        token = await self.github.token(deployment.repo_full_name, deployment.installation_id)
        # By the page's path: replicas without one server.public_url name different hosts.
        context, page = self._context(deployment), f"/deployments/{deployment.id}"
        found = []
        for number in range(1, STATUS_PAGES + 1):
            listed = await self.github.api.getitem(
                f"/repos/{deployment.repo_full_name}/commits/{deployment.commit}/statuses"
                f"?per_page=100&page={number}", oauth_token=token)
            found += [s for s in listed
                      if s["context"] == context and (s.get("target_url") or "").endswith(page)]
            if len(listed) < 100:
                break
        return found

    async def _post_status(self, deployment: Deployment, report: Report) -> None:
        token = await self.github.token(deployment.repo_full_name, deployment.installation_id)
        await self.github.api.post(
            f"/repos/{deployment.repo_full_name}/statuses/{deployment.commit}", oauth_token=token,
            data={"state": report.state, "description": report.description,
                  "target_url": self._page(deployment), "context": self._context(deployment)})

    def _page(self, deployment: Deployment) -> str:
        return f"{public_url(self.config)}/deployments/{deployment.id}"

    async def _send(self, report: Record, deployment: Deployment, shown: Report, steps: int,
                    posted: collections.Counter) -> int:
        """Post what steps says GitHub lacks: the commit status, then (with an environment rule)
        the GitHub Deployment's status; how far it got."""
        rule = rule_for(self.config, deployment.repo_full_name)
        if steps == 0:
            try:
                await self._post_status(deployment, shown)
            except (asyncio.TimeoutError, aiohttp.ServerDisconnectedError):
                posted[shown.state, shown.description] += 1  # GitHub may still apply it
                raise
            posted[shown.state, shown.description] += 1
            steps = 1
            if rule and rule.environment:
                await self.store.run(outbox.step, report.id, self.replica, steps)
        if not (rule and rule.environment) or steps >= 2:
            return steps
        token = await self.github.token(deployment.repo_full_name, deployment.installation_id)
        github_id = await self._github_deployment(deployment, token,
                                                  make=report.key != outbox.INACTIVE)
        if github_id is None:
            return 2  # inactive, and none was ever made: nothing to mark
        status = {"state": shown.deployment_state, "log_url": self._page(deployment),
                  "description": shown.description}
        if shown.deployment_state == "success":
            address = await self.store.run(releases.address_of, deployment.id)
            if address:  # a service: the pull request shows "View deployment"
                status["environment_url"] = self.config.proxy.environment_url(address)
        await self.github.api.post(f"/repos/{deployment.repo_full_name}/deployments/{github_id}"
                                   "/statuses", oauth_token=token, data=status)
        return 2


def _github_description(deployment: Deployment) -> str:
    """The description of the deployment's GitHub Deployment (how it is found again)."""
    return f"SPEED deployment {deployment.id}"


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def _retry_after(error: Exception) -> float | None:
    """Seconds GitHub asks to wait: its Retry-After, or until a spent rate limit resets (a
    primary rate limit sends no Retry-After, and asks that nothing be tried before)."""
    headers = getattr(error, "headers", None) or {}
    try:
        return float(headers.get("retry-after") or headers.get("Retry-After"))
    except (TypeError, ValueError):
        pass
    if isinstance(error, RateLimitExceeded):
        reset = error.rate_limit.reset_datetime - datetime.datetime.now(datetime.timezone.utc)
        return max(reset.total_seconds(), 0) + 1
    return None
