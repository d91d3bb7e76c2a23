"""The secrets page: what GET /secrets shows a browser. Names, scope and history; never a value.

/secrets is one address for people and programs: a request whose Accept names text/html (a
browser opening the page) gets the page, any other the JSON of bot/secrets_api.py. Like the JSON,
the page needs an API token whenever auth.api_tokens is set, even with auth.public_reads: a
browser without a login session is sent to sign in first.
"""
import urllib.parse

from aiohttp import web

from bot.auth import api_token_ok
from bot.keys import config_key, store_key
from bot.pages import render
from bot.secrets_api import describe
from storage import secrets as queries

PATH = "/secrets"


def wants_page(request: web.Request) -> bool:
    """Whether this request is a browser asking for the secrets page (as bot/login.py tells a
    browser from a program: by text/html in Accept)."""
    return (request.method in ("GET", "HEAD") and request.path == PATH
            and "text/html" in request.headers.get("Accept", ""))


async def secrets_page(request: web.Request) -> web.Response:
    """Every secret's name, scope, and when and by which token it was last set."""
    tokens = request.app[config_key].auth.api_tokens
    if not await api_token_ok(request, tokens):
        # With public reads too: a secret's scope says where credentials go.
        raise web.HTTPSeeOther("/login?" + urllib.parse.urlencode({"next": request.path_qs}))
    found = await request.app[store_key].run(queries.listing)
    response = render("secrets.html", secrets=[describe(secret) for secret in found])
    # The same address answers JSON to other requests: caches must keep the two apart, and
    # nothing about secrets should outlive the visit in a browser's cache.
    response.headers["Vary"] = "Accept"
    response.headers["Cache-Control"] = "no-store"
    return response


@web.middleware
async def secrets_page_middleware(request: web.Request, handler):
    """Serve the page to a browser at /secrets; everything else goes on to its route."""
    if wants_page(request):
        return await secrets_page(request)
    return await handler(request)
