"""The embedded backend: the local Docker engine through the docker SDK."""
import asyncio
import codecs
import collections
import contextlib
import datetime
import functools
import hashlib
import ipaddress
import json
import re
import socket
import threading
from typing import AsyncIterator, Callable, Iterator, Mapping, TypeVar

import docker
import requests
import urllib3
from docker.errors import APIError, DockerException, NotFound
from docker.types.daemon import CancellableStream
from docker.utils import parse_bytes

from runner import context as build_context
from runner.base import KILLED, Backend, ContainerState, Limits, LogCursor, OutputSink, Spared
from runner.cgroups import BuildCgroups
from runner.errors import BuildFailed, EngineUnavailable, RunFailed, RunnerError
from runner.settings import Build

T = TypeVar("T")
_DONE = object()
_UNKNOWN = object()
# Of Docker's default capabilities, those an application does not need: raw sockets (spoofing
# on the shared bridge), device nodes, audit records and file capabilities.
DROPPED_CAPABILITIES = ("NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP")
CPU_PERIOD = 100_000  # microseconds; the quota is cpus times this
# The builder's lines that name images (" ---> 4c2743df7717", "Successfully tagged ..."): a
# deployment that read them could build FROM another's image.
# Builds and deployments each on a network of their own: build steps keep raw sockets (the
# build API cannot drop capabilities) and must never share one with deployments' containers.
BUILD_NETWORK = "speed-builds"
RUN_NETWORK = "speed-deployments"
# Services publish their port on loopback only: the proxy, on this host, is their way in.
PUBLISH_HOST = "127.0.0.1"
RESTARTS = 5  # times the engine restarts a service's container that exits before it gives up
_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12})$", re.M)
# The legacy builder's words when a cached step's image went away under it.
_CACHE_LOST = re.compile(r'unable to find image "sha256:[0-9a-f]{64}"|No such image: sha256:')
BUILD_ATTEMPTS = 2
_BUILDER_NAMES = re.compile(r"^(?: ---> [0-9a-f]{12}|Successfully (?:built|tagged) \S+)\n?$",
                            re.M)


def _free_port(avoid: frozenset[int] = frozenset()) -> int:
    """A loopback port nothing listens on now, and not one of avoid."""
    while True:
        with socket.socket() as probe:
            probe.bind((PUBLISH_HOST, 0))
            port = probe.getsockname()[1]
        if port not in avoid:
            return port


async def _iterate(blocking: Iterator[T], close: Callable[[], None] = lambda: None,
                   high_water: int = 4096) -> AsyncIterator[T]:
    """Iterate a blocking iterator on a thread of its own, handing items over in bulk.

    The thread stops reading when high_water items wait (back-pressure); leaving the loop early
    calls close, which must make the blocking iterator end (e.g. close its socket)."""
    loop = asyncio.get_running_loop()
    items: collections.deque = collections.deque()
    ready, room, failure = asyncio.Event(), threading.Semaphore(high_water), []
    left = threading.Event()  # the consumer left before the end

    def hand_over(item) -> None:
        items.append(item)
        # Only the first of a batch wakes the consumer. Counted after the append: counted
        # before, the consumer could empty the queue in between and wait for ever.
        if len(items) == 1:
            loop.call_soon_threadsafe(ready.set)

    def produce() -> None:
        try:
            for item in blocking:
                room.acquire()
                if left.is_set():
                    break
                hand_over(item)
        except Exception as e:  # noqa: BLE001 - re-raised in the consumer
            failure.append(e)
        finally:
            hand_over(_DONE)

    threading.Thread(target=produce, daemon=True, name="speed-stream").start()
    ended = False
    try:
        while True:
            await ready.wait()
            ready.clear()
            while items:
                item = items.popleft()
                if item is _DONE:
                    ended = True
                    if failure:
                        raise failure[0]
                    return
                room.release()
                yield item
    finally:
        if not ended:
            left.set()
            close()
            room.release()  # a producer blocked on a full queue wakes, sees left, and stops


@contextlib.contextmanager
def _engine_errors(kind: type[RunnerError], action: str):
    """Turn the SDK's and the HTTP layer's errors into the runner's own."""
    try:
        yield
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.ProtocolError) as e:
        raise EngineUnavailable(f"the Docker engine does not answer ({action})") from e
    except DockerException as e:
        raise kind(f"{action} failed: {getattr(e, 'explanation', None) or e}") from e


