"""Reads need an API token when tokens are set: a bearer header, or a browser's login session."""
import urllib.parse

from aiohttp import web

from bot.auth import SESSION_COOKIE, SESSION_SECONDS, known_token, reads_need_token, token_required
from bot.errors import json_error
from bot.keys import config_key, store_key
from bot.pages import render
from bot.requests import MAX_BODY, read_body
from storage import sessions

routes = web.RouteTableDef()


@web.middleware
async def read_guard_middleware(request: web.Request, handler):
    """Refuse reads without a token (unless auth.public_reads); send browsers to sign in."""
    auth = request.app[config_key].auth
    if await reads_need_token(request, auth.api_tokens, auth.public_reads):
        if "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPSeeOther("/login?" + urllib.parse.urlencode({"next": request.path_qs}))
        raise token_required()
    return await handler(request)


def _local(target: str) -> str:
    """target if it is a path on this server, else "/": a login never sends anyone elsewhere."""
    parts = urllib.parse.urlsplit(target)
    if not target.startswith("/") or target.startswith("//") or parts.scheme or parts.netloc \
            or "\\" in target:
        return "/"
    return target


def _form(body: bytes) -> dict[str, str]:
    """The first value of each field of an application/x-www-form-urlencoded body."""
    text = body.decode("utf-8", "replace").rstrip()  # as aiohttp's request.post() reads it
    fields = urllib.parse.parse_qs(text, keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


@routes.get("/login")
async def login_page(request: web.Request) -> web.Response:
    """The sign-in form."""
    return render("login.html", next=_local(request.query.get("next", "/")), failed=False)


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    """Exchange an API token for a random session cookie that only this site's pages send back."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise json_error(400, "Send the sign-in form: application/x-www-form-urlencoded with "
                              "'token' (and 'next')")
    # read_body, not request.post(): a form trickled in (or never finished) gets 408 in time.
    form = _form(await read_body(request, MAX_BODY))
    target = _local(form.get("next", "/"))
    tokens = request.app[config_key].auth.api_tokens
    if not tokens:
        raise web.HTTPSeeOther(target)  # nothing to sign in to
    token = known_token(form.get("token", ""), tokens)
    if token is None:
        response = render("login.html", next=target, failed=True)
        response.set_status(401)
        return response
    session = await request.app[store_key].run(sessions.create, token, SESSION_SECONDS)
    response = web.HTTPSeeOther(target)
    https = request.secure or request.app[config_key].server.public_url.startswith("https://")
    response.set_cookie(SESSION_COOKIE, session, max_age=SESSION_SECONDS, path="/",
                        httponly=True, samesite="Strict", secure=https)
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    """End the browser's session: deleted here, so a copy of the cookie no longer works either."""
    session = request.cookies.get(SESSION_COOKIE)
    if session:
        await request.app[store_key].run(sessions.delete, session)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response
