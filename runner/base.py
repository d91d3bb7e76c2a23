"""The backend interface: what SPEED needs from a container engine."""
import abc
import dataclasses
from typing import AsyncIterator, Awaitable, Callable, Mapping

from runner.settings import Build

OutputSink = Callable[[str], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one deployment's container may use."""

    memory: str
    cpus: float
    pids: int


@dataclasses.dataclass(frozen=True)
class LogCursor:
    """Where a container's stored output ends: the time (Unix ns) of the last piece stored, and
    how many pieces of that very time were stored — Docker gives every 16 KB piece of a long
    line the time of the first, so a time alone cannot say which of them came already."""

    at: int
    seen: int = 1

    def after(self, at: int) -> "LogCursor":
        """The cursor once a piece of time at is stored too."""
        return LogCursor(at, self.seen + 1) if at == self.at else LogCursor(at)


# What image pruning must leave, asked of the database at the moment it is needed.
Spared = Callable[[], Awaitable[set[str]]]
KILLED = 137  # the exit code of a container ended by SIGKILL: SPEED's kill, or the OOM killer's


@dataclasses.dataclass(frozen=True)
class ContainerState:
    """What the engine knows about a deployment's container."""

    status: str  # Docker's words: created, running, restarting, exited, ...
    exit_code: int | None
    oom_killed: bool = False
    health: str | None = None  # the image's HEALTHCHECK says: starting, healthy, unhealthy
    restarts: int = 0  # times the engine restarted it (a service's restart policy)
    last_exit: int | None = None  # the exit code of its last run, even while it runs again

    @property
    def never_started(self) -> bool:
        return self.status == "created"

    @property
    def exited(self) -> bool:
        return self.status in ("exited", "dead")


class Backend(abc.ABC):
    """A container engine that builds and runs deployments.

    Lifecycle of one deployment: ``build`` (prepare the image from a checkout) → ``create`` and
    ``start`` (run) → ``logs`` and ``wait`` → ``cleanup``. ``cleanup`` is idempotent and safe after
    a failed build or create: it removes whatever of the deployment exists. Every container carries
    ``labels`` naming its SPEED instance and deployment, so ``find`` can tell after a restart which
    deployment a container belongs to. Methods raise ``runner.errors.RunnerError`` subclasses.
    """

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the engine answers; raise EngineUnavailable otherwise."""

    @abc.abstractmethod
    async def callback_host(self) -> str:
        """The host address at which containers reach SPEED."""

    @abc.abstractmethod
    async def build(self, source: str, tag: str, output: OutputSink, limits: Limits,
                    options: Build = Build()) -> str:
        """Build the checkout at source as tag, as options say (Dockerfile, context directory,
        arguments, target), streaming the log; return the image id. Every step runs within
        limits; nothing in source is read through a link out of it or without a bound; the log
        names no image. Cancelling the call stops the build at once and leaves no image tagged."""

    @abc.abstractmethod
    async def reuse_image(self, candidates: list[str], tag: str) -> str | None:
        """Tag the first candidate image that still exists as tag and return it; None if none
        does."""

    @abc.abstractmethod
    async def create(self, name: str, image: str, env: Mapping[str, str],
                     labels: Mapping[str, str], limits: Limits, port: int | None = None,
                     avoid: frozenset[int] = frozenset()) -> str:
        """Create (not start) a container and return its id. With a port, a service's: it
        publishes that port at an address the proxy can reach (see address), on a host port
        not in avoid, and the engine restarts it, a bounded number of times, when it exits
        with an error."""

    @abc.abstractmethod
    async def address(self, container_id: str, port: int) -> str | None:
        """host:port at which a service's container serves its port (None if it publishes none)."""

    @abc.abstractmethod
    async def start(self, container_id: str) -> None:
        """Start a created container."""

    @abc.abstractmethod
    def logs(self, container_id: str, after: LogCursor | None,
             follow: bool = True) -> AsyncIterator[tuple[int, str]]:
        """The container's output after the cursor, as (time in ns, text) pieces; with follow,
        on until the container stops (or the stream breaks off)."""

    @abc.abstractmethod
    async def wait(self, container_id: str) -> ContainerState:
        """Wait for the container to exit and return its final state."""

    @abc.abstractmethod
    async def state(self, container_id: str) -> ContainerState | None:
        """The container's current state, or None if it no longer exists."""

    @abc.abstractmethod
    async def kill(self, container_id: str) -> None:
        """Kill the container if it runs."""

    @abc.abstractmethod
    async def find(self, labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """The containers carrying all the labels: id → all their labels."""

    @abc.abstractmethod
    async def cleanup(self, container_id: str | None = None, image: str | None = None) -> None:
        """Remove the container and image if they exist; never fails on what is already gone."""

    @abc.abstractmethod
    async def prune_images(self, repository: str, keep: int, spared: Spared) -> None:
        """Untag all but the keep newest deployment images of repository, and never those
        spared() names. It is asked after the images are listed (and only when one is to go):
        an image named in the database before it was tagged is then always spared."""
