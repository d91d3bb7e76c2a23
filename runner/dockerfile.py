"""Which images a Dockerfile builds on or copies from, read as Docker's parser reads it.

A build may use any image it can name, and the engine also takes a bare prefix of an image id
(`FROM cf`): that would reach other deployments' images. So every reference is expanded as the
engine would expand it and refused if it is an id, one of SPEED's images, or cannot be known
before the build."""
import dataclasses
import re

from runner.errors import BuildFailed

_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.*?)\s*$")
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_ID = re.compile(r"(?:sha256:)?[0-9a-f]{1,64}")
_OWN_IMAGE = re.compile(r"(?:^|/)speed-[0-9a-f]{12}(?:[:@]|$)")
_FROM_FLAG = re.compile(r"^--from=(.*)$", re.I)
_MOUNT_FROM = re.compile(r"(?:^|,)from=([^,]*)", re.I)


@dataclasses.dataclass(frozen=True)
class Reference:
    """An image a Dockerfile names, as written and as the engine would resolve it."""

    line: int
    instruction: str
    written: str
    expanded: str | None  # None: it depends on a variable nobody sets before the build
    stage: bool  # whether it names a stage defined before it (or scratch): no image at all


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(first line, instruction in upper case, its arguments) as Docker's parser sees them:
    parser directives (escape) first, comment lines dropped even inside a continuation, the
    escape character ending a line continuing it, a leading byte order mark ignored."""
    lines = text.removeprefix("\ufeff").splitlines()
    escape, start = "\\", 0
    for start, line in enumerate(lines):  # directives: only at the very top
        found = _DIRECTIVE.fullmatch(line.strip())
        if not found:
            break
        if found.group(1).lower() == "escape" and found.group(2) in ("\\", "`"):
            escape = found.group(2)
    else:
        start = len(lines)
    result, parts, first = [], [], 0
    for number, line in enumerate(lines[start:], start=start + 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops these, inside a continuation too
        if not parts:
            first = number
        if line.rstrip().endswith(escape):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        logical, parts = " ".join(parts).strip(), []
        keyword, _, rest = logical.partition(" ")
        result.append((first, keyword.upper(), rest.strip()))
    if parts:
        logical = " ".join(parts).strip()
        keyword, _, rest = logical.partition(" ")
        result.append((first, keyword.upper(), rest.strip()))
    return result


def _expand(word: str, known: dict[str, str]) -> str | None:
    """word with $NAME, ${NAME}, ${NAME:-x} and ${NAME:+x} replaced; None if it needs a
    variable that has no value."""
    missing = False

    def value(found: re.Match) -> str:
        nonlocal missing
        name = found.group(1) or found.group(4)
        operator, word_ = found.group(2), found.group(3) or ""
        current = known.get(name)
        if operator in (":-", "-"):
            return current if current else word_
        if operator in (":+", "+"):
            return word_ if current else ""
        if current is None:
            missing = True
            return ""
        return current

    expanded = _VARIABLE.sub(value, word)
    return None if missing or "$" in expanded else expanded


def _args(arguments: str) -> dict[str, str | None]:
    """The names (and default values) an ARG instruction declares."""
    declared = {}
    for item in arguments.split():
        name, equals, default = item.partition("=")
        declared[name] = default.strip("\"'") if equals else None
    return declared


def references(text: str, build_args: dict[str, str]) -> list[Reference]:
    """Every image the Dockerfile names (FROM, COPY/ADD --from, RUN --mount from=, and the same
    inside ONBUILD), expanded as the engine expands it."""
    global_args: dict[str, str] = {}  # ARGs before the first FROM: what FROM may use
    known = dict(build_args)
    found: list[Reference] = []
    stages = {"scratch"}  # names (lower case) and indexes of the stages so far
    froms = 0

    def name(line: int, keyword: str, written: str, variables: dict[str, str]) -> None:
        expanded = _expand(written, variables)
        found.append(Reference(line, keyword, written, expanded,
                               expanded is not None and expanded.lower() in stages))

    for line, keyword, rest in _instructions(text):
        if keyword == "ONBUILD":
            inner, _, rest = rest.partition(" ")
            keyword, rest = inner.upper(), rest.strip()
        if keyword == "ARG":
            for arg, default in _args(rest).items():
                value = build_args.get(arg, default)
                if value is not None:
                    known[arg] = value
                    if not froms:
                        global_args[arg] = value
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            if words:
                name(line, "FROM", words[0], global_args)
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2].lower())
            stages.add(str(froms))
            froms += 1
            known = {**build_args, **global_args}
        elif keyword in ("COPY", "ADD", "RUN"):
            for word in rest.split():
                if not word.startswith("--"):
                    break
                flag = _FROM_FLAG.match(word)
                values = [flag.group(1)] if flag else (
                    _MOUNT_FROM.findall(word.partition("=")[2])
                    if word.lower().startswith("--mount=") else [])
                for value in values:
                    name(line, keyword, value.strip("\"'"), known)
    return found


def refuse_unsafe_images(text: str, build_args: dict[str, str]) -> None:
    """BuildFailed unless every image the Dockerfile names is a stage of its own, `scratch`, or
    an image by name that is none of SPEED's: no image ids (the engine takes any unique prefix
    of one), nothing that depends on a variable set by no one."""
    for ref in references(text, build_args):
        name = ref.expanded
        if name is None:
            raise BuildFailed(f"Dockerfile line {ref.line}: {ref.instruction} {ref.written}: a "
                              "variable it needs has no value (set it with ARG or build.args)")
        if ref.stage:
            continue
        lowered = name.lower()
        if _ID.fullmatch(lowered):
            raise BuildFailed(f"Dockerfile line {ref.line}: {ref.instruction} {name}: images are "
                              "named by repository (and tag), not by id")
        if _OWN_IMAGE.search(lowered):
            raise BuildFailed(f"Dockerfile line {ref.line}: deployments may not use the images "
                              "SPEED builds for deployments")
