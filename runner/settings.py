"""`.speed.yml`: the settings a commit carries, parsed and checked without any I/O.

Every error names the key (and the YAML line where there is one); nothing here raises anything
but SettingsError (a runner error: the deployment fails with its message), whatever the input."""
import dataclasses
import json
import math
import posixpath
import re
from typing import Any

import yaml
from docker.utils import parse_bytes

from runner.errors import SettingsInvalid

FILE = ".speed.yml"
MAX_BYTES = 64 * 1024
MAX_VALUE = 32 * 1024  # one environment variable or build argument
MAX_VALUES = 10_000  # values in the whole file, aliases counted as often as they are used
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_STAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
RESERVED_PREFIX = "SPEED_"


class SettingsError(SettingsInvalid):
    """The file cannot be used; the message names the key, and the line where known."""

    def __init__(self, key: str, problem: str, line: int | None = None):
        where = f" (line {line})" if line else ""
        super().__init__(f"{FILE}: {key}{where}: {problem}")


@dataclasses.dataclass(frozen=True)
class Ceiling:
    """The server's own limits, which a repository's settings may lower but never raise."""

    timeout: float
    memory: str
    cpus: float


@dataclasses.dataclass(frozen=True)
class Build:
    dockerfile: str = "Dockerfile"  # a path in the repository
    context: str = "."  # a directory in the repository
    args: tuple[tuple[str, str], ...] = ()
    target: str | None = None


@dataclasses.dataclass(frozen=True)
class Resources:
    memory: str | None = None
    cpus: float | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a deployment's commit asks for; the defaults are what a commit without the file gets."""

    env: tuple[tuple[str, str], ...] = ()
    secrets: tuple[str, ...] = ()
    timeout: float | None = None
    build: Build = Build()
    resources: Resources = Resources()

    def to_json(self) -> str:
        """The settings as stored and shown: plain JSON, secret names only (there are no values)."""
        return json.dumps(_plain(self))


def _plain(settings: Settings) -> dict:
    build, resources = settings.build, settings.resources
    return {"env": dict(settings.env), "secrets": list(settings.secrets),
            "timeout": settings.timeout,
            "build": {"dockerfile": build.dockerfile, "context": build.context,
                      "args": dict(build.args), "target": build.target},
            "resources": {"memory": resources.memory, "cpus": resources.cpus}}


MAPPING, SEQUENCE, SCALAR = "mapping", "sequence", "scalar"


class _Value:
    """A parsed value: its kind, its content (pairs of _Value for a mapping, _Values for a
    sequence) and the YAML line it starts on (None for values not read from YAML)."""

    __slots__ = ("kind", "value", "line")

    def __init__(self, kind: str, value: Any, line: int | None):
        self.kind, self.value, self.line = kind, value, line


def _from_yaml(node: yaml.Node, loader: yaml.SafeLoader, budget: list[int]) -> _Value:
    # Aliases make a small file a huge tree (billion laughs): stop counting at MAX_VALUES.
    budget[0] -= 1
    if budget[0] < 0:
        raise SettingsError("file", f"more than {MAX_VALUES} values")
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        return _Value(MAPPING, [(_from_yaml(k, loader, budget), _from_yaml(v, loader, budget))
                                for k, v in node.value], line)
    if isinstance(node, yaml.SequenceNode):
        return _Value(SEQUENCE, [_from_yaml(item, loader, budget) for item in node.value], line)
    return _Value(SCALAR, loader.construct_object(node), line)


def _from_plain(value: Any) -> _Value:
    if isinstance(value, dict):  # to_json writes unset keys as null
        return _Value(MAPPING, [(_Value(SCALAR, k, None), _from_plain(v))
                                for k, v in value.items() if v is not None], None)
    if isinstance(value, list):
        return _Value(SEQUENCE, [_from_plain(item) for item in value], None)
    return _Value(SCALAR, value, None)


