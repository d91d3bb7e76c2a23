"""The worker pool: claims queued deployments in arrival order and reconciles after a restart."""
import asyncio
import contextlib
import dataclasses
import glob
import logging
import os
import shutil

from runner.base import Backend
from runner.errors import EngineUnavailable, RunnerError
from runner.pipeline import Credentials, Pipeline, Run, RunnerSettings
from runner.router import Router
from runner.secrets import SecretSource
from storage import deployments as queries
from storage import releases
from storage.status import Status
from storage.store import Store

log = logging.getLogger(__name__)

ENGINE_RETRY_SECONDS = 2.0


def _remove_workspaces(workdir: str) -> None:
    for leftover in glob.glob(os.path.join(glob.escape(workdir), "deployment-*")):
        shutil.rmtree(leftover, ignore_errors=True)


class Worker:
    """Runs at most max_concurrent deployments at once; the database is the queue."""

    def __init__(self, store: Store, backend: Backend, settings: RunnerSettings,
                 max_concurrent: int, credentials: Credentials | None = None,
                 secrets: SecretSource | None = None, router: Router | None = None):
        # Patient: a full database disk makes the queue and the deployments wait, never fail.
        self.store = store.patient()
        self.backend = backend
        self.pipeline = Pipeline(self.store, backend, settings, credentials, secrets, router)
        self.max_concurrent = max_concurrent
        self.runs: dict[int, Run] = {}
        self._wake = asyncio.Event()

    def redacted(self, deployment_id: int, text: str) -> str:
        """text without the secrets and tokens of a deployment this process runs: what a
        container sends back may hold its environment."""
        run = self.runs.get(deployment_id)
        return run.recorder.redacted(text) if run and run.recorder else text

    def wake(self) -> None:
        """Look at the queue now (called after a deployment was queued)."""
        self._wake.set()

    async def stop(self, deployment_id: int) -> None:
        """Stop a deployment this process is running (its status was already made final)."""
        run = self.runs.get(deployment_id)
        if run is None:
            return
        run.stopped = True
        if run.switching:
            return  # the switch finds the deployment stopped and undoes itself
        if run.container_id:
            try:
                # Killing lets the pipeline drain the container's last output before it finishes.
                await self.backend.kill(run.container_id)
                return
            except RunnerError as e:  # the engine is away: stop following; the sweep removes it
                log.warning("could not kill: %s", e.message, extra={"deployment": deployment_id})
        if run.task:
            run.task.cancel()

    async def serve(self, api_url: str) -> None:
        """Reconcile what an earlier process left, then work the queue; containers get api_url."""
        self.pipeline.settings = dataclasses.replace(self.pipeline.settings, api_url=api_url)
        await self.reconcile()
        while True:
            self._wake.clear()
            while len(self.runs) < self.max_concurrent:
                deployment = await self.store.run(queries.claim_next)
                if deployment is None:
                    break
                self._spawn(deployment.id, lambda run, d=deployment: self.pipeline.deploy(d, run))
            await self._wake.wait()

    async def wait_for_engine(self) -> None:
        """Return once the engine answers, retrying meanwhile."""
        while True:
            try:
                await self.backend.ping()
                return
            except EngineUnavailable as e:
                log.error("%s; retrying in %g s", e.message, ENGINE_RETRY_SECONDS)
                await asyncio.sleep(ENGINE_RETRY_SECONDS)

    def _spawn(self, deployment_id: int, work) -> None:
        run = Run(deployment_id)
        run.task = asyncio.create_task(self._guard(run, work(run)), name=f"deployment-{deployment_id}")
        self.runs[deployment_id] = run

    async def _guard(self, run: Run, work) -> None:
        try:
            await work
        except asyncio.CancelledError:
            if not run.stopped:
                raise
        except Exception:
            log.exception("deployment crashed", extra={"deployment": run.deployment_id})
            with contextlib.suppress(Exception):
                await self.store.change(queries.transition, run.deployment_id, Status.FAILED,
                                        note="[speed] Failed: internal error",
                                        reason="internal error", infrastructure_failure=True)
        finally:
            self.runs.pop(run.deployment_id, None)
            self._wake.set()

    async def reconcile(self) -> None:
        """Finish, reattach or requeue what a previous process left Running; sweep leftovers."""
        # Nothing of this process clones yet: any workspace is a crashed process's half clone.
        await asyncio.to_thread(_remove_workspaces, self.pipeline.settings.workdir)
        reattached = set()
        for deployment in await self.store.run(queries.in_status, Status.RUNNING):
            state = None
            if deployment.container_id:
                state = await self.backend.state(deployment.container_id)
            if deployment.container_id and state is None:
                await self.store.change(queries.transition, deployment.id, Status.FAILED,
                                        note="[speed] Failed: interrupted (the container vanished)",
                                        reason="interrupted: the container vanished",
                                        infrastructure_failure=True)
            elif state is None or state.never_started:
                for container_id in await self.backend.find(self.pipeline.labels(deployment.id)):
                    await self.backend.cleanup(container_id)
                await self.store.change(
                    queries.requeue, deployment.id,
                    "[speed] SPEED restarted before the container started; deploying again")
                log.info("requeued", extra={"deployment": deployment.id})
            else:
                log.info("reattaching", extra={"deployment": deployment.id})
                reattached.add(deployment.container_id)
                self._spawn(deployment.id, lambda run, d=deployment: self.pipeline.reattach(d, run))
        # Live services run on; those draining when SPEED stopped are retired when due.
        await self._sweep(keep=reattached | await self.store.run(releases.running_containers))
        if self.pipeline.retirer:
            await self.pipeline.retirer.resume()

    async def _sweep(self, keep: set[str]) -> None:
        """Remove this instance's containers that no unfinished deployment or running release
        owns any more."""
        for container_id in await self.backend.find(self.pipeline.labels()):
            if container_id not in keep:
                with contextlib.suppress(RunnerError):
                    await self.backend.cleanup(container_id)

    async def close(self) -> None:
        """Stop following deployments; their containers run on for the next start to reattach."""
        tasks = [run.task for run in self.runs.values() if run.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.pipeline.retirer:
            await self.pipeline.retirer.close()
