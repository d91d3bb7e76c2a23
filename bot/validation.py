"""Checks on what callers ask git to fetch, before git ever sees it."""
import fnmatch
import ipaddress
import re
import socket
import urllib.parse

MAX_URL = 2048
MAX_BRANCH = 255
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
# git check-ref-format's rules for one branch name (see git-check-ref-format(1)).
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


class Invalid(ValueError):
    """Input that must not reach git; the message says why."""


def check_url(url: str, allowed: tuple[str, ...]) -> str:
    """Return url if it is a repository URL that allowed_urls permits; raise Invalid otherwise."""
    if not url:
        raise Invalid("url: must not be empty")
    if len(url) > MAX_URL:
        raise Invalid(f"url: longer than {MAX_URL} characters")
    if _CONTROL.search(url):
        raise Invalid("url: must not contain spaces or control characters")
    if url.startswith("-"):
        raise Invalid("url: must not begin with '-'")
    if "::" in url.split("/", 1)[0]:
        raise Invalid("url: git transport helpers (such as ext::) are not allowed")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.hostname  # noqa: B018 - parses the host, which raises for e.g. an unclosed '['
    except ValueError:
        raise Invalid("url: not a valid URL") from None
    if parts.scheme not in ("https", "http", "ssh", "git"):
        raise Invalid(f"url: the scheme {parts.scheme or '(none)'!r} is not allowed")
    if not parts.hostname:
        raise Invalid("url: has no host")
    if parts.username is not None or parts.password is not None:
        if parts.scheme != "ssh" or parts.password is not None:
            raise Invalid("url: credentials in URLs are not accepted")
    if parts.hostname.startswith("-") or (parts.username or "").startswith("-"):
        raise Invalid("url: host and user must not begin with '-'")
    if not any(fnmatch.fnmatchcase(url, pattern) for pattern in allowed):
        raise Invalid("url: not allowed by runner.allowed_urls")
    if _is_internal(parts.hostname) and not any(_names_host(p, parts.hostname) for p in allowed):
        raise Invalid("url: loopback, private and link-local hosts need an allowed_urls pattern "
                      "that names them")
    return url


def _is_internal(host: str) -> bool:
    """Whether host is this machine or a private network, in any spelling git's resolver takes."""
    try:  # as the resolver sees it: IDNA-mapped (１２７。0。0。1 is 127.0.0.1), no trailing dot
        host = host.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        return True  # not a DNS name: only a pattern that names it may allow it
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the short forms inet_aton also takes: 127.1, 2130706433, 0x7f000001, 0
            address = ipaddress.ip_address(socket.inet_aton(host))
        except (OSError, ValueError):
            return False
    return address.is_loopback or address.is_private or address.is_link_local \
        or address.is_unspecified or address.is_reserved or address.is_multicast


def _names_host(pattern: str, host: str) -> bool:
    """Whether an allowed_urls pattern names this host literally (not through a wildcard)."""
    pattern_host = urllib.parse.urlsplit(pattern.replace("*", "x")).hostname
    return pattern_host == host and host in pattern


def check_source(url: str, branch: str, allowed: tuple[str, ...]) -> None:
    """Raise Invalid unless url and branch may be deployed."""
    check_url(url, allowed)
    check_branch(branch)


def check_branch(branch: str) -> str:
    """Return branch if git accepts it as a branch name (check-ref-format --branch rules)."""
    if not branch:
        raise Invalid("branch: must not be empty")
    if len(branch) > MAX_BRANCH:
        raise Invalid(f"branch: longer than {MAX_BRANCH} characters")
    if branch.startswith("-"):
        raise Invalid("branch: must not begin with '-'")
    if _REF_FORBIDDEN.search(branch):
        raise Invalid("branch: contains a character git forbids in branch names "
                      "(control characters, space, ~ ^ : ? * [ \\)")
    if (".." in branch or "@{" in branch or "//" in branch or branch == "@" or branch == "HEAD"
            or branch.startswith("/") or branch.endswith("/") or branch.endswith(".")):
        raise Invalid("branch: not a valid git branch name")
    for component in branch.split("/"):
        if component.startswith(".") or component.endswith(".lock"):
            raise Invalid("branch: not a valid git branch name")
    return branch
