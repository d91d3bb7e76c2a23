"""Addresses that are one for people and programs: a browser (Accept: text/html, as
bot/login.py tells one from a program) gets a page, any other request the JSON of the route."""
from typing import Awaitable, Callable, Mapping

from aiohttp import web

Page = Callable[[web.Request], Awaitable[web.StreamResponse]]


def browser_pages(pages: Mapping[str, Page]):
    """A middleware serving pages[path] to a browser's GET of path."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        page = pages.get(request.path)
        if (page is not None and request.method in ("GET", "HEAD")
                and "text/html" in request.headers.get("Accept", "")):
            response = await page(request)
            # The same address answers JSON to other requests: caches must keep them apart.
            response.headers["Vary"] = "Accept"
            return response
        return await handler(request)

    return middleware
