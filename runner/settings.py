"""`.speed.yml`: the settings a commit carries, parsed and checked without any I/O.

Every error names the key (and the YAML line where there is one); nothing here raises anything
but SettingsError (a runner error: the deployment fails with its message), whatever the input."""
import contextlib
import dataclasses
import json
import math
import posixpath
import re
from typing import Any

import yaml
import yaml.reader
from docker.utils import parse_bytes

from runner.errors import SettingsInvalid

FILE = ".speed.yml"
MAX_BYTES = 64 * 1024
MAX_VALUE = 32 * 1024  # one environment variable or build argument
MAX_VALUES = 10_000  # values in the whole file, aliases counted as often as they are used
# All the text the settings carry (names and values, paths, ...), in UTF-8: aliases let a small
# file name one long value thousands of times, and every copy is stored and shown.
MAX_TEXT = 64 * 1024
MAX_KEY = 100  # characters of a key an error quotes: keys are the file's, of any length
MAX_QUOTED = 200  # characters of anything else from the file an error quotes
MIN_CPUS = 0.01  # Docker's: a quota that rounds to 0 would mean no limit at all
MIN_MEMORY = "6m"  # Docker's (6 MiB): it refuses a container below it
MAX_KEEP = 20  # earlier releases a service may keep for rollback
MAX_DRAIN = 600.0  # seconds an old release may go on serving
_HEALTH_PATH = re.compile(r"/[\x21-\x7e]{0,1023}")  # printable ASCII, no spaces
# libyaml reads a 64 KiB file of 32,767 numbers in ~0.3 s where PyYAML's own Python reader takes
# ~2 s, and refuses nesting deeper than 1000 levels (PyYAML's runs out of recursion).
LOADER = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_STAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
RESERVED_PREFIX = "SPEED_"


class SettingsError(SettingsInvalid):
    """The file cannot be used; the message names the key, and the line where known."""

    def __init__(self, key: str, problem: str, line: int | None = None):
        where = f" (line {line})" if line else ""
        super().__init__(f"{FILE}: {_cap(key, MAX_KEY)}{where}: {problem}")


def _cap(text: str, limit: int) -> str:
    """text, cut to at most limit characters (the cut marked with …)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


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
class Health:
    """How a release shows it is ready: an HTTP GET of path that answers 2xx."""

    path: str = "/"
    interval: float = 0.2  # seconds between two checks
    timeout: float = 2.0  # seconds one check may take
    deadline: float = 60.0  # seconds in all for the release to become healthy
    # Checks in a row that must pass: one lucky answer from an app about to fail moves nothing.
    passes: int = 2


@dataclasses.dataclass(frozen=True)
class Service:
    """A deployment that ends with a release that stays up, behind the proxy."""

    port: int  # where the app listens inside its container
    health: Health = Health()
    keep: int = 5  # earlier releases kept for rollback
    drain: float = 5.0  # seconds the old release goes on serving what it already has


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a deployment's commit asks for; the defaults are what a commit without the file gets."""

    env: tuple[tuple[str, str], ...] = ()
    secrets: tuple[str, ...] = ()
    timeout: float | None = None
    build: Build = Build()
    resources: Resources = Resources()
    service: Service | None = None  # without one, a job: its container runs to its exit

    def to_json(self) -> str:
        """The settings as stored and shown: plain JSON, secret names only (there are no values)."""
        return json.dumps(_plain(self))


def _plain(settings: Settings) -> dict:
    build, resources = settings.build, settings.resources
    return {"env": dict(settings.env), "secrets": list(settings.secrets),
            "timeout": settings.timeout,
            "build": {"dockerfile": build.dockerfile, "context": build.context,
                      "args": dict(build.args), "target": build.target},
            "resources": {"memory": resources.memory, "cpus": resources.cpus},
            "service": dataclasses.asdict(settings.service) if settings.service else None}


MAPPING, SEQUENCE, SCALAR = "mapping", "sequence", "scalar"


class _Value:
    """A parsed value: its kind, its content (pairs of _Value for a mapping, _Values for a
    sequence), the YAML line it starts on (None for values not read from YAML) and, for a
    plain scalar whose type YAML guessed, its text as written."""

    __slots__ = ("kind", "value", "line", "text")

    def __init__(self, kind: str, value: Any, line: int | None, text: str | None = None):
        self.kind, self.value, self.line, self.text = kind, value, line, text


_NOTHING = _Value(SCALAR, None, None)  # a key the file leaves out: as if null
MERGE_TAG = "tag:yaml.org,2002:merge"


