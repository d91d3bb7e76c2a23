"""This process as one replica of SPEED: its id, and where its process id can be checked."""
import dataclasses
import os
import pathlib
import socket
import uuid


def _machine() -> str:
    """Where a pid names one process: the host, its boot, and the pid namespace (replicas in
    containers sharing a hostname each see their own pids)."""
    try:
        boot = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        boot = namespace = "?"
    return f"{socket.gethostname()}/{boot}/{namespace}"[:200]


def process_alive(pid: int) -> bool:
    """Whether a process of that id runs here (one of another user's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass(frozen=True)
class Identity:
    """A replica's id (new at each start), its machine, and its process."""

    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:16])
    machine: str = dataclasses.field(default_factory=_machine)
    pid: int = dataclasses.field(default_factory=os.getpid)