def parse(text: bytes | str | None, ceiling: Ceiling) -> Settings:
    """The settings in a `.speed.yml` (None: the commit has none, so the defaults)."""
    if text is None:
        return Settings()
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise SettingsError("file", f"larger than {MAX_BYTES} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SettingsError("file", "not valid UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        tree = _from_yaml(node, loader, [MAX_VALUES]) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise SettingsError("file", f"not valid YAML: {problem}",
                            mark.line + 1 if mark else None) from None
    except SettingsError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise SettingsError("file", f"a value YAML cannot read ({type(e).__name__})") from None
    finally:
        loader.dispose()
    return Settings() if tree is None else _settings(tree, ceiling)


def from_json(text: str, ceiling: Ceiling) -> Settings:
    """Settings stored by to_json, checked again against today's ceiling."""
    return _settings(_from_plain(json.loads(text)), ceiling)


def _mapping(value: _Value, key: str) -> dict[str, _Value]:
    """A mapping's entries by name; keys must be text and unique."""
    if value.kind == SCALAR and value.value is None:
        return {}
    if value.kind != MAPPING:
        raise SettingsError(key or "file", "expected a mapping", value.line)
    found: dict[str, _Value] = {}
    for name, entry in value.value:
        if name.kind != SCALAR or not isinstance(name.value, str):
            raise SettingsError(key or "file", "keys must be text", name.line)
        label = f"{key}.{name.value}" if key else name.value
        if name.value in found:
            raise SettingsError(label, "given twice", name.line)
        found[name.value] = entry
    return found


def _known(entries: dict[str, _Value], known: set[str], key: str) -> None:
    for name, entry in entries.items():
        if name not in known:
            label = f"{key}.{name}" if key else name
            raise SettingsError(label, "unknown key (known: " + ", ".join(sorted(known)) + ")",
                                entry.line)


def _scalar_text(value: _Value, key: str) -> str:
    """A string, number or boolean as the environment spells it."""
    raw = value.value if value.kind == SCALAR else None
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, int):
        text = str(raw)
    elif isinstance(raw, float) and math.isfinite(raw):
        text = repr(raw)
    elif isinstance(raw, str):
        text = raw
    else:
        raise SettingsError(key, "expected a string, number or boolean", value.line)
    if "\0" in text:
        raise SettingsError(key, "must not contain NUL", value.line)
    if len(text) > MAX_VALUE:
        raise SettingsError(key, f"longer than {MAX_VALUE} characters", value.line)
    return text


def _names(entries: dict[str, _Value], key: str) -> None:
    for name, entry in entries.items():
        if not _NAME.fullmatch(name):
            raise SettingsError(f"{key}.{name}", "not a valid name (letters, digits and _, not "
                                "starting with a digit)", entry.line)
        if name.upper().startswith(RESERVED_PREFIX):
            raise SettingsError(f"{key}.{name}", f"names starting {RESERVED_PREFIX} are SPEED's "
                                "own", entry.line)


def _number(value: _Value, key: str, ceiling: float, unit: str) -> float:
    raw = value.value
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise SettingsError(key, "expected a number", value.line)
    if raw <= 0:
        raise SettingsError(key, "must be greater than 0", value.line)
    if raw > ceiling:
        raise SettingsError(key, f"{raw:g}{unit} is over the server's limit of {ceiling:g}{unit}",
                            value.line)
    return float(raw)


def _path(value: _Value, key: str) -> str:
    """A relative path that stays in the repository (links are checked when it is read)."""
    raw = value.value
    if not isinstance(raw, str) or not raw or "\0" in raw or len(raw) > 1024:
        raise SettingsError(key, "expected a path in the repository", value.line)
    if raw.startswith("/"):
        raise SettingsError(key, "an absolute path; paths are relative to the repository",
                            value.line)
    normal = posixpath.normpath(raw)
    if normal == ".." or normal.startswith("../"):
        raise SettingsError(key, "leads out of the repository", value.line)
    return normal