def _from_yaml(node: yaml.Node, loader: yaml.constructor.SafeConstructor,
               budget: list[int]) -> _Value:
    # Aliases make a small file a huge tree (billion laughs): stop counting at MAX_VALUES.
    budget[0] -= 1
    if budget[0] < 0:
        raise SettingsError("file", f"more than {MAX_VALUES} values")
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            # `<<` would copy another mapping in; nodes are read here, not merged: say so, rather
            # than PyYAML's "could not determine a constructor".
            if key.tag == MERGE_TAG:
                raise SettingsError("file", "merge keys (<<) are not supported",
                                    key.start_mark.line + 1)
        return _Value(MAPPING, [(_from_yaml(k, loader, budget), _from_yaml(v, loader, budget))
                                for k, v in node.value], line)
    if isinstance(node, yaml.SequenceNode):
        return _Value(SEQUENCE, [_from_yaml(item, loader, budget) for item in node.value], line)
    # Plain: libyaml says "", PyYAML None.
    guessed = not node.style and node.tag == loader.resolve(yaml.ScalarNode, node.value,
                                                            (True, False))
    return _Value(SCALAR, loader.construct_object(node), line, node.value if guessed else None)


def _from_plain(value: Any) -> _Value:
    if isinstance(value, dict):  # to_json writes unset keys as null
        return _Value(MAPPING, [(_Value(SCALAR, k, None), _from_plain(v))
                                for k, v in value.items() if v is not None], None)
    if isinstance(value, list):
        return _Value(SEQUENCE, [_from_plain(item) for item in value], None)
    return _Value(SCALAR, value, None)


@contextlib.contextmanager
def _only_settings_errors():
    """Keep the module's promise: whatever goes wrong inside, the caller gets a SettingsError."""
    try:
        yield
    except SettingsError:
        raise
    except Exception as e:  # noqa: BLE001 - a YAML constructor's KeyError, an int too long, ...
        # A crash here would fail the deployment as "internal error"; the input caused it.
        raise SettingsError("file", f"a value SPEED cannot read ({type(e).__name__})") from e


def parse(text: bytes | str | None, ceiling: Ceiling) -> Settings:
    """The settings in a `.speed.yml` (None: the commit has none, so the defaults)."""
    if text is None:
        return Settings()
    with _only_settings_errors():
        tree = _tree(_decoded(text) if isinstance(text, bytes) else text)
        return Settings() if tree is None else _settings(tree, ceiling)


def from_json(text: str, ceiling: Ceiling) -> Settings:
    """Settings stored by to_json, checked again against today's ceiling."""
    with _only_settings_errors():
        return _settings(_from_plain(json.loads(text)), ceiling)


def _decoded(data: bytes) -> str:
    """The file's text: at most MAX_BYTES of UTF-8."""
    if len(data) > MAX_BYTES:
        raise SettingsError("file", f"larger than {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError("file", "not valid UTF-8") from None


def _tree(text: str) -> _Value | None:
    """The file's one YAML document as _Values (None: an empty file)."""
    try:
        loader = LOADER(text)  # inside the try: PyYAML's checks the characters as it is made
        try:
            node = loader.get_single_node()
            return None if node is None else _from_yaml(node, loader, [MAX_VALUES])
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (NUL, ESC, ...)
        code = e.character if isinstance(e.character, int) else ord(e.character)
        raise SettingsError("file", f"not valid YAML: character U+{code:04X} is not allowed",
                            _line(text, text.find(chr(code)))) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = _cap(getattr(e, "problem", None) or "not valid YAML", MAX_QUOTED)
        # libyaml puts the end of the file on a line after the last: say the last.
        line = min(mark.line + 1, len(text.splitlines()) or 1) if mark else None
        raise SettingsError("file", f"not valid YAML: {problem}", line) from None


def _line(text: str, index: int) -> int | None:
    """The line (from 1) of text[index], counting line breaks as YAML does (None: index -1)."""
    return len((text[:index] + "x").splitlines()) if index >= 0 else None


class _Budget:
    """The bytes of text the settings may still carry (MAX_TEXT), spent as each is converted:
    a value named through 2,884 aliases counts 2,884 times, and is refused at the third."""

    def __init__(self) -> None:
        self.left = MAX_TEXT

    def spend(self, text: str) -> str:
        """text, once counted; a SettingsError when the settings would carry too much."""
        self.left -= len(text.encode("utf-8", "surrogatepass"))
        if self.left < 0:  # no line: an alias's value has only its anchor's, the file is at fault
            raise SettingsError("file", f"its values come to more than {MAX_TEXT} bytes (YAML "
                                "aliases count each time they are used)")
        return text


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


def _scalar_text(value: _Value, key: str, budget: _Budget) -> str:
    """A string, number or boolean as the environment spells it, counted against the budget."""
    raw = value.value if value.kind == SCALAR else None
    if raw is not None and value.text is not None:
        # As written: YAML 1.1 would make 3.10 "3.1", 010 "8" and yes "true".
        text = value.text
    elif isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, int):
        text = _digits(raw, key, value.line)
    elif isinstance(raw, float) and math.isfinite(raw):
        text = repr(raw)
    elif isinstance(raw, str):
        text = raw
    else:
        raise SettingsError(key, "expected a string, number or boolean", value.line)
    if len(text) > MAX_VALUE:
        raise SettingsError(key, f"longer than {MAX_VALUE} characters", value.line)
    budget.spend(text)  # before reading it through: the budget bounds the work too
    if "\0" in text:
        raise SettingsError(key, "must not contain NUL", value.line)
    return text


