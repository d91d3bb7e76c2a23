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


async def secrets_page(request: web.Request) -> web.Response:
    """Every secret's name, scope, and when and by which token it was last set."""
    tokens = request.app[config_key].auth.api_tokens
    if not await api_token_ok(request, tokens):
        # With public reads too: a secret's scope says where credentials go.
        raise web.HTTPSeeOther("/login?" + urllib.parse.urlencode({"next": request.path_qs}))
    found = await request.app[store_key].run(queries.listing)
    response = render("secrets.html", secrets=[describe(secret) for secret in found])
    # Nothing about secrets should outlive the visit in a browser's cache.
    response.headers["Cache-Control"] = "no-store"
    return response
