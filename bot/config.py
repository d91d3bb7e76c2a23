"""app.yaml parsed once into frozen dataclasses; errors name the key."""
import dataclasses
import ipaddress
import math
import os
import re
import typing
import urllib.parse
from typing import Any

import yaml

from runner.backends import BACKENDS
from runner.settings import MIN_MEMORY, size_of
from runner.proxy import admin_url, is_address, is_dns_name


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""


@dataclasses.dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///deployments.db"


@dataclasses.dataclass(frozen=True)
class RunnerConfig:
    backend: str = "docker"
    max_concurrent: int = 4
    timeout: float = 1800
    memory: str = "1g"
    cpus: float = 1.0
    pids: int = 512
    allowed_urls: tuple[str, ...] = ("https://*", "ssh://*")
    workdir: str = ".speed/work"
    keep_images: int = 5
    # A deployment of a commit whose image this SPEED built already runs that image directly.
    reuse_images: bool = True
    max_log_bytes: int = 10 * 1024 * 1024
    git_timeout: float = 300
    # Where containers reach SPEED: empty means the gateway of the Docker bridge, on server.port.
    callback_host: str = ""
    callback_port: int = 0
    # What containers are told to call (SPEED_API_URL), when not this replica's own listener:
    # with replicas, an address every replica answers behind (a load balancer), so a container
    # that outlives the replica that started it still reaches one.
    callback_url: str = ""
    # Seconds a replica may be silent before another adopts its deployments (storage.replicas).
    lease: float = 30
    # runner.backend: swarm: images go through this registry (host:port), services to this
    # engine, a swarm manager's (unix://, tcp:// or ssh:// URL).
    registry: str = ""
    swarm_host: str = "unix:///var/run/docker.sock"


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    api_tokens: tuple[str, ...] = ()
    # With tokens, reads (deployments, results, pages, events, metrics) need one too, unless this
    # says they are public. Without tokens everything is open (and SPEED listens on loopback only).
    public_reads: bool = False


@dataclasses.dataclass(frozen=True)
class GitHubConfig:
    webhook_secret: str = ""
    token: str = ""
    app_id: str = ""
    private_key: str = ""  # PEM text, or the path of a PEM file
    api_url: str = "https://api.github.com"
    # Where repositories live, to recognise a manual /start of a configured repository.
    web_url: str = ""
    # How long a report to GitHub is retried before SPEED gives up on it (seconds).
    report_retry_for: float = 900
    request_timeout: float = 10

    @property
    def app(self) -> bool:
        return bool(self.app_id and self.private_key)

    @property
    def repository_host(self) -> str:
        """The URL prefix of repositories on this GitHub, without a trailing slash."""
        if self.web_url:
            return self.web_url.rstrip("/")
        if self.api_url.rstrip("/") == "https://api.github.com":
            return "https://github.com"
        return self.api_url.rstrip("/").removesuffix("/api/v3")


@dataclasses.dataclass(frozen=True)
class SecretsConfig:
    # Fernet keys (comma-separated in the environment): the first encrypts, every one decrypts,
    # so a new key goes first and the old ones stay until `rotate-secrets` has run.
    key: tuple[str, ...] = ()
    # Without key: a key file, made with a new key on first start (default: secrets.key beside
    # an SQLite database).
    key_file: str = ""


@dataclasses.dataclass(frozen=True)
class RepoRule:
    match: str  # glob on owner/name
    branches: tuple[str, ...] = ("main",)
    pull_requests: bool = False
    forks: bool = False
    context: str = "speed/deploy"
    environment: str = ""
    cancel_superseded: bool = True


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    # Where Caddy serves environments (host:port), the domain their hosts end in, and the
    # address of Caddy's admin API, through which SPEED sets its routes.
    listen: str = "127.0.0.1:8000"
    domain: str = "localhost"
    admin: str = "http://localhost:2019"

    def url(self, host: str) -> str:
        """The URL at which the proxy serves host."""
        port = self.listen.rpartition(":")[2]
        return f"http://{host}/" if port == "80" else f"http://{host}:{port}/"

    def host(self, address: str) -> str:
        """The host name an environment's address (<name>.<repository>) is served at."""
        return f"{address}.{self.domain.lower()}"  # host names are one case to Caddy

    def environment_url(self, address: str) -> str:
        """The URL users reach an environment at."""
        return self.url(self.host(address))


@dataclasses.dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    runner: RunnerConfig = RunnerConfig()
    auth: AuthConfig = AuthConfig()
    github: GitHubConfig = GitHubConfig()
    repos: tuple[RepoRule, ...] = ()
    secrets: SecretsConfig = SecretsConfig()
    proxy: ProxyConfig = ProxyConfig()

    def __post_init__(self):
        _validate(self)

    @property
    def server_is_loopback(self) -> bool:
        return is_loopback(self.server.host)

    @property
    def accepts_unsigned_webhooks(self) -> bool:
        """Whether webhooks without a signature are taken: only with no secret to check, and only
        when nothing but this machine reaches SPEED (loopback, no tokens, no proxy in front)."""
        # Tokens or a non-loopback public_url mean a proxy exposes SPEED: its loopback socket then
        # carries strangers' requests, and an unsigned push could deploy any clone_url.
        public_host = urllib.parse.urlsplit(public_url(self)).hostname or ""
        return (not self.github.webhook_secret and self.server_is_loopback
                and not self.auth.api_tokens and is_loopback(public_host))


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: str, key: str) -> str:
    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if default is not None and not found:  # as in the shell: unset or empty takes the default
            return default
        if found is None:
            raise ConfigError(f"{key}: environment variable {name} is not set")
        return found

    return _ENV.sub(substitute, value)