def _digits(number: int, key: str, line: int | None) -> str:
    """An integer in decimal; Python spells out at most 4300 digits (hex in YAML gets past)."""
    try:
        return str(number)
    except ValueError:
        raise SettingsError(key, "a number too long to spell out; quote it to pass it as text",
                            line) from None


def _texts(entries: dict[str, _Value], key: str,
           budget: _Budget) -> tuple[tuple[str, str], ...]:
    """Names and their values as text (env, build.args), each counted against the budget."""
    return tuple((budget.spend(name), _scalar_text(entry, f"{key}.{name}", budget))
                 for name, entry in entries.items())


def _names(entries: dict[str, _Value], key: str) -> None:
    for name, entry in entries.items():
        if not _NAME.fullmatch(name):
            raise SettingsError(f"{key}.{name}", "not a valid name (letters, digits and _, not "
                                "starting with a digit)", entry.line)
        if name.upper().startswith(RESERVED_PREFIX):
            raise SettingsError(f"{key}.{name}", f"names starting {RESERVED_PREFIX} are SPEED's "
                                "own", entry.line)


def _is_number(raw: Any) -> bool:
    """An int, or a finite float (a boolean is neither)."""
    # No math.isfinite() on an int: YAML reads integers of any length, and float() overflows.
    if isinstance(raw, bool):
        return False
    return isinstance(raw, int) or (isinstance(raw, float) and math.isfinite(raw))


def _shown(number: float) -> str:
    """A number as a message quotes it: short, and never an overflow however many digits."""
    if isinstance(number, int) and abs(number) >= 10**15:
        sign = "-" if number < 0 else ""
        return f"{sign}about 1e+{round(math.log10(abs(number)))}"  # log10 takes any int
    return str(number) if isinstance(number, int) else f"{number:g}"


def _number(value: _Value, key: str, ceiling: float, unit: str) -> float:
    raw = value.value
    if not _is_number(raw):
        raise SettingsError(key, "expected a number", value.line)
    if raw <= 0:
        raise SettingsError(key, "must be greater than 0", value.line)
    if raw > ceiling:
        raise SettingsError(key, f"{_shown(raw)}{unit} is over the server's limit of "
                            f"{_shown(ceiling)}{unit}", value.line)
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


def _build(value: _Value, budget: _Budget) -> Build:
    entries = _mapping(value, "build")
    _known(entries, {"dockerfile", "context", "args", "target"}, "build")
    build = Build()
    if "dockerfile" in entries:
        build = dataclasses.replace(build, dockerfile=_path(entries["dockerfile"],
                                                            "build.dockerfile"))
    if "context" in entries:
        build = dataclasses.replace(build, context=_path(entries["context"], "build.context"))
    # The defaults count too: stored settings carry them, and must read back as the file did.
    budget.spend(build.dockerfile)
    budget.spend(build.context)
    if "args" in entries:
        args = _mapping(entries["args"], "build.args")
        for name, entry in args.items():
            if not _NAME.fullmatch(name):
                raise SettingsError(f"build.args.{name}", "not a valid name", entry.line)
        build = dataclasses.replace(build, args=_texts(args, "build.args", budget))
    if "target" in entries and entries["target"].value is not None:
        target = entries["target"]
        if not isinstance(target.value, str) or not _STAGE.fullmatch(target.value):
            raise SettingsError("build.target", "expected the name of a build stage",
                                target.line)
        build = dataclasses.replace(build, target=budget.spend(target.value))
    return build


def _resources(value: _Value, ceiling: Ceiling, budget: _Budget) -> Resources:
    entries = _mapping(value, "resources")
    _known(entries, {"memory", "cpus"}, "resources")
    resources = Resources()
    if "memory" in entries:
        resources = dataclasses.replace(resources, memory=_memory(entries["memory"], ceiling,
                                                                  budget))
    if "cpus" in entries:
        entry = entries["cpus"]
        cpus = _number(entry, "resources.cpus", ceiling.cpus, "")
        if cpus < MIN_CPUS:
            raise SettingsError("resources.cpus", f"{_shown(cpus)} is under Docker's minimum of "
                                f"{MIN_CPUS}", entry.line)
        resources = dataclasses.replace(resources, cpus=cpus)
    return resources


