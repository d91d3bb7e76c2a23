"""Human-readable pages: one deployment's fields and results (the target_url GitHub links to)."""
import pathlib

import jinja2
from aiohttp import web

from bot.api import describe
from bot.errors import not_found
from bot.keys import store_key
from bot.requests import deployment_id
from storage import deployments as queries
from storage.deployments import NotFound

routes = web.RouteTableDef()

# Autoescaping on: nothing a repository or a container prints can become markup.
templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(pathlib.Path(__file__).parent / "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined)


@routes.get("/deployments/{id}")
async def deployment_page(request: web.Request) -> web.Response:
    """One deployment as a page."""
    store = request.app[store_key]
    try:
        target_id = deployment_id(request)
        deployment = await store.run(queries.get, target_id)
        results = await store.run(queries.results_text, target_id)
    except NotFound:
        raise not_found() from None
    html = templates.get_template("deployment.html").render(d=describe(deployment), results=results)
    return web.Response(text=html, content_type="text/html")
