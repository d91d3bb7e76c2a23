"""The cluster backend: deployments as Docker Swarm services, images through a registry."""
import asyncio
import contextlib
import dataclasses
import random
from typing import AsyncIterator, Mapping

import docker
from docker.errors import NotFound
from docker.types import (ContainerSpec, DriverConfig, EndpointSpec, Placement, Resources,
                          RestartPolicy, ServiceMode, TaskTemplate)
from docker.types.daemon import CancellableStream
from docker.utils import parse_bytes

from runner.base import KILLED, Backend, ContainerState, Limits, LogCursor, OutputSink, Spared
from runner.docker_backend import (DROPPED_CAPABILITIES, RUN_NETWORK, DockerBackend,
                                   _engine_errors, _iterate, _whole, pieces_after)
from runner.errors import BuildFailed, EngineUnavailable, RunFailed
from runner.settings import Build

# Fewer restarts than the engine's default task history (5 tasks per slot): every failed run
# of a release stays visible, so its restarts and its last exit can be counted.
RESTARTS = 3
# Host ports SPEED gives releases: the same port must be free on whichever node gets the task,
# so they come from a range no engine hands out on its own (Linux's ephemeral range is higher).
PORTS = range(20000, 30000)
POLL_SECONDS = 0.25
# Task states after which a task never runs again (before them: new ... starting, running).
_ENDED = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}
# On a service SPEED stopped: its end is a kill, not the app's (nor the kernel's OOM killer).
KILLED_LABEL = "speed.killed"
STOP_SECONDS = 30  # how long clean-up waits for a stopped task's container to end


def _pullable(registry: str, tag: str) -> str:
    """The name under which every node pulls tag from the registry."""
    return tag if tag.startswith(registry + "/") else f"{registry}/{tag}"


def _newest_first(tasks: list[dict]) -> list[dict]:
    return sorted(tasks, key=lambda task: task["CreatedAt"], reverse=True)


def _wanted(mode: dict) -> int:
    """How many tasks a service's mode asks for: 0 until started."""
    if "ReplicatedJob" in mode:
        return mode["ReplicatedJob"].get("TotalCompletions") or 0
    return mode["Replicated"].get("Replicas") or 0


