"""The test swarm's engines share this machine with its own engine: restarting them leaves it be."""
import os
import pathlib
import signal
import subprocess
import time

import pytest

from tests.swarm import ensure_swarm

# serial: it restarts the swarm's manager, which the swarm tests of the other workers use.
pytestmark = [pytest.mark.slow, pytest.mark.serial]

MANAGER_PID = pathlib.Path("/run/speed-swarm/manager.pid")


def bridge_index(name: str) -> int | None:
    """The interface index of a link of the host's network, None when there is none."""
    path = pathlib.Path(f"/sys/class/net/{name}/ifindex")
    return int(path.read_text()) if path.exists() else None


def test_the_swarm_manager_starting_again_keeps_the_machines_docker0(swarm, docker_client, base_image):
    """dockerd with a default address pool deletes 'docker0' each time it starts again; the
    manager runs on the host's network, where docker0 is the machine's engine's bridge."""
    before = bridge_index("docker0")
    assert before is not None, "the machine's engine runs without its docker0 bridge"
    pid = int(MANAGER_PID.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for the engine to end, not for a race to settle
    assert not os.path.exists(f"/proc/{pid}"), "the manager engine did not stop within 60 s"

    ensure_swarm()  # starts the manager again, with the swarm state it left

    assert bridge_index("docker0") == before
    # And the machine's engine still runs containers on its default bridge.
    output = docker_client.containers.run(base_image, ["echo", "bridged"], remove=True,
                                          network_mode="bridge")
    assert output.strip() == b"bridged"
    assert subprocess.run(["docker", "-H", swarm.swarm_host, "info"], capture_output=True).returncode == 0