def size_of(raw: object) -> int | None:
    """The bytes a size such as 512m or 2g names (as Docker reads it); None if it names none."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        return None
    try:
        wanted = parse_bytes(raw)
    except Exception:  # noqa: BLE001 - docker's parser raises its own error types
        return None
    return wanted if wanted and wanted > 0 else None


def _memory(entry: _Value, ceiling: Ceiling, budget: _Budget) -> str:
    """A memory limit, as given: between Docker's minimum and the server's limit."""
    raw = entry.value
    wanted = size_of(raw)
    if wanted is None:
        raise SettingsError("resources.memory", "expected a size such as 512m or 2g", entry.line)
    shown = _cap(raw if isinstance(raw, str) else _shown(raw), MAX_QUOTED)
    if wanted > parse_bytes(ceiling.memory):
        raise SettingsError("resources.memory", f"{shown} is over the server's limit of "
                            f"{ceiling.memory}", entry.line)
    if wanted < parse_bytes(MIN_MEMORY):
        raise SettingsError("resources.memory", f"{shown} is under Docker's minimum of "
                            f"{MIN_MEMORY}", entry.line)
    return budget.spend(str(raw))


def _settings(tree: _Value, ceiling: Ceiling) -> Settings:
    entries = _mapping(tree, "")
    _known(entries, {"env", "secrets", "timeout", "build", "resources", "service"}, "")
    budget = _Budget()
    settings = Settings()
    if "env" in entries:
        env = _mapping(entries["env"], "env")
        _names(env, "env")
        settings = dataclasses.replace(settings, env=_texts(env, "env", budget))
    if "secrets" in entries:
        settings = dataclasses.replace(settings, secrets=_secret_names(
            entries["secrets"], dict(settings.env), budget))
    if "timeout" in entries and entries["timeout"].value is not None:
        settings = dataclasses.replace(settings, timeout=_number(entries["timeout"], "timeout",
                                                                 ceiling.timeout, " s"))
    # Always: its defaults count against the budget (see _build).
    settings = dataclasses.replace(settings, build=_build(entries.get("build", _NOTHING), budget))
    if "resources" in entries:
        settings = dataclasses.replace(settings, resources=_resources(entries["resources"],
                                                                      ceiling, budget))
    if "service" in entries and entries["service"].value is not None:
        settings = dataclasses.replace(settings, service=_service(entries["service"], ceiling))
    return settings


def _whole(value: _Value, key: str, low: int, high: int) -> int:
    raw = value.value
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise SettingsError(key, f"expected a whole number from {low} to {high}", value.line)
    return raw


def _seconds(value: _Value, key: str, low: float, high: float) -> float:
    raw = value.value
    if not _is_number(raw) or not low <= raw <= high:
        raise SettingsError(key, f"expected seconds from {_shown(low)} to {_shown(high)}",
                            value.line)
    return float(raw)


def _service(value: _Value, ceiling: Ceiling) -> Service:
    entries = _mapping(value, "service")
    _known(entries, {"port", "health", "keep", "drain"}, "service")
    if "port" not in entries:
        raise SettingsError("service.port", "required: the port the app listens on in its "
                            "container", value.line)
    service = Service(port=_whole(entries["port"], "service.port", 1, 65535))
    if "keep" in entries:
        service = dataclasses.replace(service, keep=_whole(entries["keep"], "service.keep",
                                                           0, MAX_KEEP))
    if "drain" in entries:
        service = dataclasses.replace(service, drain=_seconds(entries["drain"], "service.drain",
                                                              0, MAX_DRAIN))
    if "health" in entries and entries["health"].value is not None:
        service = dataclasses.replace(service, health=_health(entries["health"], ceiling))
    return service


def _health(value: _Value, ceiling: Ceiling) -> Health:
    entries = _mapping(value, "service.health")
    _known(entries, {"path", "interval", "timeout", "deadline", "passes"}, "service.health")
    health = Health()
    if "path" in entries:
        path = entries["path"]
        if not isinstance(path.value, str) or not _HEALTH_PATH.fullmatch(path.value):
            raise SettingsError("service.health.path", "expected a path such as /healthz",
                                path.line)
        health = dataclasses.replace(health, path=path.value)
    for key, low, high in (("interval", 0.1, 60), ("timeout", 0.1, 60)):
        if key in entries:
            health = dataclasses.replace(health, **{key: _seconds(
                entries[key], f"service.health.{key}", low, high)})
    if "passes" in entries:
        health = dataclasses.replace(health, passes=_whole(entries["passes"],
                                                           "service.health.passes", 1, 10))
    if "deadline" in entries:
        health = dataclasses.replace(health, deadline=_number(
            entries["deadline"], "service.health.deadline", ceiling.timeout, " s"))
    return health


def _secret_names(value: _Value, env: dict[str, str], budget: _Budget) -> tuple[str, ...]:
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
        names.append(budget.spend(name))
    return tuple(names)
