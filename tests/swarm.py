"""The tests' swarm: two engines of this machine joined as one swarm, and a registry beside it."""
import dataclasses
import pathlib
import subprocess

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "ensure-swarm.sh"


@dataclasses.dataclass(frozen=True)
class Swarm:
    """Where the swarm answers, as scripts/ensure-swarm.sh reports it."""

    swarm_host: str  # the manager's engine URL (runner.swarm_host)
    registry: str  # host:port (runner.registry)
    callback_host: str  # an address of this machine every node reaches
    network: str  # deployments' network, inter-container traffic off on each node
    worker_host: str  # the worker's own engine (tests look at its containers)
    manager_node: str
    worker_node: str


def ensure_swarm() -> Swarm:
    """Bring the swarm up (or find it healthy): idempotent, and safe to call from several
    processes at once (the script takes a lock). RuntimeError saying why when it cannot."""
    try:
        done = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"scripts/ensure-swarm.sh could not run: {e}") from e
    if done.returncode != 0:
        raise RuntimeError(f"scripts/ensure-swarm.sh failed:\n{done.stderr}")
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return Swarm(**{field.name: values[field.name] for field in dataclasses.fields(Swarm)})
