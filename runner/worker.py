"""The worker pool: one replica's share of the queue, its lease, and the adoption of what a
replica that went silent (or this one's earlier process) left running."""
import asyncio
import contextlib
import contextvars
import dataclasses
import glob
import logging
import os
import shutil

from runner.base import Backend
from runner.errors import EngineUnavailable, RunnerError
from runner.pipeline import Credentials, Pipeline, Run, RunnerSettings
from runner.replica import Identity, process_alive
from runner.router import Router
from runner.secrets import SecretSource
from storage import deployments as queries
from storage import releases, replicas
from storage.errors import NotOwner
from storage.status import Status
from storage.store import Store

log = logging.getLogger(__name__)

ENGINE_RETRY_SECONDS = 2.0
# A replica renews its lease, adopts orphans, looks for cancels made elsewhere and for queued
# work at most this often (and three times per lease at least).
BEAT_SECONDS = 1.0
# How long a shutdown waits for runs that recorded their outcome to remove their container:
# no later start may come to sweep it (one that refuses to start, or none at all).
CLEAN_UP_SECONDS = 5.0


def _remove_workspaces(workdir: str, present: set[str]) -> None:
    """Remove the clones of replicas that are gone (and those of releases before replicas)."""
    pattern = os.path.join(glob.escape(workdir), "{}")
    for leftover in glob.glob(pattern.format("deployment-*")):
        shutil.rmtree(leftover, ignore_errors=True)
    for folder in glob.glob(pattern.format("replica-*")):
        if os.path.basename(folder).removeprefix("replica-") not in present:
            shutil.rmtree(folder, ignore_errors=True)


