"""Reports deployments back to GitHub: commit statuses and Deployments, in order, retried."""
import asyncio
import collections
import contextvars
import dataclasses
import datetime
import logging
from typing import Callable

import aiohttp
from gidgethub import GitHubException

from bot.config import Config, public_url
from bot.github import GitHub
from bot.rules import rule_for
from storage import deployments as queries
from storage import releases
from storage.releases import environment_name
from storage.models import Deployment, utcnow
from storage.status import Status
from storage.store import Store

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 140
MAX_BACKOFF = 60.0
CATCH_UP_WINDOW = datetime.timedelta(days=1)
# What a call to GitHub may fail with: its answers, the connection, the time limit.
GITHUB_FAILURES = (GitHubException, aiohttp.ClientError, asyncio.TimeoutError, OSError)


@dataclasses.dataclass(frozen=True)
class Report:
    """One state of a deployment as GitHub shows it."""

    key: str  # what SPEED stores once GitHub has it
    state: str  # commit status: pending, success, failure, error
    description: str
    deployment_state: str  # Deployment status: queued, in_progress, success, failure, error


def _seconds(deployment: Deployment) -> int:
    start = deployment.started_at or deployment.created_at
    end = deployment.finished_at or utcnow()
    return max(round((end - start).total_seconds()), 0)


def report_for(deployment: Deployment) -> Report | None:
    """What GitHub should show for the deployment now, or None when there is nothing to show."""
    if not deployment.commit:
        return None
    status = deployment.state
    if status == Status.PENDING:
        return Report("queued", "pending", "Queued", "queued")
    if status == Status.RUNNING:
        if deployment.container_started_at is None:
            return None
        return Report("running", "pending", "Running", "in_progress")
    took = f"after {_seconds(deployment)} s"
    if status == Status.SUCCEEDED:
        return Report("success", "success", f"Succeeded {took}", "success")
    if status == Status.CANCELLED:
        return Report("cancelled", "error", f"Cancelled ({deployment.reason or 'cancelled'})",
                      "error")
    state = "error" if deployment.infrastructure_failure else "failure"
    description = f"Failed: {deployment.reason or 'unknown reason'} {took}"
    if len(description) > MAX_DESCRIPTION:
        description = description[:MAX_DESCRIPTION - 1] + "…"
    return Report(state, state, description, state)


