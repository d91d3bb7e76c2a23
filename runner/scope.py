"""Which deployments may receive a secret: the one rule, in one function."""
import dataclasses
import fnmatch
import re
import urllib.parse
from typing import Collection

_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
_HOST = re.compile(r"[a-z0-9.-]+(?::[0-9]{1,5})?")
# A path segment's characters: RFC 3986's, less `%` (checked first, for its own reason) and `;`
# (Tomcat and Jetty fronts drop `;…` from a segment, so `..;` is `..` to them).
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,=:@-]+")
# A pattern's: any but whitespace, as before (one with `<` or `;` matches no name, harmlessly).
_PATTERN_SEGMENT = re.compile(r"\S+")
_ODD_SEGMENTS = {"": "an empty segment", ".": "a '.' segment", "..": "a '..' segment"}


@dataclasses.dataclass(frozen=True)
class Scope:
    """Where a secret may go: repositories by host and path (globs in the path only), optional
    branch globs (none: every branch), and whether pull requests from the repository itself get it."""

    repositories: tuple[str, ...]
    branches: tuple[str, ...] = ()
    pull_requests: bool = False


@dataclasses.dataclass(frozen=True)
class Recipient:
    """What the rule looks at in a deployment."""

    url: str
    branch: str
    pull_request: int | None = None
    fork: bool = False


def host(url: str) -> str:
    """A URL's server as scopes name it (host[:port]); ValueError saying why if it names none."""
    return _host(urllib.parse.urlsplit(url))


def _host(parts: urllib.parse.SplitResult) -> str:
    """A split URL's host, lower-case, with its port unless the scheme's; ValueError if odd."""
    name = (parts.hostname or "").rstrip(".")
    if not name:
        raise ValueError("the URL names no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("its port is not one") from None
    if port and port != _DEFAULT_PORTS.get(parts.scheme):
        name += f":{port}"
    # Only names a pattern can hold: an encoded or IDN host would be another server's to a front.
    if not _HOST.fullmatch(name):
        raise ValueError("its host is not a plain host name")
    return name


def _path_problem(path: str, segment: re.Pattern[str] = _SEGMENT) -> str | None:
    """What in a path (segments joined by /) a server could read as another path, or None."""
    # Fronts decode `%2F` and `%2e`, take `\` for `/`, fold Unicode, collapse `.`, `..` and
    # empty segments: such a path may be served from a repository its text does not name.
    for part in path.split("/"):
        if part in _ODD_SEGMENTS:
            return f"its path has {_ODD_SEGMENTS[part]}"
        if "%" in part:
            return "its path has an encoded character: %"
        if "\\" in part:
            return "its path has a backslash"
        if not part.isascii():
            return "its path has a non-ASCII character"
        if not segment.fullmatch(part):
            return f"its path has {next(c for c in part if not segment.fullmatch(c))!r}"
    return None


def repository(url: str, ignore_case: Collection[str] = ()) -> str:
    """A clone URL as host[:port]/path, the form scopes name; ValueError saying why if unsafe."""
    # https://GitHub.com/acme/app.git and ssh://git@github.com:22/acme/app are both
    # github.com/acme/app. The path keeps its case; on hosts in ignore_case .GIT is .git too.
    if "\\" in url:  # WHATWG parsers read it as `/`, urlsplit does not: they disagree on host
        raise ValueError("the URL has a backslash")
    if "?" in url or "#" in url:  # no part of a repository's name; a front may route on it
        raise ValueError("the URL has a query or a fragment")
    parts = urllib.parse.urlsplit(url)
    name = _host(parts)
    path = parts.path.removeprefix("/")
    if path.endswith(".git") or (name in ignore_case and path.lower().endswith(".git")):
        path = path[:-4]
    why = _path_problem(path)
    if why:
        raise ValueError(why)
    return f"{name}/{path}"


def check_pattern(pattern: str) -> str:
    """pattern with its host lower-cased, if a valid scope pattern; ValueError saying why."""
    name, _, path = pattern.strip().partition("/")
    name = name.lower()
    # A host has a dot or a port (owner/name alone names no host); no wildcards in it (a glob
    # there could reach github.com.evil.example). The path keeps its case: it counts.
    if "://" in pattern:
        why = "a pattern has no scheme"
    elif not _HOST.fullmatch(name) or not ("." in name or ":" in name):
        why = "its host is not written out"
    else:
        why = _path_problem(path, _PATTERN_SEGMENT)
    if why:
        raise ValueError(f"{pattern!r}: {why}; name repositories by host and path, such as "
                         "github.com/acme/app or github.com/acme/* (no wildcards in the host)")
    return f"{name}/{path}"


def _matches(pattern: str, name: str, ignore_case: Collection[str]) -> bool:
    """Whether a pattern names a repository: the same host, and its path by a segment glob."""
    # * and ? stay within one segment; the path's case counts unless its host ignores it.
    pattern_host, _, pattern_path = pattern.partition("/")
    name_host, _, path = name.partition("/")
    if pattern_host.lower() != name_host:
        return False
    regex = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
                    for c in pattern_path)
    # ASCII: a Unicode fold (K, the Kelvin sign, for k) would match a name the host does not.
    flags = re.IGNORECASE | re.ASCII if name_host in ignore_case else 0
    return re.fullmatch(regex, path, flags) is not None


def barred(recipient: Recipient) -> str | None:
    """Why the recipient may have no secret at all, whatever its scope, or None."""
    # Said before any secret is looked up: its answer must not tell which names exist.
    return "never for pull requests from forks" if recipient.fork else None


def refusal(scope: Scope, recipient: Recipient,
            ignore_case: Collection[str] = frozenset()) -> str | None:
    """Why the recipient may not have a secret of this scope, or None if it may."""
    # ignore_case: the hosts (host[:port]) known to ignore a path's case; none by default.
    why = barred(recipient)
    if why:
        return why
    try:
        name = repository(recipient.url, ignore_case)
    except ValueError as e:
        return f"not defined for this repository ({e})"
    if not any(_matches(pattern, name, ignore_case) for pattern in scope.repositories):
        return f"not defined for this repository ({name})"
    if scope.branches and not any(fnmatch.fnmatchcase(recipient.branch, b) for b in scope.branches):
        return f"not defined for branch {recipient.branch}"
    if recipient.pull_request is not None and not scope.pull_requests:
        return "not for pull requests"
    return None
