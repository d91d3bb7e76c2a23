"""Who may call what: API tokens for the API, deployment tokens for a container's own callbacks."""
import hashlib
import hmac
import re
from typing import Iterable

from aiohttp import web
from yarl import URL

from bot.config import Config, is_loopback, public_url
from bot.errors import json_error
from bot.keys import config_key, store_key, trusted_hosts_key
from runner.pipeline import token_hash
from storage import sessions
from storage.models import Deployment


def bearer(request: web.Request) -> str | None:
    """The token in an `Authorization: Bearer` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


SESSION_COOKIE = "speed_session"
SESSION_SECONDS = 7 * 24 * 3600  # how long a login session lasts (storage/sessions.py keeps them)
# Open whatever auth says: health checks, the API description, README badges, the login page and
# what it loads. (/webhook checks its own signature; it is a POST.)
_OPEN_PATHS = ("/healthz", "/openapi.json", "/login")
_OPEN_PREFIXES = ("/static/", "/badge/")


def _matching(presented: str, expected: Iterable[str]) -> str | None:
    """The candidate that presented equals, if any."""
    # Digests of equal length, compared against every candidate alike: timing tells nothing about
    # how much of a guess was right, or which candidate it was.
    digest = hashlib.sha256(presented.encode()).digest()
    found = None
    for candidate in expected:
        if hmac.compare_digest(digest, hashlib.sha256(candidate.encode()).digest()):
            found = candidate
    return found


def known_token(presented: str, tokens: tuple[str, ...]) -> str | None:
    """The API token presented is, if it is one."""
    return _matching(presented, tokens)


async def api_token_ok(request: web.Request, tokens: tuple[str, ...]) -> bool:
    """Whether the request may use the API: no tokens configured, or one of them presented (as a
    bearer token, or through the cookie of a login session made with one of them)."""
    if not tokens:
        return True
    token = bearer(request)
    if token is not None and known_token(token, tokens) is not None:
        return True
    session = request.cookies.get(SESSION_COOKIE)
    # Found by the sha256 of a 256-bit random value: timing cannot lead a guess closer to one.
    return bool(session) and await request.app[store_key].run(sessions.valid, session, tokens)


def token_required() -> web.HTTPException:
    """The 401 for a request that needed an API token and brought none that is valid."""
    return json_error(401, "A valid API token is required (Authorization: Bearer <token>)",
                      **{"WWW-Authenticate": "Bearer"})


async def require_api_token(request: web.Request, tokens: tuple[str, ...]) -> None:
    """Refuse the request unless api_token_ok."""
    if not await api_token_ok(request, tokens):
        raise token_required()


def deployment_token_ok(request: web.Request, deployment: Deployment) -> bool:
    """Whether the request carries this deployment's own token."""
    token = bearer(request)
    if token is None or not deployment.token_hash:
        return False
    return hmac.compare_digest(token_hash(token), deployment.token_hash)


async def reads_need_token(request: web.Request, tokens: tuple[str, ...],
                           public_reads: bool) -> bool:
    """Whether this read must present an API token (or a login session) and did not."""
    if request.method not in ("GET", "HEAD") or not tokens or public_reads:
        return False
    if request.path in _OPEN_PATHS or request.path.startswith(_OPEN_PREFIXES):
        return False
    return not await api_token_ok(request, tokens)


# A Host header as browsers send it: a bracketed IPv6 address or a name, then perhaps a port.
# Anything else (userinfo, a path, spaces) is no name SPEED goes by.
_HOST = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::[0-9]{1,5})?")


def host_name(authority: str) -> str:
    """The host of a Host header: lower-case, without port, brackets or final dot ("" if none)."""
    match = _HOST.fullmatch(authority.lower())
    return match["ip6"] or match["name"].removesuffix(".") if match else ""