def _coerce(value: Any, kind: Any, key: str) -> Any:
    if isinstance(value, str):
        value = _expand(value, key)
    origin = typing.get_origin(kind)
    if origin is tuple:
        if isinstance(value, str):  # from one environment variable: comma-separated
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        return tuple(_coerce(item, typing.get_args(kind)[0], f"{key}[{i}]")
                     for i, item in enumerate(value))
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, key)
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if kind is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected text")
        return value
    if kind in (int, float):
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number")
        if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > 2**53:
            raise ConfigError(f"{key}: expected a finite number of a sensible size")
        if kind is int and value != int(value):
            raise ConfigError(f"{key}: expected a whole number")
        return kind(value)
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover - a programming error


def _build(cls: type, data: Any, prefix: str = ""):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'configuration'}: expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{key}: unknown key")
    values = {name: _coerce(data[name], hints[name], f"{prefix + '.' if prefix else ''}{name}")
              for name in names if name in data}
    for field in dataclasses.fields(cls):
        if field.name not in values and field.default is dataclasses.MISSING:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{field.name}: required")
    return cls(**values)


def is_loopback(host: str) -> bool:
    """Whether host is this machine's loopback: localhost, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate(config: Config) -> None:
    server, runner = config.server, config.runner
    if not 0 <= server.port <= 65535:
        raise ConfigError("server.port: must be between 0 and 65535")
    if not 0 <= runner.callback_port <= 65535:
        raise ConfigError("runner.callback_port: must be between 0 and 65535")
    if runner.callback_url:
        parts = urllib.parse.urlsplit(runner.callback_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ConfigError(f"runner.callback_url: {runner.callback_url!r} is not an http(s) "
                              "URL of a host")
    if not config.auth.api_tokens and not is_loopback(server.host):
        raise ConfigError(f"server.host: listening on {server.host} without auth.api_tokens "
                          "would let anyone run code here; set tokens or listen on 127.0.0.1")
    if any(len(token) < 16 for token in config.auth.api_tokens):
        raise ConfigError("auth.api_tokens: each token needs at least 16 characters")
    if runner.backend not in BACKENDS:
        raise ConfigError(f"runner.backend: unknown backend {runner.backend!r} "
                          f"(known: {', '.join(sorted(BACKENDS))})")
    if runner.backend == "swarm":
        if not is_address(runner.registry):
            raise ConfigError(f"runner.registry: {runner.registry!r} is not host:port (a swarm's "
                              "nodes pull deployments' images from it)")
        if not runner.swarm_host.startswith(("unix:///", "tcp://", "ssh://")):
            raise ConfigError(f"runner.swarm_host: {runner.swarm_host!r} is not an engine URL "
                              "(unix:///..., tcp://host:port or ssh://...)")
    for key, value in (("max_concurrent", runner.max_concurrent), ("timeout", runner.timeout),
                       ("cpus", runner.cpus), ("pids", runner.pids),
                       ("max_log_bytes", runner.max_log_bytes), ("git_timeout", runner.git_timeout),
                       ("lease", runner.lease)):
        if value <= 0:
            raise ConfigError(f"runner.{key}: must be greater than 0")
    memory = size_of(runner.memory)
    if memory is None or memory < size_of(MIN_MEMORY):
        # Checked here: Docker would refuse every container, each deployment failing alike.
        raise ConfigError(f"runner.memory: {str(runner.memory)[:40]!r} is not a size of at "
                          f"least {MIN_MEMORY} (such as 512m or 2g)")
    if runner.keep_images < 0:
        raise ConfigError("runner.keep_images: must not be negative")
    if not runner.allowed_urls:
        raise ConfigError("runner.allowed_urls: at least one pattern is needed")
    github = config.github
    if bool(github.app_id) != bool(github.private_key):
        raise ConfigError("github.app_id: an App needs both app_id and private_key")
    if github.report_retry_for < 0 or github.request_timeout <= 0:
        raise ConfigError("github.report_retry_for: must not be negative "
                          "(and github.request_timeout greater than 0)")
    for i, rule in enumerate(config.repos):
        if not rule.context or len(rule.context) > 255:
            raise ConfigError(f"repos[{i}].context: needs 1 to 255 characters")
    proxy = config.proxy
    if not is_address(proxy.listen):
        raise ConfigError(f"proxy.listen: {proxy.listen!r} is not host:port")
    if not is_dns_name(proxy.domain):
        raise ConfigError(f"proxy.domain: {proxy.domain!r} is not a DNS name")
    try:
        admin_url(proxy.admin)
    except ValueError as e:
        raise ConfigError(f"proxy.admin: {e}") from None
    if not (config.secrets.key or secrets_key_file(config)):
        raise ConfigError("secrets.key: needed when the database is not an SQLite file (every "
                          "replica must hold the same key); or set secrets.key_file")


def secrets_key_file(config: Config) -> str:
    """Where the secrets key file is: secrets.key_file, else beside an SQLite database file;
    "" when there is neither."""
    if config.secrets.key_file:
        return config.secrets.key_file
    url = config.database.url
    if url.startswith("sqlite:///") and url.removeprefix("sqlite:///") not in ("", ":memory:"):
        return os.path.join(os.path.dirname(url.removeprefix("sqlite:///")) or ".", "secrets.key")
    return ""


def load(path: str | None = None, **overrides: Any) -> Config:
    """Read the configuration file (if any), apply section overrides, and validate."""
    data: dict = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not valid UTF-8") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        if not key:
            data[section] = value
            continue
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section}: expected a mapping")
        data[section][key] = value
    return _build(Config, data)


def public_url(config: Config) -> str:
    """The URL people use to reach this SPEED, without a trailing slash."""
    if config.server.public_url:
        return config.server.public_url.rstrip("/")
    return f"http://{config.server.host}:{config.server.port}"