def _whole(value: float, name: str) -> int:
    """A limit as the engine takes it, which is never 0: the engine reads 0 as no limit."""
    if int(value) < 1:
        raise RunFailed(f"{name}: too small a limit for the engine")
    return int(value)


def _step_image(text: str) -> str | None:
    """The image a build step made, from the builder's " ---> <id>" line, if text has one."""
    found = _STEP_IMAGE.findall(text)
    return found[-1] if found else None


async def pieces_after(chunks: AsyncIterator[bytes],
                       after: LogCursor | None) -> AsyncIterator[tuple[int, str]]:
    """(time in ns, text) of Docker's timestamped log chunks past the cursor."""
    skip = after.seen if after else 0  # pieces of after.at stored already
    # One decoder for the stream: Docker cuts lines over 16 KB into pieces anywhere, even
    # inside a character, and a character cut in two must not become two U+FFFDs.
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    async for chunk in chunks:
        stamp, _, data = chunk.partition(b" ")
        at = _nanoseconds(stamp.decode("ascii", "replace"))
        if after is not None and (at < after.at or at == after.at and skip):
            skip -= at == after.at
            continue
        yield at, decoder.decode(data)


def _remove_untagged(api: docker.APIClient, image: str) -> None:
    """Remove a build's last step image and the untagged ones below it, unless something else
    uses them (a tagged image, or a container: the engine refuses, and that is fine)."""
    with contextlib.suppress(DockerException, requests.RequestException):
        if not api.inspect_image(image).get("RepoTags"):
            api.remove_image(image)


@functools.lru_cache(maxsize=64)
def _epoch(whole_seconds: str) -> int:
    return int(datetime.datetime.fromisoformat(whole_seconds)
               .replace(tzinfo=datetime.timezone.utc).timestamp())


