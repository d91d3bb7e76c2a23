"""The backend registry: runner.backend names the backend, its settings make it."""
import pytest

from bot.config import load
from runner.backends import BACKENDS, find_backend
from runner.docker_backend import DockerBackend
from runner.swarm_backend import SwarmBackend


def test_the_default_is_the_local_docker_engine():
    assert type(find_backend(load(None).runner)) is DockerBackend


async def test_swarm_is_made_from_its_settings():
    runner = load(None, runner__backend="swarm", runner__registry="10.0.0.5:5000",
                  runner__swarm_host="tcp://10.0.0.5:2376", runner__callback_host="10.0.0.9").runner
    backend = find_backend(runner)
    assert isinstance(backend, SwarmBackend)
    assert backend.pullable("speed-x:7-ab") == "10.0.0.5:5000/speed-x:7-ab"
    assert await backend.callback_host() == "10.0.0.9"  # configured: no engine asked


def test_an_unknown_name_names_the_known_ones():
    runner = load(None).runner
    with pytest.raises(KeyError, match="known: docker, swarm"):
        find_backend(type("Settings", (), {**vars(runner), "backend": "podman"})())
    assert sorted(BACKENDS) == ["docker", "swarm"]