class Reporter:
    """Listens to deployment changes and sends each deployment's reports to GitHub in order.

    A report that fails is logged and retried with backoff for github.report_retry_for seconds;
    it never changes the deployment. A report that a newer one of the same deployment overtakes
    while it is failing is dropped, so a late `pending` never lands after a final state. A post
    that timed out may still be applied by GitHub later, though: see _settle.
    """

    def __init__(self, config: Config, store: Store, github: GitHub,
                 on_failure: Callable[[], None] = lambda: None):
        self.config = config
        self.store = store
        self.github = github
        self._on_failure = on_failure
        self._queues: dict[int, list[Deployment]] = {}
        self._tasks: dict[int, asyncio.Task] = {}
        # Per deployment: the commit statuses GitHub applied or may still apply, and whether
        # one of them timed out (so GitHub may apply it after a later one).
        self._posted: dict[int, collections.Counter] = {}
        self._uncertain: set[int] = set()
        self._background: set[asyncio.Task] = set()  # reports not of one deployment's states
        self.failures = 0

    def __call__(self, deployment: Deployment) -> None:
        """Queue the deployment's current state for GitHub (a Store listener)."""
        if not deployment.repo_full_name or report_for(deployment) is None:
            return
        self._queues.setdefault(deployment.id, []).append(deployment)
        if deployment.id not in self._tasks:
            # Reports are not the run's writes, whichever task's change announced them: none
            # of its fencing (storage.replicas).
            self._tasks[deployment.id] = asyncio.create_task(self._drain(deployment.id),
                                                             context=contextvars.Context())

    async def catch_up(self) -> None:
        """Report the states that an earlier process did not get through to GitHub."""
        since = utcnow() - CATCH_UP_WINDOW
        for deployment in await self.store.run(queries.unreported, since):
            report = report_for(deployment)
            if report is not None and report.key != deployment.reported:
                self(deployment)

    async def idle(self) -> None:
        """Wait until every queued report was sent or given up (for tests and shutdown)."""
        while self._tasks or self._background:
            await asyncio.gather(*self._tasks.values(), *self._background,
                                 return_exceptions=True)

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain(self, deployment_id: int) -> None:
        queue = self._queues[deployment_id]
        try:
            while queue:
                await self._deliver(queue.pop(0), queue)
        finally:
            del self._tasks[deployment_id]
            if not queue:
                self._queues.pop(deployment_id, None)
                self._posted.pop(deployment_id, None)
                self._uncertain.discard(deployment_id)

    async def _deliver(self, deployment: Deployment, newer: list[Deployment]) -> None:
        report = report_for(deployment)
        deadline = asyncio.get_running_loop().time() + self.config.github.report_retry_for
        delay = 1.0
        posted = self._posted.setdefault(deployment.id, collections.Counter())
        while True:
            try:
                await self._send(deployment, report)
                posted[report.state, report.description] += 1
                break
            except GITHUB_FAILURES as e:
                if isinstance(e, (asyncio.TimeoutError, aiohttp.ServerDisconnectedError)):
                    posted[report.state, report.description] += 1  # it may still be applied
                    self._uncertain.add(deployment.id)
                self.failures += 1
                self._on_failure()
                log.warning("reporting %s to GitHub failed: %s", report.key, _describe(e),
                            extra={"deployment": deployment.id})
                if newer:
                    log.info("report %s overtaken by a newer state; dropped", report.key,
                             extra={"deployment": deployment.id})
                    return
                wait = _retry_after(e) or delay
                if asyncio.get_running_loop().time() + wait > deadline:
                    log.error("gave up reporting %s to GitHub", report.key,
                              extra={"deployment": deployment.id})
                    return
                await asyncio.sleep(wait)
                delay = min(delay * 2, MAX_BACKOFF)
        await self.store.run(queries.update, deployment.id, reported=report.key)
        if deployment.state.finished and deployment.id in self._uncertain:
            await self._settle(deployment, report, posted)

    async def _settle(self, deployment: Deployment, final: Report,
                      posted: collections.Counter) -> None:
        """Once every timed-out post has shown up on GitHub (or the retry window ends), make sure
        the final state is the newest: a post GitHub applied late would leave `pending` on top."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.github.report_retry_for
        delay = self.config.github.request_timeout
        while True:
            try:
                shown = await self._statuses(deployment)
                if shown and shown[0] != (final.state, final.description):
                    log.info("a late report covered %s; posting it again", final.key,
                             extra={"deployment": deployment.id})
                    posted[final.state, final.description] += 1
                    await self._post_status(deployment, final)
                    continue
                seen = collections.Counter(shown)
                if all(seen[key] >= count for key, count in posted.items()):
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

    async def _statuses(self, deployment: Deployment) -> list[tuple[str, str]]:
        """This deployment's context's statuses on its commit as GitHub lists them, newest first."""
        token = await self.github.token(deployment.repo_full_name, deployment.installation_id)
        listed = await self.github.api.getitem(
            f"/repos/{deployment.repo_full_name}/commits/{deployment.commit}/statuses"
            "?per_page=100", oauth_token=token)
        context = self._context(deployment)
        return [(s["state"], s["description"]) for s in listed if s["context"] == context]

    async def _post_status(self, deployment: Deployment, report: Report) -> None:
        token = await self.github.token(deployment.repo_full_name, deployment.installation_id)
        await self.github.api.post(
            f"/repos/{deployment.repo_full_name}/statuses/{deployment.commit}", oauth_token=token,
            data={"state": report.state, "description": report.description,
                  "target_url": self._page(deployment), "context": self._context(deployment)})

    def _page(self, deployment: Deployment) -> str:
        return f"{public_url(self.config)}/deployments/{deployment.id}"

    async def _send(self, deployment: Deployment, report: Report) -> None:
        await self._post_status(deployment, report)
        rule = rule_for(self.config, deployment.repo_full_name)
        if not (rule and rule.environment):
            return
        repo = f"/repos/{deployment.repo_full_name}"
        token = await self.github.token(deployment.repo_full_name, deployment.installation_id)
        github_id = deployment.github_deployment_id
        if github_id is None:
            github_id = (await self.store.run(queries.get, deployment.id)).github_deployment_id
        if github_id is None:
            created = await self.github.api.post(f"{repo}/deployments", oauth_token=token, data={
                "ref": deployment.commit, "environment": environment_name(deployment),
                "auto_merge": False,
                "required_contexts": [], "description": f"SPEED deployment {deployment.id}",
                "transient_environment": deployment.trigger == "pull_request"})
            github_id = created["id"]
            await self.store.run(queries.update, deployment.id, github_deployment_id=github_id)
        status = {"state": report.deployment_state, "log_url": self._page(deployment),
                  "description": report.description}
        if report.deployment_state == "success":
            address = await self.store.run(releases.address_of, deployment.id)
            if address:  # a service: the pull request shows "View deployment"
                status["environment_url"] = self.config.proxy.environment_url(address)
        await self.github.api.post(f"{repo}/deployments/{github_id}/statuses", oauth_token=token,
                                   data=status)

    def deactivate(self, deployments: list[Deployment]) -> None:
        """Mark the GitHub Deployments of a torn-down environment inactive, in the background
        (logged if GitHub refuses)."""
        task = asyncio.create_task(self._deactivate(deployments))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deactivate(self, deployments: list[Deployment]) -> None:
        for deployment in deployments:
            if not (deployment.repo_full_name and deployment.github_deployment_id):
                continue
            try:
                token = await self.github.token(deployment.repo_full_name,
                                                deployment.installation_id)
                await self.github.api.post(
                    f"/repos/{deployment.repo_full_name}/deployments/"
                    f"{deployment.github_deployment_id}/statuses", oauth_token=token,
                    data={"state": "inactive", "log_url": self._page(deployment),
                          "description": "Environment torn down"})
            except GITHUB_FAILURES as e:
                log.warning("could not mark GitHub deployment %s inactive: %s",
                            deployment.github_deployment_id, _describe(e),
                            extra={"deployment": deployment.id})


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def _retry_after(error: Exception) -> float | None:
    headers = getattr(error, "headers", None) or {}
    try:
        return float(headers.get("retry-after") or headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None