class Worker:
    """Runs at most max_concurrent deployments at once; the database is the queue."""

    def __init__(self, store: Store, backend: Backend, settings: RunnerSettings,
                 max_concurrent: int, credentials: Credentials | None = None,
                 secrets: SecretSource | None = None, router: Router | None = None,
                 lease: float = 30.0, identity: Identity | None = None):
        # Patient: a full database disk makes the queue and the deployments wait, never fail.
        self.store = store.patient()
        self.backend = backend
        self.identity = identity or Identity()
        self.lease = lease
        self.workdir = settings.workdir
        # Each replica clones into a folder of its own: a replica starting beside it on the
        # same machine removes only the folders of replicas that are gone.
        settings = dataclasses.replace(settings, workdir=os.path.join(
            settings.workdir, f"replica-{self.identity.id}"))
        self.pipeline = Pipeline(self.store, backend, settings, credentials, secrets, router)
        self.max_concurrent = max_concurrent
        self.runs: dict[int, Run] = {}
        self._wake = asyncio.Event()
        self._joined = False
        self._stopping: set[asyncio.Task] = set()
        # Held while a claim or an adoption becomes a run, so that neither takes a deployment
        # the other has claimed and not yet started to carry out.
        self._taking = asyncio.Lock()

    async def redacted(self, deployment_id: int, text: str) -> str:
        """text without any secret's value, nor the tokens of a deployment this process runs:
        what a container sends back may hold its environment, and any deployment's text may
        come in (one queued, finished, or run by another replica)."""
        run = self.runs.get(deployment_id)
        if run and run.recorder:
            text = run.recorder.redacted(text)
        if self.pipeline.secrets is not None:
            text = await self.pipeline.secrets.redacted(deployment_id, text)
        return text

    def wake(self) -> None:
        """Look at the queue now (called after a deployment was queued)."""
        self._wake.set()

    @property
    def replica(self) -> str:
        return self.identity.id

    async def stop(self, deployment_id: int) -> None:
        """Stop a deployment this process is running (its status was already made final)."""
        run = self.runs.get(deployment_id)
        if run is None or run.stopped or run.settled:
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

    def heard(self, deployment_id: int, status: Status) -> None:
        """Another replica (or this one) queued or finished a deployment: claim now, or stop
        its container now if this replica runs it, rather than at the next heartbeat."""
        if status == Status.PENDING:
            self._wake.set()
        elif status.finished and deployment_id in self.runs:
            task = asyncio.create_task(self.stop(deployment_id))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def _let_go(self, deployment_id: int) -> None:
        """Stop following a deployment another replica adopted: its container is theirs now."""
        run = self.runs.get(deployment_id)
        if run is not None and not run.stopped and not run.settled:
            log.warning("another replica carries it on now (this replica's lease ran out)",
                        extra={"deployment": deployment_id})
            run.stopped = True
            if run.task:
                run.task.cancel()

    async def serve(self, api_url: str) -> None:
        """Join the replicas, adopt what was left running, then work the queue while keeping
        the lease; containers get api_url."""
        self.pipeline.settings = dataclasses.replace(self.pipeline.settings, api_url=api_url)
        await self._join()
        self._joined = True
        await self.reconcile()
        beating = asyncio.create_task(self._beat(), name="speed-lease")
        try:
            while True:
                self._wake.clear()
                # A run that recorded its outcome only cleans up: its slot is free.
                while sum(not run.settled for run in self.runs.values()) < self.max_concurrent:
                    async with self._taking:
                        deployment = await self.store.run(queries.claim_next, self.replica)
                        if deployment is None:
                            break
                        self._spawn(deployment,
                                    lambda run, d=deployment: self.pipeline.deploy(d, run))
                await self._wake.wait()
        finally:
            beating.cancel()

    async def _beat(self) -> None:
        """Renew the lease; stop what was finished elsewhere or taken over; adopt what silent
        replicas left; now and then sweep the engine; look at the queue (work queued on
        another replica)."""
        interval = min(BEAT_SECONDS, self.lease / 3)
        loop = asyncio.get_running_loop()
        adopt_from = sweep_at = loop.time() + self.lease
        # A gap between this replica's renewals past which the others' leases may have run
        # out too: theirs are at most two beats apart from its own.
        gap_allowed = max(2 * interval, self.lease - 2 * interval)
        renewed_at = loop.time()
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.store.run(replicas.beat, self.replica):
                    log.warning("this replica was forgotten (silent for a day?); joining again")
                    await self._join()
                if loop.time() - renewed_at > gap_allowed:
                    # Renewals came late (the database away: the patient store waits for it;
                    # or this process frozen): the others' may have too, and run out. Give them
                    # a lease to renew before adopting. (Only a gap this long: a beat slower
                    # than a second put off adoption by a whole lease, even with 30 s leases.)
                    adopt_from = loop.time() + self.lease
                renewed_at = loop.time()
                # Let go before adopting: a run of an earlier claim must not go on beside
                # the new one.
                claims = {i: run.claim for i, run in self.runs.items()}
                for deployment_id, finished in await self.store.run(
                        replicas.not_carried, self.replica, claims):
                    if finished:
                        await self.stop(deployment_id)
                    else:
                        self._let_go(deployment_id)
                await self._forget_dead_here()
                if loop.time() >= adopt_from:
                    await self.adopt()
                if loop.time() >= sweep_at:
                    # Containers of deployments finished while their owner was away (a cancel
                    # sent to another replica) are removed here, within a lease or so.
                    sweep_at = loop.time() + self.lease
                    await self._sweep()
            except Exception:  # the database or the engine away: the next beat tries again
                log.exception("lease renewal failed")
            self._wake.set()

    async def wait_for_engine(self) -> None:
        """Return once the engine answers, retrying meanwhile."""
        while True:
            try:
                await self.backend.ping()
                return
            except EngineUnavailable as e:
                log.error("%s; retrying in %g s", e.message, ENGINE_RETRY_SECONDS)
                await asyncio.sleep(ENGINE_RETRY_SECONDS)

    def _spawn(self, deployment, work) -> None:
        deployment_id = deployment.id
        run = Run(deployment_id, deployment.claim)
        run.on_settled = self._wake.set
        # Every query of the run is fenced: once another replica adopted it (or this one
        # claimed it again), nothing is written.
        context = contextvars.copy_context()
        context.run(replicas.acting.set, (self.replica, deployment_id, run.claim))
        run.task = asyncio.create_task(self._guard(run, work(run)), context=context,
                                       name=f"deployment-{deployment_id}")
        self.runs[deployment_id] = run

    async def _guard(self, run: Run, work) -> None:
        try:
            await work
        except asyncio.CancelledError:
            if not run.stopped:
                raise
        except NotOwner:
            log.warning("stopped following: another replica carries it on now",
                        extra={"deployment": run.deployment_id})
        except Exception:
            log.exception("deployment crashed", extra={"deployment": run.deployment_id})
            with contextlib.suppress(Exception):
                await self.store.change(queries.transition, run.deployment_id, Status.FAILED,
                                        note="[speed] Failed: internal error",
                                        reason="internal error", infrastructure_failure=True)
        finally:
            # A deployment queued again may be claimed again while this run cleans up.
            if self.runs.get(run.deployment_id) is run:
                del self.runs[run.deployment_id]
            self._wake.set()

    async def _join(self) -> None:
        await self.store.run(replicas.join, self.replica, self.identity.machine, self.identity.pid,
                             self.max_concurrent)

    async def reconcile(self) -> None:
        """Adopt what replicas that are gone (an earlier process of this one) left Running;
        remove their leftovers."""
        await self._forget_dead_here()
        # Only the clones of replicas known to be gone: one whose lease merely ran out (the
        # database was away) may be cloning still.
        present = await self.store.run(replicas.present)
        await asyncio.to_thread(_remove_workspaces, self.workdir, present)
        await self.adopt()
        await self._sweep()
        # Live services run on; those draining when SPEED stopped are retired when due.
        if self.pipeline.retirer:
            await self.pipeline.retirer.resume()

    async def _forget_dead_here(self) -> None:
        """End the leases of replicas on this machine whose process is gone (a SPEED restarted
        after a crash): what they ran is adopted now, not once their lease runs out."""
        dead = [replica for replica, pid in await self.store.run(
                    replicas.on_host, self.identity.machine, self.lease)
                if replica != self.replica and not process_alive(pid)]
        await self.store.run(replicas.leave, *dead)

    async def adopt(self) -> None:
        """Take over the deployments of replicas whose lease ran out: each is reattached to its
        container, queued again if its container never started, or failed if it vanished."""
        async with self._taking:  # never between a claim and its run: that one is carried
            for deployment in await self.store.run(replicas.adopt, self.replica, self.lease,
                                                   list(self.runs)):
                log.info("adopted", extra={"deployment": deployment.id})
                self._spawn(deployment, lambda run, d=deployment: self._carry_on(d, run))

    async def _carry_on(self, deployment, run: Run) -> None:
        """Go on with an adopted deployment from where its container is."""
        state = None
        while deployment.container_id:
            try:
                state = await self.backend.state(deployment.container_id)
                break
            except EngineUnavailable:  # not "vanished": wait for the engine to tell
                await self.wait_for_engine()
        if deployment.container_id and state is None:
            await self.store.change(queries.transition, deployment.id, Status.FAILED,
                                    note="[speed] Failed: interrupted (the container vanished)",
                                    reason="interrupted: the container vanished",
                                    infrastructure_failure=True)
        elif state is None or state.never_started:
            await self.pipeline.deploy_again(run, "SPEED restarted before the container started")
            log.info("requeued", extra={"deployment": deployment.id})
        else:
            log.info("reattaching", extra={"deployment": deployment.id})
            await self.pipeline.reattach(deployment, run)

    async def _sweep(self) -> None:
        """Remove this instance's containers that no unfinished deployment or running release
        owns any more."""
        # Containers first, then the database: a container made after the listing is not
        # looked at, and one listed belongs to a deployment the database already shows Running.
        found = await self.backend.find(self.pipeline.labels())
        owners = {container_id: _deployment_of(labels) for container_id, labels in found.items()}
        unfinished = await self.store.run(queries.unfinished_among,
                                          {d for d in owners.values() if d is not None})
        serving = await self.store.run(releases.running_containers)
        for container_id, deployment_id in owners.items():
            if container_id not in serving and deployment_id not in unfinished:
                with contextlib.suppress(RunnerError):
                    await self.backend.cleanup(container_id)

    async def close(self) -> None:
        """Stop following deployments and give up the lease: their containers run on, for
        another replica (or the next start) to adopt at once. Runs that recorded their outcome
        finish removing their container first (bounded: a supervisor's stop grace is short)."""
        cleaning = [run.task for run in self.runs.values() if run.task and run.settled]
        following = [run.task for run in self.runs.values() if run.task and not run.settled]
        for task in following:
            task.cancel()
        await asyncio.gather(*following, return_exceptions=True)
        if self.pipeline.retirer:
            await self.pipeline.retirer.close()
        if self._joined:  # before the wait: what was let go is adopted meanwhile
            with contextlib.suppress(Exception):
                await self.store.run(replicas.leave, self.replica)
        if cleaning:
            await asyncio.wait(cleaning, timeout=CLEAN_UP_SECONDS)
        for task in cleaning:
            task.cancel()
        await asyncio.gather(*cleaning, return_exceptions=True)


def _deployment_of(labels: dict[str, str]) -> int | None:
    """The deployment a container's labels name, if any."""
    value = labels.get("speed.deployment", "")
    return int(value) if value.isdigit() else None