def _scaled(mode: dict, count: int) -> dict:
    """A service's mode asking for count tasks. For a job, a new mode is a new iteration: the
    swarm shuts the tasks of the last one down."""
    if "ReplicatedJob" in mode:
        return {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": count}}
    return {"Replicated": {"Replicas": count}}


def _exit_code(task: dict) -> int | None:
    container = task["Status"].get("ContainerStatus") or {}
    return container.get("ExitCode") if container.get("ContainerID") else None


@dataclasses.dataclass(frozen=True)
class TaskEnded(ContainerState):
    """How a service's last task ended, with the swarm's words for why."""

    reason: str = ""


def _satisfies(node: dict, constraint: str) -> bool:
    """Whether node meets a placement constraint of the kinds SPEED checks itself (node.id,
    node.role, node.labels.*, with == or !=); the swarm checks any other kind."""
    key, equal, value = constraint.partition("==")
    if not equal:
        key, _, value = constraint.partition("!=")
    key, value = key.strip(), value.strip()
    if key == "node.id":
        actual = node["ID"]
    elif key == "node.role":
        actual = node["Spec"].get("Role")
    elif key.startswith("node.labels."):
        actual = (node["Spec"].get("Labels") or {}).get(key.removeprefix("node.labels."))
    else:
        return True
    return (actual == value) == bool(equal)


class SwarmBackend(Backend):
    """Runs deployments as services of the swarm whose manager answers at manager; builds on
    the local engine (the builder) and pushes each image to registry, from where nodes pull it.

    A job (no port) is a replicated-job service that is never retried; a release (a port) is a
    replicated service of one task, pinned to a node SPEED picks at create, its port published
    in host mode on that node: the address is known before the task exists and stays right
    across the task's restarts (the routing mesh needs IPVS, which not every kernel has)."""

    def __init__(self, manager: str, registry: str, *, callback_host: str | None = None,
                 builder: DockerBackend | None = None, constraints: tuple[str, ...] = (),
                 network: str = RUN_NETWORK):
        self._manager = manager
        # Swarm placement constraints for every task (e.g. node.role==worker).
        self._constraints = tuple(constraints)
        # A swarm-scoped bridge with inter-container traffic off on every node, made by the
        # operator (each node needs a config-only network first: scripts/ensure-swarm.sh shows
        # how); SPEED cannot make it, reaching only the manager. On the nodes' default bridge,
        # one deployment's container could reach another's.
        self._network = network
        self._registry = registry
        self._callback_host = callback_host
        # The local engine builds: its hardened build (limited steps on a network of their own,
        # the cache kept warm) is reused whole, and a manager is kept for running the swarm.
        self._builder = builder or DockerBackend()
        self._client: docker.DockerClient | None = None

    async def _api(self) -> docker.APIClient:
        if self._client is None:
            with _engine_errors(EngineUnavailable, "connect to the swarm manager"):
                self._client = await asyncio.to_thread(
                    docker.DockerClient, base_url=self._manager, version="1.41")
        return self._client.api

    async def ping(self) -> None:
        api = await self._api()
        with _engine_errors(EngineUnavailable, "ping the swarm manager"):
            await asyncio.to_thread(api.ping)
        await self._builder.ping()

    async def callback_host(self) -> str:
        if self._callback_host:
            return self._callback_host
        # Beside the manager by default: every node reaches the address it advertises.
        api = await self._api()
        with _engine_errors(EngineUnavailable, "swarm info"):
            info = await asyncio.to_thread(api.info)
        address = (info.get("Swarm") or {}).get("NodeAddr")
        if not address:
            raise EngineUnavailable("the swarm manager advertises no address; set "
                                    "runner.callback_host")
        return address

    def pullable(self, tag: str) -> str:
        """The registry's name for a deployment's image tag."""
        return _pullable(self._registry, tag)

    async def build(self, source: str, tag: str, output: OutputSink, limits: Limits,
                    options: Build = Build()) -> str:
        image_id = await self._builder.build(source, tag, output, limits, options)
        await self._push(tag, BuildFailed)
        return image_id

    async def reuse_image(self, candidates: list[str], tag: str) -> str | None:
        reused = await self._builder.reuse_image(candidates, tag)
        if reused is not None:
            await self._push(tag, RunFailed)  # the layers are there already: a quick push
        return reused

    async def _push(self, tag: str, kind: type[RunFailed] | type[BuildFailed]) -> None:
        """Tag the local image under the registry's name and push it there."""
        api = await self._builder._api()
        repository, _, name = self.pullable(tag).rpartition(":")
        with _engine_errors(kind, "push image"):
            await asyncio.to_thread(api.tag, tag, repository, name)
            stream = await asyncio.to_thread(api.push, repository, name, stream=True, decode=True)
            async with contextlib.aclosing(_iterate(stream)) as chunks:
                async for chunk in chunks:
                    if "error" in chunk:
                        raise kind(f"push to {self._registry} failed: {chunk['error'].strip()}")

    async def create(self, name: str, image: str, env: Mapping[str, str],
                     labels: Mapping[str, str], limits: Limits, port: int | None = None,
                     avoid: frozenset[int] = frozenset()) -> str:
        api = await self._api()
        resources = Resources(mem_limit=parse_bytes(limits.memory),
                              cpu_limit=_whole(limits.cpus * 1e9, "cpus"))
        resources["Limits"]["Pids"] = limits.pids  # API 1.41; the SDK has no argument for it
        container = ContainerSpec(
            self.pullable(image), env=dict(env), labels=dict(labels),
            cap_drop=list(DROPPED_CAPABILITIES),
            # Killed at once when stopped (no grace period), as the docker backend kills.
            stop_grace_period=0)
        # json-file: the service logs API reads no other; bounded as the docker backend's.
        log = DriverConfig("json-file", {"max-size": "20m", "max-file": "2"})
        if port is None:
            # Created with nothing to run: start asks for one completion.
            task = TaskTemplate(container, resources=resources, log_driver=log,
                                networks=[self._network],
                                placement=Placement(constraints=list(self._constraints)),
                                restart_policy=RestartPolicy("none"))
            mode, endpoint = ServiceMode("replicated-job", replicas=0, concurrency=1), None
        else:
            node, published = await self._place(api, avoid)
            task = TaskTemplate(container, resources=resources, log_driver=log,
                                networks=[self._network],
                                placement=Placement(
                                    constraints=[f"node.id=={node}", *self._constraints]),
                                restart_policy=RestartPolicy("on-failure", delay=0,
                                                             max_attempts=RESTARTS))
            mode = ServiceMode("replicated", replicas=0)
            endpoint = EndpointSpec(ports={published: (port, "tcp", "host")})
        with _engine_errors(RunFailed, "create service"):
            created = await asyncio.to_thread(
                api.create_service, task, name=name, labels=dict(labels), mode=mode,
                endpoint_spec=endpoint)
        return created["ID"]

    async def _place(self, api: docker.APIClient, avoid: frozenset[int]) -> tuple[str, int]:
        """A ready, active node with the fewest releases of SPEED's, and a host port no
        service publishes and not in avoid."""
        with _engine_errors(RunFailed, "list nodes"):
            nodes = await asyncio.to_thread(api.nodes)
            services = await asyncio.to_thread(api.services)
        ready = [node["ID"] for node in nodes if node["Status"]["State"] == "ready"
                 and node["Spec"].get("Availability") == "active"
                 and all(_satisfies(node, c) for c in self._constraints)]
        if not ready:
            raise RunFailed("no swarm node is ready and active")
        load = dict.fromkeys(ready, 0)
        taken = set(avoid)
        for service in services:
            spec = service["Spec"]
            for binding in (spec.get("EndpointSpec") or {}).get("Ports") or []:
                taken.add(binding.get("PublishedPort"))
            for constraint in (spec["TaskTemplate"].get("Placement") or {}).get("Constraints") or []:
                node = constraint.removeprefix("node.id==")
                if node in load:
                    load[node] += 1
        fewest = min(load.values())
        node = random.choice([n for n, count in load.items() if count == fewest])
        free = [p for p in PORTS if p not in taken]
        if not free:
            raise RunFailed("no host port left for a release")
        return node, random.choice(free)

    async def _service(self, api: docker.APIClient, service_id: str) -> dict | None:
        try:
            with _engine_errors(RunFailed, "inspect service"):
                return await asyncio.to_thread(api.inspect_service, service_id)
        except RunFailed as e:
            if isinstance(e.__cause__, NotFound):
                return None
            raise

    async def _tasks(self, api: docker.APIClient, service_id: str) -> list[dict]:
        with _engine_errors(RunFailed, "list tasks"):
            return _newest_first(await asyncio.to_thread(
                api.tasks, filters={"service": service_id}))

    async def address(self, container_id: str, port: int) -> str | None:
        api = await self._api()
        service = await self._service(api, container_id)
        if service is None:
            return None
        bound = [b for b in (service["Spec"].get("EndpointSpec") or {}).get("Ports") or []
                 if b.get("TargetPort") == port]
        constraints = (service["Spec"]["TaskTemplate"].get("Placement") or {}).get("Constraints")
        if not bound or not constraints:
            return None
        node = constraints[0].removeprefix("node.id==")
        with _engine_errors(RunFailed, "inspect node"):
            info = await asyncio.to_thread(api.inspect_node, node)
        return f"{info['Status']['Addr']}:{bound[0]['PublishedPort']}"

    async def node(self, container_id: str) -> str | None:
        """The id of the node that runs (or ran) the service's newest task."""
        tasks = await self._tasks(await self._api(), container_id)
        return tasks[0].get("NodeID") if tasks else None

    async def start(self, container_id: str) -> None:
        def run_one(spec: dict) -> bool:
            # Started already (or killed): updating a job's service again would run it again.
            if _wanted(spec["Mode"]) or KILLED_LABEL in (spec.get("Labels") or {}):
                return False
            spec["Mode"] = _scaled(spec["Mode"], 1)
            return True

        if not await self._update(container_id, run_one, "start service"):
            raise RunFailed("start service failed: the service vanished")

    async def _update(self, container_id: str, change, action: str) -> bool:
        """Apply change (which edits a service's spec and says whether to send it) to the
        service; False if the service does not exist."""
        api = await self._api()
        for _ in range(5):  # a concurrent change of the service (the engine's own) moves its version
            service = await self._service(api, container_id)
            if service is None:
                return False
            spec = service["Spec"]
            if not change(spec):
                return True
            try:
                with _engine_errors(RunFailed, action):
                    response = await asyncio.to_thread(
                        api._post_json, api._url("/services/{0}/update", container_id),
                        data=spec, params={"version": service["Version"]["Index"]})
                    api._raise_for_status(response)
                return True
            except RunFailed as e:
                if isinstance(e.__cause__, NotFound):
                    return False
                if "update out of sequence" not in e.message:
                    raise
        raise RunFailed(f"{action} failed: the service kept changing meanwhile")

    async def logs(self, container_id: str, after: LogCursor | None,
                   follow: bool = True) -> AsyncIterator[tuple[int, str]]:
        api = await self._api()
        since = after.at // 1_000_000_000 if after else 0
        params = {"follow": follow, "stdout": True, "stderr": True, "timestamps": True,
                  "since": since, "tail": "all"}
        try:
            with _engine_errors(RunFailed, "follow logs"):
                response = await asyncio.to_thread(
                    api._get, api._url("/services/{0}/logs", container_id), params=params,
                    stream=True)
                api._raise_for_status(response)
        except RunFailed as e:
            if isinstance(e.__cause__, NotFound):
                return  # removed (killed, cleaned up): nothing more to read
            raise
        stream = CancellableStream(api._multiplexed_response_stream_helper(response), response)
        # A service's followed logs go on after its task ends (a service may get new tasks):
        # the stream is closed here once the task ended for good.
        ended = asyncio.Event()
        watcher = asyncio.create_task(self._close_when_exited(container_id, stream, ended)) \
            if follow else None
        try:
            with _engine_errors(RunFailed, "follow logs"):
                async with contextlib.aclosing(_iterate(stream, close=stream.close)) as chunks:
                    async for piece in pieces_after(chunks, after):
                        yield piece
        except Exception:  # noqa: BLE001 - re-raised unless this backend closed the stream
            if not ended.is_set():
                raise  # a stream closed here ends its reader with an error: only that one
        finally:
            if watcher:
                watcher.cancel()

    async def _close_when_exited(self, container_id: str, stream: CancellableStream,
                                 ended: asyncio.Event) -> None:
        while True:
            state = await self.state(container_id)
            if state is None or state.exited:
                break
            await asyncio.sleep(POLL_SECONDS)
        ended.set()
        await asyncio.to_thread(stream.close)

    async def wait(self, container_id: str) -> ContainerState:
        while True:
            state = await self.state(container_id)
            if state is None:
                raise RunFailed("the service vanished")
            if state.exited:
                if state.exit_code is None:  # rejected, orphaned (its node gone), ...
                    raise RunFailed(f"the swarm gave no exit code: {getattr(state, 'reason', '')}")
                return state
            await asyncio.sleep(POLL_SECONDS)

    async def state(self, container_id: str) -> ContainerState | None:
        api = await self._api()
        service = await self._service(api, container_id)
        if service is None:
            return None
        tasks = await self._tasks(api, container_id)
        mode = service["Spec"]["Mode"]
        job = "ReplicatedJob" in mode
        killed = KILLED_LABEL in (service["Spec"].get("Labels") or {})
        if killed and not any(task["Status"]["State"] not in _ENDED for task in tasks):
            # Its tasks ended (or were reaped already): the kill's outcome, as Docker's.
            return ContainerState("exited", KILLED, restarts=0 if job else max(len(tasks) - 1, 0),
                                  last_exit=KILLED)
        if not tasks:
            return ContainerState("running" if _wanted(mode) else "created", None)
        newest = tasks[0]
        status = newest["Status"]["State"]
        ended = [task for task in tasks if task["Status"]["State"] in _ENDED]
        last_exit = _exit_code(ended[0]) if ended else None
        restarts = 0 if job else len(tasks) - 1
        if status not in _ENDED:
            if ended and status != "running":
                # A release's next task, not running yet: after a failure, or its node drained.
                return ContainerState("restarting", None, restarts=restarts, last_exit=last_exit)
            # Swarm holds a task in "starting" until its image's HEALTHCHECK passes.
            health = "starting" if status == "starting" else None
            return ContainerState("running", None, health=health, restarts=restarts,
                                  last_exit=last_exit)
        if not job and status == "failed" and len(tasks) <= RESTARTS:
            # Failed, and the engine has restarts left: a new task comes at once.
            return ContainerState("restarting", None, restarts=restarts, last_exit=last_exit)
        code = _exit_code(newest)
        memory = (service["Spec"]["TaskTemplate"].get("Resources") or {}) \
            .get("Limits", {}).get("MemoryBytes")
        # The task says only "non-zero exit (137)": a SIGKILL of a task that failed on its own
        # (not shut down), in a container with a memory limit, is the kernel's OOM killer
        # (Swarm reports no OOM flag).
        oom = code == KILLED and status == "failed" and bool(memory)
        return TaskEnded("exited", code, oom_killed=oom, restarts=restarts, last_exit=code,
                         reason=f"task {status}: " + (newest["Status"].get("Err")
                                                      or newest["Status"].get("Message", "")))

    async def kill(self, container_id: str) -> None:
        # Asking for no task ends the running one at once (no stop grace period). Removing the
        # service would not: Docker 20.10 leaves a removed job's container running
        # (moby/moby#44312, fixed in 24.0).
        def stop(spec: dict) -> bool:
            labels = spec.get("Labels") or {}
            if KILLED_LABEL in labels:
                return False
            spec["Mode"] = _scaled(spec["Mode"], 0)
            spec["Labels"] = {**labels, KILLED_LABEL: "true"}
            return True

        state = await self.state(container_id)
        if state is not None and not state.exited:
            await self._update(container_id, stop, "kill service")

    async def find(self, labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
        api = await self._api()
        selector = [f"{key}={value}" for key, value in labels.items()]
        with _engine_errors(RunFailed, "list services"):
            found = await asyncio.to_thread(api.services, filters={"label": selector})
        return {service["ID"]: service["Spec"].get("Labels") or {} for service in found}

    async def cleanup(self, container_id: str | None = None, image: str | None = None) -> None:
        api = await self._api()
        service = container_id and await self._service(api, container_id)
        if service:
            if "ReplicatedJob" in service["Spec"]["Mode"]:
                # A job's service goes only once its task ended: removed, a running job's
                # container would stay (moby/moby#44312). A release's goes with its service.
                await self.kill(container_id)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + STOP_SECONDS
                while (state := await self.state(container_id)) and not state.exited:
                    if loop.time() > deadline:
                        raise RunFailed("clean up failed: the job's task did not end")
                    await asyncio.sleep(POLL_SECONDS)
            with _engine_errors(RunFailed, "clean up"), contextlib.suppress(NotFound):
                await asyncio.to_thread(api.remove_service, container_id)
        if image:
            # Local tags only: nodes keep the layers they pulled until pruned; the registry
            # keeps the manifest (its garbage collection is the operator's).
            await self._builder.cleanup(image=self.pullable(image))
            await self._builder.cleanup(image=image)

    async def prune_images(self, repository: str, keep: int, spared: Spared) -> None:
        async def pullable() -> set[str]:
            return {self.pullable(tag) for tag in await spared()}

        await self._builder.prune_images(self.pullable(repository), keep, pullable)
        await self._builder.prune_images(repository, keep, spared)
