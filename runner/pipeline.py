"""One deployment from checkout to outcome: clone, build, run, follow, record, clean up."""
import asyncio
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import itertools
import logging
import os
import secrets
import shutil
import tempfile
from typing import Awaitable, Callable

from runner import context, git, scope
from runner import settings as repository_settings
from runner.base import Backend, ContainerState, Limits, LogCursor
from runner.errors import CheckoutFailed, EngineUnavailable, RunFailed, RunnerError, SettingsInvalid
from runner.output import OutputRecorder
from runner.proxy import ProxyError
from runner.router import Router
from runner.secrets import SecretSource, forms
from runner.service import Retirer, service_of, wait_healthy
from runner.settings import Ceiling, Settings
from storage import deployments as queries
from storage import releases, replicas
from storage.releases import SWITCHING, ReleaseState, environment_name
from storage.deployments import IllegalTransition
from storage.models import Deployment, utcnow
from storage.quoting import one_line
from storage.status import Status
from storage.store import Store

log = logging.getLogger(__name__)

# How often a deployment asks whether the engine is back after it went away.
ENGINE_RETRY_SECONDS = 1.0

# A token to clone a deployment's repository with (None: clone anonymously).
Credentials = Callable[[Deployment], Awaitable[str | None]]


@dataclasses.dataclass(frozen=True)
class RunnerSettings:
    """What the pipeline needs to know about this SPEED instance."""

    instance: str
    api_url: str
    limits: Limits
    timeout: float
    workdir: str
    max_log_bytes: int
    keep_images: int
    git_timeout: float
    reuse_images: bool = True
    allowed_urls: tuple[str, ...] = ()  # runner.allowed_urls, checked again at clone time


def _repository(deployment: Deployment) -> str:
    """The repository an environment belongs to: owner/name on GitHub (a pull request from a
    fork previews in its base repository's environment), else host and path."""
    if deployment.repo_full_name:
        return releases.on_github(deployment.repo_full_name)
    try:
        return scope.repository(deployment.url)
    except ValueError:
        return deployment.url


def token_hash(token: str) -> str:
    """The stored form of a deployment token."""
    return hashlib.sha256(token.encode()).hexdigest()


class Run:
    """A deployment this process is carrying out, and how to stop it."""

    def __init__(self, deployment_id: int, claim: int = 0):
        self.deployment_id = deployment_id
        self.claim = claim  # which claim of the deployment it carries out (storage.replicas)
        self.container_id: str | None = None
        self.image: str | None = None  # its image's name, once chosen
        self.built = False  # whether that image exists: built, or an earlier one reused
        self.settings = Settings()  # from the commit's .speed.yml, once read
        self.recorder: OutputRecorder | None = None
        self.deadline: asyncio.Timeout | None = None
        self.stopped = False
        # Set while a healthy release switches: stopping it then is the switch's to decide (the
        # database refuses a deployment no longer Running), never a kill or a cancel midway.
        self.switching = False
        # Set once the run records its outcome (or queues the deployment again): from then on
        # it only cleans up, a stop (a finished status seen elsewhere) leaves it be, and its
        # slot is free for the next deployment.
        self.settled = False
        self.on_settled: Callable[[], None] = lambda: None
        self.task: asyncio.Task | None = None

    def settle(self) -> None:
        """Only clean-up is left to do."""
        self.settled = True
        self.on_settled()


