"""Backends by name (woodpecker's FindBackend): runner.backend picks one, its settings build it."""
from typing import Callable, Protocol

from runner.base import Backend


class BackendSettings(Protocol):
    """What the factories read: the runner section of the configuration."""

    backend: str
    registry: str
    swarm_host: str
    callback_host: str


def _docker(settings: BackendSettings) -> Backend:
    from runner.docker_backend import DockerBackend
    return DockerBackend()


def _swarm(settings: BackendSettings) -> Backend:
    from runner.swarm_backend import SwarmBackend
    return SwarmBackend(manager=settings.swarm_host, registry=settings.registry,
                        callback_host=settings.callback_host or None)


BACKENDS: dict[str, Callable[[BackendSettings], Backend]] = {"docker": _docker, "swarm": _swarm}


def find_backend(settings: BackendSettings) -> Backend:
    """The backend settings.backend names, made from settings; KeyError naming the known ones."""
    try:
        factory = BACKENDS[settings.backend]
    except KeyError:
        raise KeyError(f"unknown backend {settings.backend!r} "
                       f"(known: {', '.join(sorted(BACKENDS))})") from None
    return factory(settings)
