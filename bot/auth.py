"""Who may call what: API tokens for the API, deployment tokens for a container's own callbacks."""
import hashlib
import hmac
from typing import Iterable

from aiohttp import web

from bot.errors import json_error
from runner.pipeline import token_hash
from storage.models import Deployment


def bearer(request: web.Request) -> str | None:
    """The token in an `Authorization: Bearer` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


SESSION_COOKIE = "speed_session"
SESSION_SECONDS = 7 * 24 * 3600
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


def session_value(token: str) -> str:
    """What a login session's cookie holds for an API token: derived from it, never the token,
    so a leaked cookie does not reveal the token, and removing the token ends its sessions."""
    return hmac.new(token.encode(), b"speed-session", hashlib.sha256).hexdigest()


def api_token_ok(request: web.Request, tokens: tuple[str, ...]) -> bool:
    """Whether the request may use the API: no tokens configured, or one of them presented (as a
    bearer token, or through a login session's cookie)."""
    if not tokens:
        return True
    token = bearer(request)
    if token is not None and known_token(token, tokens) is not None:
        return True
    session = request.cookies.get(SESSION_COOKIE)
    return bool(session) and _matching(session, [session_value(t) for t in tokens]) is not None


def token_required() -> web.HTTPException:
    """The 401 for a request that needed an API token and brought none that is valid."""
    return json_error(401, "A valid API token is required (Authorization: Bearer <token>)",
                      **{"WWW-Authenticate": "Bearer"})


def require_api_token(request: web.Request, tokens: tuple[str, ...]) -> None:
    """Refuse the request unless api_token_ok."""
    if not api_token_ok(request, tokens):
        raise token_required()


def deployment_token_ok(request: web.Request, deployment: Deployment) -> bool:
    """Whether the request carries this deployment's own token."""
    token = bearer(request)
    if token is None or not deployment.token_hash:
        return False
    return hmac.compare_digest(token_hash(token), deployment.token_hash)


def reads_need_token(request: web.Request, tokens: tuple[str, ...], public_reads: bool) -> bool:
    """Whether this read must present an API token (or a login session) and did not."""
    if request.method not in ("GET", "HEAD") or not tokens or public_reads:
        return False
    if request.path in _OPEN_PATHS or request.path.startswith(_OPEN_PREFIXES):
        return False
    return not api_token_ok(request, tokens)


@web.middleware
async def same_origin_middleware(request: web.Request, handler):
    """Refuse state-changing requests that a browser sends from another site's page.

    Without API tokens the API is open on loopback, and any page a user visits could otherwise
    POST to it (a form or a text/plain fetch needs no preflight). Scripts, curl and containers
    send no Origin, so they are unaffected."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        origin = request.headers.get("Origin")
        fetch_site = request.headers.get("Sec-Fetch-Site", "same-origin")
        own = f"{request.scheme}://{request.host}"
        if fetch_site not in ("same-origin", "none") or (origin and origin != own):
            raise json_error(403, "Cross-site requests are refused")
    return await handler(request)
