"""Who may call what: API tokens for the API, deployment tokens for a container's own callbacks."""
import hashlib
import hmac

from aiohttp import web

from bot.errors import json_error
from runner.pipeline import token_hash
from storage.models import Deployment


def bearer(request: web.Request) -> str | None:
    """The token in an `Authorization: Bearer` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _matches_any(token: str, tokens: tuple[str, ...]) -> bool:
    # Compare digests of equal length against every token, so timing says nothing about either.
    digest = hashlib.sha256(token.encode()).digest()
    found = False
    for candidate in tokens:
        found |= hmac.compare_digest(digest, hashlib.sha256(candidate.encode()).digest())
    return found


def api_token_ok(request: web.Request, tokens: tuple[str, ...]) -> bool:
    """Whether the request may use the API: no tokens configured, or one of them presented."""
    if not tokens:
        return True
    token = bearer(request)
    return token is not None and _matches_any(token, tokens)


def require_api_token(request: web.Request, tokens: tuple[str, ...]) -> None:
    """Refuse the request unless api_token_ok."""
    if not api_token_ok(request, tokens):
        raise json_error(401, "A valid API token is required (Authorization: Bearer <token>)",
                         **{"WWW-Authenticate": "Bearer"})


def deployment_token_ok(request: web.Request, deployment: Deployment) -> bool:
    """Whether the request carries this deployment's own token."""
    token = bearer(request)
    if token is None or not deployment.token_hash:
        return False
    return hmac.compare_digest(token_hash(token), deployment.token_hash)


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