class Pipeline:
    """Carries out deployments on a backend and records everything in the store."""

    def __init__(self, store: Store, backend: Backend, settings: RunnerSettings,
                 credentials: Credentials | None = None, secrets: SecretSource | None = None,
                 router: Router | None = None):
        self.store = store
        self.backend = backend
        self.settings = settings
        self.credentials = credentials
        self.secrets = secrets
        self.router = router  # None: no proxy, so no services
        self.retirer = Retirer(store, backend, router) if router else None

    def labels(self, deployment_id: int | None = None) -> dict[str, str]:
        """The labels on this instance's containers and images (of one deployment, if given)."""
        labels = {"speed.instance": self.settings.instance}
        if deployment_id is not None:
            labels["speed.deployment"] = str(deployment_id)
        return labels

    @property
    def image_repository(self) -> str:
        return f"speed-{self.settings.instance}"

    def _new_image(self, deployment_id: int) -> str:
        """A name for a deployment's image that no other deployment can guess: builds never
        print it, and output that would is redacted."""
        return f"{self.image_repository}:{deployment_id}-{secrets.token_hex(8)}"

    def _recorder(self, deployment: Deployment) -> OutputRecorder:
        # Numbered from what the row says was stored (by an earlier claim, too): a batch the
        # patient store sends again after a lost answer is then stored once.
        batches = itertools.count(deployment.output_batches)

        async def store_output(deployment_id: int, text: str, cursor: LogCursor | None,
                               limit: int | None) -> tuple[int, int]:
            return await self.store.run(queries.append_output, deployment_id, text,
                                        (cursor.at, cursor.seen) if cursor else None, limit,
                                        next(batches))

        return OutputRecorder(deployment.id, store_output, self.settings.max_log_bytes,
                              stored=deployment.log_bytes)

    @property
    def ceiling(self) -> Ceiling:
        """What a repository's settings may not exceed: this server's own limits."""
        limits = self.settings.limits
        return Ceiling(timeout=self.settings.timeout, memory=limits.memory, cpus=limits.cpus)

    def _timeout(self, settings: Settings) -> float:
        return min(settings.timeout or self.settings.timeout, self.settings.timeout)

    def _limits(self, settings: Settings) -> Limits:
        wanted = settings.resources
        return dataclasses.replace(self.settings.limits,
                                   memory=wanted.memory or self.settings.limits.memory,
                                   cpus=wanted.cpus or self.settings.limits.cpus)

    def _remaining(self, deployment: Deployment, timeout: float) -> float:
        started = deployment.started_at or utcnow()
        elapsed = (utcnow() - started) / datetime.timedelta(seconds=1)
        return max(timeout - elapsed, 0.0)

    async def deploy(self, deployment: Deployment, run: Run) -> None:
        """Carry out a freshly claimed deployment."""
        recorder = run.recorder = self._recorder(deployment)
        workspace = None
        try:
            async with self._deadline(deployment, run, recorder):
                try:
                    workspace = self._workspace(deployment.id)
                    commit = await self._prepare(deployment, run, recorder, workspace)
                    shutil.rmtree(workspace, ignore_errors=True)
                    if run.stopped:
                        return
                    if run.settings.service:
                        await self._release(deployment, commit, run, recorder)
                        return
                    await self._start_container(deployment, commit, run, recorder)
                except RunnerError as e:
                    if run.settings.service:
                        raise  # a release starts afresh: nothing of it to wait for
                    if not await self._engine_lost(e):
                        raise
                    await self._engine_back(recorder, e)
                    if not await self._container_started(run):
                        await recorder.close()
                        await self.deploy_again(run, "the engine went away before the "
                                                     "container started")
                        return
                await self._follow(run, recorder, after=None)
        except RunnerError as e:
            await self._fail(run, recorder, e)
        finally:
            if workspace:
                shutil.rmtree(workspace, ignore_errors=True)
            await self._finish_up(deployment.id, run, recorder)

    def _workspace(self, deployment_id: int) -> str:
        """A private directory to clone into."""
        try:
            os.makedirs(self.settings.workdir, mode=0o700, exist_ok=True)
            return tempfile.mkdtemp(prefix=f"deployment-{deployment_id}-", dir=self.settings.workdir)
        except OSError as e:  # a full or read-only disk: the deployment fails saying so
            raise CheckoutFailed(f"could not create a workspace in {self.settings.workdir}: "
                                 f"{e.strerror}") from e

    async def _prepare(self, deployment: Deployment, run: Run, recorder: OutputRecorder,
                       workspace: str) -> str:
        """Clone and build the deployment's commit, or reuse the image built of it before."""
        run.image = self._new_image(deployment.id)
        recorder.redact(run.image)  # an engine's error message may name it
        if deployment.trigger == "rollback":  # needs neither the repository nor its server
            return await self._return_to(deployment, run, recorder)
        token = await self.credentials(deployment) if self.credentials else None
        if token:
            recorder.redact(token)
        url, branch, timeout = deployment.url, deployment.branch, self.settings.git_timeout
        # Checked again now, and git held to what was checked: DNS may have changed its answer.
        addresses = await git.pin(url, self.settings.allowed_urls, timeout)
        commit, source_dir = deployment.commit, os.path.join(workspace, "src")
        early = None
        if commit is None and self.settings.reuse_images:
            # Cloned beside the ls-remote that names the commit: a new commit (the usual case)
            # waits for the longer of the two, not both; a commit built before stops the clone.
            early = asyncio.create_task(git.checkout(url, branch, source_dir, timeout,
                                                     token=token, addresses=addresses))
        try:
            if early is not None:
                commit = await git.resolve(url, branch, timeout, token, addresses=addresses)
            if commit and self.settings.reuse_images and await self._reuse(deployment, run,
                                                                            recorder, commit):
                return commit
            await recorder.say(f"cloning {url} (branch {branch})")
            if early is None:
                commit = await git.checkout(url, branch, source_dir, timeout, commit=commit,
                                            token=token, addresses=addresses)
            else:
                head = await early
                if commit and head != commit:
                    # Pushed to between the two: the commit ls-remote named (the image's name
                    # in the database says it).
                    head = await git.move_to(url, source_dir, commit, timeout, token, addresses)
                commit = head
        finally:
            if early is not None:
                early.cancel()  # kills git if it still runs: the workspace goes after this
                await asyncio.gather(early, return_exceptions=True)
        await recorder.say(f"checked out {commit}")
        # In a thread: a file of 64 KiB can take YAML a while, and the event loop serves all.
        await self._use_settings(deployment, run, await asyncio.to_thread(
            self._read_settings, source_dir))
        await self.store.run(queries.record, deployment.id, commit=commit, cloned_at=utcnow(),
                             settings=run.settings.to_json(), image=run.image)
        await recorder.say("building")
        # No labels: the legacy builder spends a build step (~0.2 s) on each. The database knows
        # which deployment's image holds which commit.
        await self.backend.build(source_dir, run.image, recorder.write,
                                 self._limits(run.settings), run.settings.build)
        run.built = True
        await self.store.run(queries.record, deployment.id, built_at=utcnow(), image=run.image)
        return commit

    async def _reuse(self, deployment: Deployment, run: Run, recorder: OutputRecorder,
                     commit: str) -> bool:
        """Tag the image built of commit before as this deployment's, if one is kept."""
        # Named in the database before it is tagged or built: every replica's pruning spares
        # the images of unfinished deployments, and one pruning between the tag and a later
        # record untagged what this deployment was about to run (three replicas).
        earlier = dict(await self.store.run(queries.name_image, deployment.id, run.image,
                                            deployment.url, commit))
        reused = await self.backend.reuse_image(list(earlier), run.image)
        if not reused:
            return False
        # The settings come with the commit: those of the deployment that built it.
        await self._use_settings(deployment, run, repository_settings.from_json(
            earlier[reused] or Settings().to_json(), self.ceiling))
        run.built, now = True, utcnow()
        await self.store.run(queries.record, deployment.id, commit=commit, cloned_at=now,
                             built_at=now, image=run.image, settings=run.settings.to_json())
        await recorder.say(f"reusing the image already built of {commit}")
        return True

    async def _return_to(self, deployment: Deployment, run: Run,
                         recorder: OutputRecorder) -> str:
        """A rollback: the kept image and settings of an earlier release, no clone, no build."""
        if not await self.backend.reuse_image([deployment.image], run.image):
            raise RunFailed("the release's image is no longer kept")
        await self._use_settings(deployment, run, repository_settings.from_json(
            deployment.settings or Settings().to_json(), self.ceiling))
        run.built, now = True, utcnow()
        await self.store.run(queries.record, deployment.id, cloned_at=now, built_at=now,
                             image=run.image)
        await recorder.say(f"rolling back to the release of {deployment.commit}")
        return deployment.commit

    def _read_settings(self, source_dir: str) -> Settings:
        """The checkout's .speed.yml, checked against this server's limits."""
        return repository_settings.parse(context.read_file(
            source_dir, repository_settings.FILE, repository_settings.MAX_BYTES), self.ceiling)

    async def _use_settings(self, deployment: Deployment, run: Run, settings: Settings) -> None:
        """Take the commit's settings: its secrets must be ones it may have (before anything is
        built), and its timeout counts from now on."""
        if self.secrets is not None:
            await self.secrets.check(deployment, settings.secrets)
        elif settings.secrets:
            raise SettingsInvalid("secrets: this SPEED has no secrets")
        if settings.service and self.router is None:
            raise SettingsInvalid("service: this SPEED has no proxy to serve it")
        run.settings = settings
        if run.deadline is not None:
            run.deadline.reschedule(asyncio.get_running_loop().time() + self._remaining(
                deployment, self._timeout(settings)))

    async def reattach(self, deployment: Deployment, run: Run) -> None:
        """Follow a deployment whose container outlived an earlier SPEED process."""
        recorder = run.recorder = self._recorder(deployment)
        run.container_id = deployment.container_id
        run.settings = self._stored_settings(deployment)
        release = None
        if run.settings.service and self.router:
            release = await self.store.run(releases.of_deployment, deployment.id)
        try:
            if release and release.state == ReleaseState.FAILED.value:
                raise RunFailed("its release failed")
            if release and release.state not in SWITCHING:
                # Live already (or even replaced since): nothing may kill its container now.
                run.container_id = None
                await self._live(run, await self.store.run(
                    releases.environment_of, release.id), recorder)
                return
            async with self._deadline(deployment, run, recorder):
                await self._redact_sealed(deployment, recorder)
                if release:
                    await self._switch(deployment, release, run, recorder)
                    return
                await self._follow(run, recorder, after=LogCursor(
                    deployment.log_cursor, deployment.log_seen) if deployment.log_cursor else None)
        except RunnerError as e:
            await self._fail(run, recorder, e)
        finally:
            await self._finish_up(deployment.id, run, recorder)

    def _stored_settings(self, deployment: Deployment) -> Settings:
        """The settings a deployment started with, under the server's limits of today."""
        try:
            return repository_settings.from_json(deployment.settings, self.ceiling) \
                if deployment.settings else Settings()
        except SettingsInvalid as e:  # the server's limits changed since: they apply
            log.warning("its settings no longer hold (%s); the server's apply", e.message,
                        extra={"deployment": deployment.id})
            # But a service stays one: its release runs as it was started.
            return Settings(service=service_of(deployment.settings))

    async def _engine_lost(self, error: RunnerError) -> bool:
        """Whether error came from the engine going away (a restart, a crash), not the deployment."""
        if isinstance(error, EngineUnavailable):
            return True
        if isinstance(error, CheckoutFailed):
            return False
        try:
            await self.backend.ping()  # a build or run step breaks off when its engine stops
            return False
        except EngineUnavailable:
            return True

    async def _engine_back(self, recorder: OutputRecorder, error: RunnerError) -> None:
        """Wait (within the deployment's timeout) until the engine answers again."""
        log.warning("%s; waiting for the engine", error.message)
        await recorder.say(f"{error.message}; waiting for it to come back")
        while True:
            await asyncio.sleep(ENGINE_RETRY_SECONDS)
            try:
                await self.backend.ping()
                break
            except EngineUnavailable:
                continue
        await recorder.say("the Docker engine answers again")

    async def _container_started(self, run: Run) -> bool:
        if run.container_id is None:
            return False
        state = await self.backend.state(run.container_id)
        return state is not None and not state.never_started

    async def deploy_again(self, run: Run, why: str) -> None:
        """Queue a deployment whose container never started afresh, leaving nothing behind."""
        for container_id in await self.backend.find(self.labels(run.deployment_id)):
            await self.backend.cleanup(container_id)
        run.settle()
        await self.store.change(queries.requeue, run.deployment_id,
                                f"[speed] {why}; deploying again")

    @contextlib.asynccontextmanager
    async def _deadline(self, deployment: Deployment, run: Run, recorder: OutputRecorder):
        """Fail the deployment and kill its container when its timeout runs out (runner.timeout,
        or the lower one its settings name: see _use_settings)."""
        try:
            async with asyncio.timeout(self._remaining(
                    deployment, self._timeout(run.settings))) as run.deadline:
                yield
        except TimeoutError:
            # A replica stopped past its lease (and the deadline) may no longer kill: the
            # container is another replica's now (NotOwner).
            await self.store.run(replicas.check)
            if run.container_id:
                # An engine that is away cannot kill it; the clean-up after the outcome retries.
                with contextlib.suppress(RunnerError):
                    await self.backend.kill(run.container_id)
            await recorder.close()
            await self._finish(run, Status.FAILED,
                               f"timed out after {self._timeout(run.settings):g} s")

    async def _start_container(self, deployment: Deployment, commit: str, run: Run,
                               recorder: OutputRecorder, release: int | None = None) -> None:
        """Create and start the deployment's container (a release's, if given: it serves its
        port and the engine restarts it)."""
        token = secrets.token_urlsafe(32)
        recorder.redact(token)
        # Decrypted now, in the process that makes the container, and redacted before it runs.
        values = await self._secret_values(deployment, run.settings, recorder)
        env = {
            **dict(run.settings.env), **values,
            "SPEED_DEPLOYMENT_ID": str(deployment.id),
            "SPEED_API_URL": self.settings.api_url,
            "SPEED_TOKEN": token,
            "SPEED_REPO_URL": deployment.url,
            "SPEED_BRANCH": deployment.branch,
            "SPEED_COMMIT": commit,
            "SPEED_EVENT": deployment.trigger,
        }
        if deployment.pull_request is not None:
            env["SPEED_PULL_REQUEST"] = str(deployment.pull_request)
        if release is not None:  # where it serves: pr-7 for a preview, never production
            env["SPEED_ENVIRONMENT"] = environment_name(deployment)
        elif deployment.environment:
            env["SPEED_ENVIRONMENT"] = deployment.environment
        name = f"speed-{self.settings.instance}-{deployment.id}"
        labels, port = self.labels(deployment.id), None
        if release is not None:
            labels["speed.release"] = str(release)
            port = run.settings.service.port
        # A container left by a crash before its id was stored is removed by reconcile, before
        # the requeue: nothing to look for on this path. A run that lost the deployment to
        # another replica makes none (NotOwner).
        await self.store.run(replicas.check)
        run.container_id = await self.backend.create(
            name, run.image, env, labels, self._limits(run.settings), port,
            # Never the port of another release: its route may outlive its container.
            avoid=await self.store.run(releases.upstream_ports) if port else frozenset())
        if release is not None:
            await self.store.run(releases.record, release, container_id=run.container_id,
                                 upstream=await self.backend.address(run.container_id, port))
        # The id is stored before the container starts: after a crash, a stored id means the
        # container may have run, so it is reattached, never started twice.
        await self.store.run(queries.record, deployment.id, container_id=run.container_id,
                             token_hash=token_hash(token),
                             secrets_sealed=self.secrets.seal(list(values.values()))
                             if values else None)
        if run.stopped:
            return
        await recorder.say("starting the container")
        await self.backend.start(run.container_id)
        await self.store.change(queries.update, deployment.id, container_started_at=utcnow())

    async def _release(self, deployment: Deployment, commit: str, run: Run,
                       recorder: OutputRecorder) -> None:
        """A service: start a release beside the live one, then switch to it once healthy."""
        try:
            environment = await self.store.run(
                releases.environment_for, _repository(deployment), environment_name(deployment))
        except releases.ReleaseRefused as e:
            raise RunFailed(str(e)) from None
        release = await self.store.run(releases.start, deployment.id, environment.id, run.image)
        await recorder.say(f"releasing to {environment.name} "
                           f"({self.router.url(environment.address)})")
        await self._start_container(deployment, commit, run, recorder, release=release.id)
        await self._switch(deployment, await self.store.run(releases.get, release.id), run,
                           recorder)

    async def _switch(self, deployment: Deployment, release, run: Run,
                      recorder: OutputRecorder) -> None:
        """Take a started release on: healthy → live (routed) → the deployment Succeeded; the
        one it replaces drains."""
        service = run.settings.service
        run.container_id = release.container_id
        output = asyncio.create_task(self._record_logs(release.container_id, recorder, None, True))
        try:
            await recorder.say(f"waiting for GET {service.health.path} to answer 2xx "
                               f"{service.health.passes} times in a row")
            await wait_healthy(self.backend, release.container_id, release.upstream,
                               service.health, lambda: run.stopped)
        finally:
            output.cancel()
            with contextlib.suppress(asyncio.CancelledError, RunnerError):
                await output
        if run.stopped:
            return
        # From here the switch completes or is undone, whole: no deadline cuts it, no cancel
        # kills the container (a timeout or a cancel that comes meanwhile is refused by go_live,
        # since the deployment is then no longer Running).
        if run.deadline is not None:
            run.deadline.reschedule(None)
        run.switching, container = True, run.container_id
        run.container_id = None
        try:
            await self.store.run(releases.move, release.id, ReleaseState.HEALTHY)
            environment = await self.store.run(releases.environment_of, release.id)
            _, old = await self.router.switch(release.id, environment.address, release.upstream,
                                              service.drain)
        except (ProxyError, releases.ReleaseRefused) as e:
            run.container_id = container  # not live: _finish_up removes it
            if isinstance(e, ProxyError):
                raise RunFailed(f"the proxy did not take the route: {e.message}") from None
            raise RunFailed(str(e)) from None  # cancelled meanwhile, torn down, or overtaken
        if old is not None:
            self.retirer.schedule(old, service.keep)
        await self._live(run, environment, recorder)

    async def _live(self, run: Run, environment, recorder: OutputRecorder) -> None:
        """Record the outcome of a deployment whose release went live in environment."""
        url = self.router.url(environment.address)
        await recorder.say(f"live at {url}")
        await recorder.close()
        await self._finish(run, Status.SUCCEEDED, f"live at {url}")

    async def _secret_values(self, deployment: Deployment, settings: Settings,
                             recorder: OutputRecorder) -> dict[str, str]:
        """The values of the secrets the settings name, each of their forms redacted."""
        if not settings.secrets or self.secrets is None:
            return {}
        values = await self.secrets.values(deployment, settings.secrets)
        await self._redact(recorder, list(values.values()))
        return values

    @staticmethod
    async def _redact(recorder: OutputRecorder, values: list[str]) -> None:
        """Redact every form of the values; the pattern of thousands of forms is compiled in a
        thread, not on the event loop."""
        for value in values:
            for form in forms(value):
                recorder.redact(form)
        await asyncio.to_thread(recorder.matcher)

    async def _redact_sealed(self, deployment: Deployment, recorder: OutputRecorder) -> None:
        """After a restart, redact the values its container got, as they were then: whatever
        became of the secrets or the server's limits since. A deployment whose values can no
        longer be read is stopped rather than have its output stored unredacted."""
        if not deployment.secrets_sealed or self.secrets is None:
            return
        try:
            values = self.secrets.unseal(deployment.secrets_sealed)
        except SettingsInvalid as e:
            raise SettingsInvalid(f"stopped after a restart: its secrets cannot be read to "
                                  f"redact its output ({e.message})") from None
        await self._redact(recorder, values)

    async def _follow(self, run: Run, recorder: OutputRecorder,
                      after: LogCursor | None) -> None:
        """Record the container's output and its exit; the engine going away only pauses this."""
        assert run.container_id
        while True:
            try:
                state = await self.backend.state(run.container_id)
                if state is None:
                    await recorder.close()
                    await self._finish(run, Status.FAILED,
                                       "interrupted: the container vanished",
                                       infrastructure_failure=True)
                    return
                if state.never_started:
                    break
                after = await self._record_logs(run.container_id, recorder, after, True)
                if not recorder.full:
                    now = await self.backend.state(run.container_id)
                    if now is None or not now.exited:
                        continue  # the stream ended, not the container: the engine restarted
                    # A followed stream can end before the last lines of a container that has
                    # just exited (seen with Docker 20.10): read on to the end once more.
                    after = await self._record_logs(run.container_id, recorder, after, False)
                    if now.exit_code is not None:  # ended for good: nothing to wait for
                        state = now
                        break
                state = await self.backend.wait(run.container_id)
                break
            except EngineUnavailable as e:
                await self._engine_back(recorder, e)
        await recorder.close()
        await self._record_exit(run, state)

    async def _record_logs(self, container_id: str, recorder: OutputRecorder,
                           after: LogCursor | None, follow: bool) -> LogCursor | None:
        """Record the container's output after the cursor; return where it got to."""
        async with contextlib.aclosing(self.backend.logs(container_id, after, follow)) as logs:
            async for at, text in logs:
                after = after.after(at) if after else LogCursor(at)
                await recorder.write(text, after)
                if recorder.full:
                    break  # the rest would be dropped: stop reading, wait for the exit
        return after

    async def _record_exit(self, run: Run, state: ContainerState) -> None:
        if state.exit_code == 0:
            await self._finish(run, Status.SUCCEEDED, "exit code 0", exit_code=0)
            return
        reason = f"exit code {state.exit_code}"
        if state.oom_killed:
            reason = f"out of memory ({reason})"
        await self._finish(run, Status.FAILED, reason, exit_code=state.exit_code)

    async def _fail(self, run: Run, recorder: OutputRecorder, error: RunnerError) -> None:
        log.warning("deployment failed: %s", one_line(recorder.redacted(error.message)),
                    extra={"deployment": run.deployment_id})
        if error.log:
            await recorder.write(error.log if error.log.endswith("\n") else error.log + "\n")
        await recorder.close()
        reason = recorder.redacted(error.message)
        if "no space left on device" in error.log.lower() and "no space" not in reason.lower():
            reason += ": no space left on device"  # e.g. git says why only in its output
        await self._finish(run, Status.FAILED, reason,
                           infrastructure_failure=isinstance(error, EngineUnavailable))

    async def _finish(self, run: Run, status: Status, reason: str, **fields) -> None:
        """Record the outcome, unless someone (cancel, /update) finished the deployment first."""
        run.settle()
        deployment_id = run.deployment_id
        try:
            await self.store.change(queries.transition, deployment_id, status,
                                    note=f"[speed] {status.value}: {reason}", reason=reason, **fields)
        except IllegalTransition:
            log.info("deployment already finished; outcome %s not recorded", status.value,
                     extra={"deployment": deployment_id})

    async def _finish_up(self, deployment_id: int, run: Run, recorder: OutputRecorder) -> None:
        """Store what output is left; remove the container and surplus images once finished."""
        with contextlib.suppress(Exception):
            await recorder.close()
        if not await self.store.run(queries.finished, deployment_id):
            return  # interrupted by shutdown: the next start reattaches or requeues it
        try:
            if run.container_id:
                await self.backend.cleanup(run.container_id)
            if run.image and not run.built:
                # A build stopped at its very end may have tagged its image after all.
                await self.backend.cleanup(image=run.image)
            # Images any replica's unfinished deployment or kept release names (as image ids,
            # not rows: listing a long queue as whole rows held the database thread for tens
            # of milliseconds); asked only when an image is to go.
            await self.backend.prune_images(self.image_repository, self.settings.keep_images,
                                            functools.partial(self.store.run, releases.images_in_use))
        except RunnerError as e:
            log.warning("cleanup failed: %s", e.message, extra={"deployment": deployment_id})