def _nanoseconds(stamp: str) -> int:
    """RFC 3339 time with nanoseconds, as Docker writes it, to integer nanoseconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return _epoch(whole) * 1_000_000_000 + int((fraction + "000000000")[:9])


class DockerBackend(Backend):
    """Builds and runs deployments on the Docker engine named by DOCKER_HOST (or the local socket)."""

    def __init__(self, network: str = RUN_NETWORK):
        self._client: docker.DockerClient | None = None
        self._network = network
        # Builds and image pruning exclude each other: a build may take a pruned image as cache.
        self._builds = 0
        self._pruning = False
        self._images_idle = asyncio.Condition()
        self._cgroups: BuildCgroups | None | object = _UNKNOWN
        self._networks_made: set[str] = set()
        # (container, port) -> host:port of services just created, until address() asks once.
        self._published: dict[tuple[str, int], str] = {}
        # Containers this process killed, until cleaned up: their 137 is SPEED's, not the OOM
        # killer's (see state()).
        self._killed: set[str] = set()

    async def _api(self) -> docker.APIClient:
        if self._client is None:
            with _engine_errors(EngineUnavailable, "connect"):
                self._client = await asyncio.to_thread(docker.from_env)
        return self._client.api

    async def ping(self) -> None:
        api = await self._api()
        with _engine_errors(EngineUnavailable, "ping"):
            await asyncio.to_thread(api.ping)

    async def callback_host(self) -> str:
        api = await self._api()
        await self._own_network(api, self._network)
        with _engine_errors(EngineUnavailable, "inspect network"):
            network = await asyncio.to_thread(api.inspect_network, self._network)
        for pool in network.get("IPAM", {}).get("Config") or []:
            if pool.get("Gateway"):
                return pool["Gateway"]
            if pool.get("Subnet") and ":" not in pool["Subnet"]:
                # Docker gives a bridge the subnet's first address when it names no gateway.
                return str(next(ipaddress.ip_network(pool["Subnet"]).hosts()))
        raise EngineUnavailable(f"the Docker network {self._network!r} has no gateway address")

    @contextlib.asynccontextmanager
    async def _using_images(self):
        """Builds and reuses go on together; pruning waits for them, and they for it."""
        async with self._images_idle:
            await self._images_idle.wait_for(lambda: not self._pruning)
            self._builds += 1
        try:
            yield
        finally:
            async with self._images_idle:
                self._builds -= 1
                self._images_idle.notify_all()

    async def reuse_image(self, candidates: list[str], tag: str) -> str | None:
        api = await self._api()
        repository, _, name = tag.rpartition(":")
        async with self._using_images():
            for candidate in candidates:
                try:
                    with _engine_errors(RunFailed, "tag image"):
                        await asyncio.to_thread(api.tag, candidate, repository, name)
                    return candidate
                except RunFailed as e:
                    if not isinstance(e.__cause__, NotFound):
                        raise
        return None

    async def build(self, source: str, tag: str, output: OutputSink, limits: Limits,
                    options: Build = Build()) -> str:
        api = await self._api()
        # Read from the checkout here, not by the SDK, which follows links (.dockerignore ->
        # /dev/zero) and reads without bound.
        archive, dockerfile = await asyncio.to_thread(build_context.archive, source, options)
        params = {"t": tag, "rm": True, "forcerm": True, "pull": False, "dockerfile": dockerfile,
                  # Each step's container gets the limits the deployment's container gets.
                  "memory": parse_bytes(limits.memory), "memswap": parse_bytes(limits.memory),
                  "cpuperiod": CPU_PERIOD, "cpuquota": _whole(limits.cpus * CPU_PERIOD, "cpus")}
        if options.args:
            params["buildargs"] = json.dumps(dict(options.args))
        if options.target:
            params["target"] = options.target
        params["networkmode"] = await self._own_network(api, BUILD_NETWORK)
        # Named after a digest of this SPEED's image repository: a step reads its cgroup's name
        # in /proc/self/cgroup, and the repository is half of every image's name.
        cgroups = await self._build_cgroups(api, "speed-build-" + hashlib.sha256(
            tag.rpartition(":")[0].encode()).hexdigest()[:10])
        parent = cgroups and await asyncio.to_thread(cgroups.create, limits.pids)
        if parent:
            params["cgroupparent"] = parent
        image_id, steps = None, []
        try:
            async with self._using_images():
                for attempt in range(BUILD_ATTEMPTS):
                    try:
                        image_id = await self._build_once(api, archive, params, output, steps)
                        break
                    except BuildFailed as e:
                        # A cached step's image removed while this build used it (another
                        # SPEED's clean-up, a prune): the same build again finds none to use.
                        if attempt + 1 == BUILD_ATTEMPTS or not _CACHE_LOST.search(e.message):
                            raise
                        await output("the build cache lost an image meanwhile (removed by "
                                     "another SPEED or a prune); building again without it\n")
                        # Without the cache: clean-up may go on removing images meanwhile.
                        params["nocache"] = True
                        archive.seek(0)
        finally:
            archive.close()
            loop = asyncio.get_running_loop()
            if parent:
                # Once the engine removed the steps' containers; nobody waits for it.
                loop.run_in_executor(None, cgroups.remove, parent)
            if image_id is None and steps:
                # A failed or stopped build leaves its steps' images, untagged, for good.
                loop.run_in_executor(None, _remove_untagged, api, steps[-1])
        if image_id is None:
            raise BuildFailed("build failed: the engine reported no image")
        return image_id

    async def _build_once(self, api: docker.APIClient, archive, params: dict,
                          output: OutputSink, steps: list[str]) -> str | None:
        """One build: the image id (None if the engine named none); the steps' images are
        added to steps as they are made, failure or not."""
        image_id = None
        with _engine_errors(BuildFailed, "build"):
            stream = await asyncio.to_thread(self._start_build, api, archive, params)
            # Leaving early (cancel, timeout) closes the connection: the engine then stops the
            # build at once, and tags nothing.
            async with contextlib.aclosing(_iterate(stream, close=stream.close)) as chunks:
                async for chunk in chunks:
                    if "stream" in chunk:
                        steps += filter(None, [_step_image(chunk["stream"])])
                        text = _BUILDER_NAMES.sub("", chunk["stream"])
                        if text:
                            await output(text)
                    elif "error" in chunk:
                        raise BuildFailed(f"build failed: {chunk['error'].strip()}")
                    elif "aux" in chunk and "ID" in chunk["aux"]:
                        image_id = chunk["aux"]["ID"]
        return image_id

    async def _own_network(self, api: docker.APIClient, name: str) -> str:
        """A bridge network of SPEED's, made once, on which containers cannot reach each other
        (ICC off): neither a fork's deployment another's, nor a build step (which keeps raw
        sockets) a concurrent build. Docker's own networks are used as they are."""
        if name not in self._networks_made and name not in ("bridge", "host", "none"):
            with _engine_errors(EngineUnavailable, f"make the network {name}"):
                found = await asyncio.to_thread(api.networks, names=[name])
                if not any(n["Name"] == name for n in found):
                    with contextlib.suppress(APIError):  # another SPEED made it meanwhile
                        await asyncio.to_thread(
                            api.create_network, name, driver="bridge", check_duplicate=True,
                            options={"com.docker.network.bridge.enable_icc": "false"},
                            labels={"speed.network": name})
        self._networks_made.add(name)
        return name

    @staticmethod
    def _start_build(api: docker.APIClient, archive, params: dict) -> CancellableStream:
        # The SDK's build() has no CPU quota or cgroup parent and hides the response it would
        # take to stop the build: the same request, made here.
        response = api._post(api._url("/build"), data=archive, params=params, stream=True,
                             headers={"Content-Type": "application/tar"}, timeout=None)
        api._raise_for_status(response)
        return CancellableStream(api._stream_helper(response, decode=True), response)

    async def _build_cgroups(self, api: docker.APIClient, prefix: str) -> BuildCgroups | None:
        """The build cgroups of this engine, found once (leftovers of a crash swept then)."""
        if self._cgroups is _UNKNOWN:
            with _engine_errors(EngineUnavailable, "engine info"):
                engine = await asyncio.to_thread(api.info)
            self._cgroups = BuildCgroups.for_engine(engine, prefix)
            if self._cgroups:
                await asyncio.to_thread(self._cgroups.sweep)
        return self._cgroups

    async def create(self, name: str, image: str, env: Mapping[str, str],
                     labels: Mapping[str, str], limits: Limits, port: int | None = None,
                     avoid: frozenset[int] = frozenset()) -> str:
        api = await self._api()
        service, published = {}, None
        if port is not None:
            # A host port of SPEED's choosing, not the engine's: the engine picks a new one at
            # every restart, and the proxy's route must stay right across a crash.
            published = (PUBLISH_HOST, _free_port(avoid))
            service = {"port_bindings": {port: published},
                       "restart_policy": {"Name": "on-failure", "MaximumRetryCount": RESTARTS}}
        with _engine_errors(RunFailed, "create container"):
            host_config = api.create_host_config(
                mem_limit=limits.memory, memswap_limit=limits.memory,
                nano_cpus=_whole(limits.cpus * 1e9, "cpus"), pids_limit=limits.pids,
                security_opt=["no-new-privileges"], network_mode=self._network, privileged=False,
                cap_drop=list(DROPPED_CAPABILITIES),
                # The engine's own copy of the output is bounded too; SPEED stores what it keeps.
                log_config={"type": "json-file", "config": {"max-size": "20m", "max-file": "2"}},
                **service)
            created = await asyncio.to_thread(
                api.create_container, image, name=name, environment=dict(env),
                labels=dict(labels), host_config=host_config, detach=True,
                ports=[port] if port is not None else None)
        if published:  # known: address() need not ask the engine
            self._published[created["Id"], port] = "%s:%d" % published
        return created["Id"]

    async def address(self, container_id: str, port: int) -> str | None:
        if (container_id, port) in self._published:
            return self._published.pop((container_id, port))
        api = await self._api()
        with _engine_errors(RunFailed, "inspect container"):
            info = await asyncio.to_thread(api.inspect_container, container_id)
        bound = (info["HostConfig"].get("PortBindings") or {}).get(f"{port}/tcp") or []
        return f"{bound[0]['HostIp']}:{bound[0]['HostPort']}" if bound else None

    async def start(self, container_id: str) -> None:
        api = await self._api()
        with _engine_errors(RunFailed, "start container"):
            await asyncio.to_thread(api.start, container_id)

    async def logs(self, container_id: str, after: LogCursor | None,
                   follow: bool = True) -> AsyncIterator[tuple[int, str]]:
        api = await self._api()
        since = after.at // 1_000_000_000 if after else None
        with _engine_errors(RunFailed, "follow logs"):
            stream = await asyncio.to_thread(
                api.logs, container_id, stream=True, follow=follow, timestamps=True, since=since)
            async with contextlib.aclosing(_iterate(stream, close=stream.close)) as chunks:
                async for piece in pieces_after(chunks, after):
                    yield piece

    async def wait(self, container_id: str) -> ContainerState:
        api = await self._api()
        with _engine_errors(RunFailed, "wait for container"):
            await asyncio.to_thread(api.wait, container_id)
        state = await self.state(container_id)
        if state is None:
            raise RunFailed("the container vanished")
        return state

    async def state(self, container_id: str) -> ContainerState | None:
        api = await self._api()
        try:
            with _engine_errors(RunFailed, "inspect container"):
                info = await asyncio.to_thread(api.inspect_container, container_id)
        except RunFailed as e:
            if isinstance(e.__cause__, NotFound):
                return None
            raise
        state = info["State"]
        exited = state["Status"] in ("exited", "dead")
        # Docker 20.10 flags OOMKilled only when the kernel's OOM event comes in before the exit
        # (under load it may come after), and forgets it when a restart policy starts the
        # container again. A SIGKILL that SPEED did not send, under a memory limit, is the OOM
        # killer's, as the swarm backend reads it too.
        oom = state.get("OOMKilled", False) or (
            state["ExitCode"] == KILLED and bool(info["HostConfig"].get("Memory"))
            and container_id not in self._killed)
        return ContainerState(status=state["Status"], exit_code=state["ExitCode"] if exited else None,
                              oom_killed=oom,
                              health=(state.get("Health") or {}).get("Status"),
                              restarts=info.get("RestartCount", 0),
                              last_exit=state["ExitCode"])

    async def kill(self, container_id: str) -> None:
        api = await self._api()
        self._killed.add(container_id)
        with _engine_errors(RunFailed, "kill container"), contextlib.suppress(APIError):
            await asyncio.to_thread(api.kill, container_id)

    async def find(self, labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
        api = await self._api()
        selector = [f"{key}={value}" for key, value in labels.items()]
        with _engine_errors(RunFailed, "list containers"):
            found = await asyncio.to_thread(api.containers, all=True, filters={"label": selector})
        return {c["Id"]: c.get("Labels") or {} for c in found}

    async def cleanup(self, container_id: str | None = None, image: str | None = None) -> None:
        api = await self._api()
        with _engine_errors(RunFailed, "clean up"):
            if container_id:
                with contextlib.suppress(NotFound):
                    await asyncio.to_thread(api.remove_container, container_id, force=True)
                self._killed.discard(container_id)
            if image:
                # An image another container still uses stays (409); the next prune retries it.
                with contextlib.suppress(NotFound, APIError):
                    await asyncio.to_thread(api.remove_image, image)

    async def prune_images(self, repository: str, keep: int, spared: Spared) -> None:
        async with self._images_idle:
            if self._builds or self._pruning:
                return  # the next deployment to finish prunes
            self._pruning = True
        try:
            api = await self._api()
            with _engine_errors(RunFailed, "list images"):
                images = await asyncio.to_thread(api.images, repository)
            # Tags are <deployment id>-<random part> (earlier releases: <deployment id>).
            numbered = [(int(match.group(1)), tag)
                        for image in images for tag in image.get("RepoTags") or []
                        if (match := re.fullmatch(re.escape(repository) + r":(\d+)(?:-\w+)?", tag))]
            tags = [tag for _, tag in sorted(numbered, reverse=True)]
            if not tags[keep:]:
                return
            # Asked now, after the listing: a deployment (of any replica) names its image in
            # the database before tagging it, so a tag listed here is spared if still in use.
            spare = await spared()
            # By tag: the build cache gives equal builds one image, and untagging one
            # deployment's image must leave the others'. Docker deletes the image with its last
            # tag, and never while a container still uses it.
            for tag in tags[keep:]:
                if tag not in spare:
                    await self.cleanup(image=tag)
        finally:
            async with self._images_idle:
                self._pruning = False
                self._images_idle.notify_all()
