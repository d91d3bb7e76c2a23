"""Which deployments may receive a secret: the one rule, in one function."""
import dataclasses
import fnmatch
import re
import urllib.parse

_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
_PATTERN = re.compile(r"[a-z0-9.-]+(?::[0-9]{1,5})?/[^\s]+")


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


def repository(url: str) -> str:
    """A clone URL as host[:port]/path, the form scopes name: https://GitHub.com/acme/app.git
    and ssh://git@github.com:22/acme/app are both github.com/acme/app."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.port and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host += f":{parts.port}"
    return f"{host}/{parts.path.strip('/').removesuffix('.git').lower()}"


def check_pattern(pattern: str) -> str:
    """pattern, lower-cased, if it names repositories by host and path with the host written
    out (a glob in the host could reach github.com.evil.example); ValueError otherwise."""
    pattern = pattern.strip().lower()
    host = pattern.partition("/")[0]
    # A host has a dot or a port (owner/name alone names no host); no wildcards in it.
    if not _PATTERN.fullmatch(pattern) or not ("." in host or ":" in host) \
            or "*" in host or "?" in host:
        raise ValueError(f"{pattern!r}: name repositories by host and path, such as "
                         "github.com/acme/app or github.com/acme/* (no wildcards in the host)")
    return pattern


def _matches(pattern: str, name: str) -> bool:
    """A glob in which * and ? stay within one path segment."""
    regex = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
                    for c in pattern)
    return re.fullmatch(regex, name) is not None


def refusal(scope: Scope, recipient: Recipient) -> str | None:
    """Why the recipient may not have a secret of this scope, or None if it may."""
    if recipient.fork:
        return "never for pull requests from forks"
    name = repository(recipient.url)
    if not any(_matches(pattern, name) for pattern in scope.repositories):
        return f"not defined for this repository ({name})"
    if scope.branches and not any(fnmatch.fnmatchcase(recipient.branch, b) for b in scope.branches):
        return f"not defined for branch {recipient.branch}"
    if recipient.pull_request is not None and not scope.pull_requests:
        return "not for pull requests"
    return None