def _public(config: Config) -> URL | None:
    """server.public_url, if it is an http(s) URL with a host."""
    try:
        url = URL(public_url(config))
    except ValueError:
        return None
    return url if url.scheme in ("http", "https") and url.host else None


def _origin(url: URL | None) -> tuple[str, str, int | None] | None:
    """A URL's origin as (scheme, host, port), default ports filled in; None without a host."""
    return (url.scheme, url.host, url.port) if url is not None and url.host else None


def _local_name(request: web.Request, name: str) -> bool:
    """Whether name reaches SPEED without any other site's say: loopback, server.host,
    runner.callback_host, or the address this connection arrived on."""
    config = request.app[config_key]
    names = {config.server.host, config.runner.callback_host}
    # Containers call back on http://<Docker gateway>:<port>, the address of the listener they
    # reach (the callback listener, or the main one on 0.0.0.0). An address literal cannot be
    # rebound: a page whose URL names it has that address as its origin.
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if sockname:
        names.add(str(sockname[0]))
    names = {n.lower().strip("[]").removesuffix(".") for n in names} - {""}
    return bool(name) and (is_loopback(name) or name in names)


def host_trusted(request: web.Request) -> bool:
    """Whether the request names a host SPEED goes by: a local name, or server.public_url's."""
    host = request.headers.get("Host")
    if host is None:  # no browser omits it, so no page can be behind a request without one
        return True
    name = host_name(host)
    public = _public(request.app[config_key])
    return _local_name(request, name) or (public is not None and name == public.host)


def origin_allowed(request: web.Request, origin: str) -> bool:
    """Whether a browser's Origin is SPEED's own: server.public_url's origin (so a page behind an
    HTTPS proxy works), or, for a request to a local name, that request's own origin."""
    try:
        presented = _origin(URL(origin))
    except ValueError:
        return False
    allowed = {_origin(_public(request.app[config_key]))}
    if _local_name(request, host_name(request.headers.get("Host", ""))):
        try:
            allowed.add(_origin(URL(f"{request.scheme}://{request.headers['Host']}")))
        except ValueError:
            pass
    return presented is not None and presented in allowed


# How many (Host, local address) verdicts each application keeps: the ones its clients use.
TRUSTED_HOSTS_KEPT = 256


def _trusted_host(request: web.Request) -> bool:
    """host_trusted, decided once per Host header and local address (it depends on nothing
    else: the configuration is fixed for the application's life)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    key = (request.headers.get("Host"), sockname and sockname[0])
    verdicts = request.app[trusted_hosts_key]
    verdict = verdicts.get(key)
    if verdict is None:
        if len(verdicts) >= TRUSTED_HOSTS_KEPT:  # many names tried (a scan): start again
            verdicts.clear()
        verdict = verdicts[key] = host_trusted(request)
    return verdict


@web.middleware
async def host_guard_middleware(request: web.Request, handler):
    """Answer 421 to every request for a host name SPEED does not go by, reads included.

    DNS rebinding: a page at http://evil.example:8080 whose name its owner then points at
    127.0.0.1 is same-origin with a loopback SPEED, so the browser lets it send and read anything;
    only the Host header, evil.example, gives it away."""
    if not _trusted_host(request):
        raise json_error(421, "This server does not answer to that host name; reach it by "
                              "loopback, server.host or server.public_url")
    return await handler(request)


@web.middleware
async def same_origin_middleware(request: web.Request, handler):
    """Refuse state-changing requests that a browser sends from another site's page.

    Without API tokens the API is open on loopback, and any page a user visits could otherwise
    POST to it (a form or a text/plain fetch needs no preflight). Scripts, curl and containers
    send no Origin, so they are unaffected."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        origin = request.headers.get("Origin")
        fetch_site = request.headers.get("Sec-Fetch-Site", "same-origin")
        foreign = bool(origin) and not origin_allowed(request, origin)
        if fetch_site not in ("same-origin", "none") or foreign:
            raise json_error(403, "Cross-site requests are refused")
    return await handler(request)
