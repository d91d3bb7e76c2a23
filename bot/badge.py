"""An SVG status badge of a repository's latest deployment, for READMEs."""
from aiohttp import web

from bot.keys import store_key
from bot.pages import templates
from storage import deployments as queries

routes = web.RouteTableDef()

LABEL = "deploy"
# Status -> (message, colour); the colours are shields.io's.
LOOKS = {
    "Succeeded": ("passing", "#4c1"),
    "Failed": ("failing", "#e05d44"),
    "Running": ("running", "#dfb317"),
    "Pending": ("running", "#dfb317"),
    "Cancelled": ("cancelled", "#6e7781"),
}
UNKNOWN = ("unknown", "#9f9f9f")
# Verdana 11px advance widths of the letters the badge uses; textLength makes any font fit them.
WIDTHS = dict(zip("acdefgiklnoprstuwy",
                  (6.7, 5.8, 6.9, 6.6, 3.9, 6.9, 3.0, 6.5, 3.0, 7.0, 6.7, 6.9, 4.7, 5.7, 4.3, 7.0,
                   9.0, 6.5)))


def text_width(text: str) -> int:
    """Pixels the text takes in Verdana 11px, rounded up."""
    return int(sum(WIDTHS.get(char, 7.0) for char in text) + 0.999)


def render(message: str, colour: str) -> str:
    """The badge: a grey label part and a coloured message part, shields-style."""
    left, right = text_width(LABEL) + 10, text_width(message) + 10
    return templates.get_template("badge.svg").render(
        label=LABEL, message=message, colour=colour, left=left, right=right, width=left + right)


@routes.get("/badge/{owner}/{name}.svg")
async def badge(request: web.Request) -> web.Response:
    """The latest deployment of owner/name (and ?branch=), as passing, failing, running, ..."""
    full_name = f"{request.match_info['owner']}/{request.match_info['name']}"
    branch = request.rel_url.query.get("branch") or None
    latest = await request.app[store_key].run(queries.latest_for, full_name, branch)
    message, colour = LOOKS.get(latest.status, UNKNOWN) if latest else UNKNOWN
    return web.Response(text=render(message, colour), content_type="image/svg+xml",
                        headers={"Cache-Control": "no-cache",
                                 "Content-Security-Policy": "default-src 'none'"})
