"""Checks on what callers ask git to fetch, before git ever sees it."""
import asyncio
import concurrent.futures
import contextlib
import fnmatch
import functools
import ipaddress
import re
import socket
import urllib.parse

MAX_URL = 2048
MAX_BRANCH = 255
# How long a request waits for its URL's host to resolve. Longer: a slow resolver holds up /start
# and webhooks; a name that does not resolve in time is checked again when it is cloned.
LOOKUP_TIMEOUT = 2.0
# Space and every Unicode control character (category Cc: C0, DEL and C1 — U+009B is a CSI that
# terminals act on, U+0085 a line break), however git itself would take them.
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]")
# git check-ref-format's rules for one branch name (see git-check-ref-format(1)), plus C1.
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f~^:?*\[\\]")


class Invalid(ValueError):
    """Input that must not reach git; the message says why."""


class Unresolved(Exception):
    """A URL's host name did not resolve (in time)."""


_INTERNAL_HOST = "url: loopback, private and link-local hosts need an allowed_urls pattern that " \
                 "names them"
# Lookups in threads of their own: a hanging resolver must not starve asyncio's default executor,
# which the Docker client uses.
_LOOKUPS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="speed-dns")


def check_url(url: str, allowed: tuple[str, ...]) -> str:
    """Return url if it is a repository URL that allowed_urls permits; raise Invalid otherwise."""
    return _checked_url(url, tuple(allowed))


# Decided once per URL (a pure function of its text and the patterns): a push's check took a
# twentieth of a webhook's time. Refusals raise, so they are never kept.
@functools.lru_cache(maxsize=1024)
def _checked_url(url: str, allowed: tuple[str, ...]) -> str:
    if not url:
        raise Invalid("url: must not be empty")
    if len(url) > MAX_URL:
        raise Invalid(f"url: longer than {MAX_URL} characters")
    if _CONTROL.search(url):
        raise Invalid("url: must not contain spaces or control characters "
                      "(U+0000-U+001F, U+007F-U+009F)")
    if url.startswith("-"):
        raise Invalid("url: must not begin with '-'")
    if "::" in url.split("/", 1)[0]:
        raise Invalid("url: git transport helpers (such as ext::) are not allowed")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises for e.g. an unclosed '[' or port 99999
    except ValueError:
        raise Invalid("url: not a valid URL") from None
    if port == 0:
        raise Invalid("url: port 0 is no port a server listens on")
    if parts.scheme not in ("https", "http", "ssh", "git"):
        raise Invalid(f"url: the scheme {parts.scheme or '(none)'!r} is not allowed")
    if not parts.hostname:
        raise Invalid("url: has no host")
    if parts.username is not None or parts.password is not None:
        if parts.scheme != "ssh" or parts.password is not None:
            raise Invalid("url: credentials in URLs are not accepted")
    if parts.hostname.startswith("-") or (parts.username or "").startswith("-"):
        raise Invalid("url: host and user must not begin with '-'")
    if "%" in parts.hostname:  # curl decodes it: %31%32%37.0.0.1 would reach 127.0.0.1
        raise Invalid("url: percent-encoded hosts are not accepted")
    if not any(fnmatch.fnmatchcase(url, pattern) for pattern in allowed):
        raise Invalid("url: not allowed by runner.allowed_urls")
    if _is_internal(parts.hostname) and not any(_names_host(p, parts.hostname) for p in allowed):
        raise Invalid(_INTERNAL_HOST)
    return url


def _is_internal(host: str) -> bool:
    """Whether host is this machine or a private network, in any spelling git's resolver takes."""
    try:  # as the resolver sees it: IDNA-mapped (１２７。0。0。1 is 127.0.0.1), no trailing dot
        host = host.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        return True  # not a DNS name: only a pattern that names it may allow it
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = _literal(host)
    return address is not None and _internal(address)


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address host spells, if it is an IP address rather than a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        try:  # the short forms inet_aton also takes: 127.1, 2130706433, 0x7f000001, 0
            return ipaddress.ip_address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether address is this machine, a private network, or cloud metadata (such as
    169.254.169.254, or Alibaba's 100.100.100.200 in the shared 100.64/10 range)."""
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.1 reaches 10.0.0.1
    return any(a.is_loopback or a.is_private or a.is_link_local or a.is_unspecified
               or a.is_reserved or a.is_multicast or not a.is_global
               for a in (address, mapped) if a is not None)


def _names_host(pattern: str, host: str) -> bool:
    """Whether an allowed_urls pattern names this host literally (not through a wildcard)."""
    pattern_host = urllib.parse.urlsplit(pattern.replace("*", "x")).hostname
    return pattern_host == host and host in pattern.lower()


async def addresses_of(url: str, allowed: tuple[str, ...], timeout: float) -> tuple[str, ...]:
    """The addresses a checked url's host resolves to, once none of them is internal.

    () if a pattern names the host or it is a public IP address (nothing to resolve or pin).
    Raise Invalid if any address is internal, Unresolved if the name does not resolve within
    timeout."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if any(_names_host(p, host) for p in allowed):
        return ()
    if _is_internal(host):  # again: at clone time, allowed_urls may have changed since the request
        raise Invalid(_INTERNAL_HOST)
    if _literal(host) is not None:
        return ()
    lookup = functools.partial(socket.getaddrinfo, host, parts.port or 0, type=socket.SOCK_STREAM)
    try:
        async with asyncio.timeout(timeout):
            found = await asyncio.get_running_loop().run_in_executor(_LOOKUPS, lookup)
    except (OSError, UnicodeError, TimeoutError):
        raise Unresolved(f"url: the host {host} does not resolve") from None
    addresses = tuple(dict.fromkeys(info[4][0].partition("%")[0] for info in found))
    if any(_internal(ipaddress.ip_address(a)) for a in addresses):
        # The address itself is not echoed: a split-horizon DNS would reveal internal ones.
        raise Invalid(f"url: {host} resolves to a loopback, private or link-local address; it "
                      "needs an allowed_urls pattern that names it")
    return addresses


async def check_addresses(url: str, allowed: tuple[str, ...],
                          timeout: float = LOOKUP_TIMEOUT) -> None:
    """Raise Invalid if a checked url's host resolves to an internal address. A name that does
    not resolve passes: the clone resolves it again and fails with a clear message."""
    with contextlib.suppress(Unresolved):
        await addresses_of(url, allowed, timeout)


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
        raise Invalid("branch: contains a character refused in branch names "
                      "(control characters U+0000-U+001F, U+007F-U+009F, space, ~ ^ : ? * [ \\)")
    if (".." in branch or "@{" in branch or "//" in branch or branch == "@" or branch == "HEAD"
            or branch.startswith("/") or branch.endswith("/") or branch.endswith(".")):
        raise Invalid("branch: not a valid git branch name")
    for component in branch.split("/"):
        if component.startswith(".") or component.endswith(".lock"):
            raise Invalid("branch: not a valid git branch name")
    return branch