def _build(value: _Value) -> Build:
    entries = _mapping(value, "build")
    _known(entries, {"dockerfile", "context", "args", "target"}, "build")
    build = Build()
    if "dockerfile" in entries:
        build = dataclasses.replace(build, dockerfile=_path(entries["dockerfile"],
                                                            "build.dockerfile"))
    if "context" in entries:
        build = dataclasses.replace(build, context=_path(entries["context"], "build.context"))
    if "args" in entries:
        args = _mapping(entries["args"], "build.args")
        for name, entry in args.items():
            if not _NAME.fullmatch(name):
                raise SettingsError(f"build.args.{name}", "not a valid name", entry.line)
        build = dataclasses.replace(build, args=tuple(
            (name, _scalar_text(entry, f"build.args.{name}")) for name, entry in args.items()))
    if "target" in entries and entries["target"].value is not None:
        target = entries["target"]
        if not isinstance(target.value, str) or not _STAGE.fullmatch(target.value):
            raise SettingsError("build.target", "expected the name of a build stage",
                                target.line)
        build = dataclasses.replace(build, target=target.value)
    return build


def _resources(value: _Value, ceiling: Ceiling) -> Resources:
    entries = _mapping(value, "resources")
    _known(entries, {"memory", "cpus"}, "resources")
    resources = Resources()
    if "memory" in entries:
        entry = entries["memory"]
        raw = entry.value
        try:
            wanted = parse_bytes(raw) if isinstance(raw, (str, int)) and \
                not isinstance(raw, bool) else None
        except Exception:  # noqa: BLE001 - docker's parser raises its own error types
            wanted = None
        if not wanted or wanted <= 0:
            raise SettingsError("resources.memory", "expected a size such as 512m or 2g",
                                entry.line)
        if wanted > parse_bytes(ceiling.memory):
            raise SettingsError("resources.memory", f"{raw} is over the server's limit of "
                                f"{ceiling.memory}", entry.line)
        resources = dataclasses.replace(resources, memory=str(raw))
    if "cpus" in entries:
        resources = dataclasses.replace(resources, cpus=_number(entries["cpus"], "resources.cpus",
                                                               ceiling.cpus, ""))
    return resources


def _settings(tree: _Value, ceiling: Ceiling) -> Settings:
    entries = _mapping(tree, "")
    _known(entries, {"env", "secrets", "timeout", "build", "resources"}, "")
    settings = Settings()
    if "env" in entries:
        env = _mapping(entries["env"], "env")
        _names(env, "env")
        settings = dataclasses.replace(settings, env=tuple(
            (name, _scalar_text(entry, f"env.{name}")) for name, entry in env.items()))
    if "secrets" in entries:
        settings = dataclasses.replace(settings, secrets=_secret_names(entries["secrets"],
                                                                       dict(settings.env)))
    if "timeout" in entries and entries["timeout"].value is not None:
        settings = dataclasses.replace(settings, timeout=_number(entries["timeout"], "timeout",
                                                                 ceiling.timeout, " s"))
    if "build" in entries:
        settings = dataclasses.replace(settings, build=_build(entries["build"]))
    if "resources" in entries:
        settings = dataclasses.replace(settings, resources=_resources(entries["resources"],
                                                                      ceiling))
    return settings


def _secret_names(value: _Value, env: dict[str, str]) -> tuple[str, ...]:
    if value.kind == SCALAR and value.value is None:
        return ()
    if value.kind != SEQUENCE:
        raise SettingsError("secrets", "expected a list of secret names", value.line)
    names: list[str] = []
    for entry in value.value:
        name = entry.value if entry.kind == SCALAR else None
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SettingsError("secrets", "expected secret names (letters, digits and _, not "
                                "starting with a digit)", entry.line)
        if name.upper().startswith(RESERVED_PREFIX):
            raise SettingsError("secrets", f"{name}: names starting {RESERVED_PREFIX} are "
                                "SPEED's own", entry.line)
        if name in env:
            raise SettingsError("secrets", f"{name} is also set in env", entry.line)
        if name in names:
            raise SettingsError("secrets", f"{name} is listed twice", entry.line)
        names.append(name)
    return tuple(names)
