"""Live deployments: Server-Sent Events with a deployment's status and new results as they come."""
import hashlib

from aiohttp import web

from bot.api import deployment_or_404
from bot.auth import SESSION_COOKIE, api_token_ok, bearer, known_token
from bot.keys import config_key, feed_key

routes = web.RouteTableDef()

KEEPALIVE_SECONDS = 15


async def _client_of(request: web.Request) -> str:
    """Whose stream this is, for the per-client cap: its API token or login session, else its
    address. Only a valid one counts: otherwise every made-up token would be a new client."""
    tokens = request.app[config_key].auth.api_tokens
    token, session = bearer(request), request.cookies.get(SESSION_COOKIE)
    if tokens and token and known_token(token, tokens):
        return "token " + hashlib.sha256(token.encode()).hexdigest()
    if tokens and session and await api_token_ok(request, tokens):
        return "session " + hashlib.sha256(session.encode()).hexdigest()
    return f"address {request.remote}"


def _cursor(request: web.Request) -> int:
    """The result id to resume after: Last-Event-ID (EventSource reconnecting), else ?after."""
    after = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    return int(after) if after.isascii() and after.isdigit() and len(after) < 19 else 0


@routes.get("/deployments/{id}/events")
async def deployment_events(request: web.Request) -> web.StreamResponse:
    """`status` events (the deployment as /info shows it) and `log` events (each new result, its
    text JSON-encoded, its id the result's) until the deployment finished, then `end`.

    `?after=N` or a `Last-Event-ID` header resumes after result N. The feed (bot/feed.py) reads
    for every stream at once; 429 or 503 when too many streams are open."""
    feed = request.app[feed_key]
    with feed.stream(await _client_of(request)) as watch:
        target_id = (await deployment_or_404(request)).id
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        feed.follow(watch, target_id, _cursor(request), request)
        while (events := await watch.take(KEEPALIVE_SECONDS)) is not None:
            try:
                # Nothing for KEEPALIVE_SECONDS: a comment line, since proxies drop silent streams.
                await response.write(b"".join(events) if events else b": keep-alive\n\n")
            except ConnectionResetError:  # the client went away mid-write
                break
            feed.written(watch)
            if watch.ended:
                break
    return response
