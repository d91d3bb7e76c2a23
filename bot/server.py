"""What SPEED's HTTP server says about itself: its name, and JSON for errors aiohttp answers."""
import json
import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

# No versions: they only tell a scanner which known bugs to try.
SERVER_NAME = "SPEED"
_PARSE_ERROR = "Malformed HTTP request"


async def name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: replace aiohttp's `Server: Python/… aiohttp/…` with SPEED's name."""
    response.headers["Server"] = SERVER_NAME


def _handle_error(self: RequestHandler, request: web.BaseRequest, status: int = 500,
                  exc: BaseException | None = None, message: str | None = None
                  ) -> web.StreamResponse:
    """A request aiohttp could not parse, or that failed outside every middleware: JSON naming
    only the status, never the input, on a connection that is then closed."""
    if status >= 500:
        self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
    else:  # a client's malformed bytes are not SPEED's error: no traceback, no echo
        log.info("malformed HTTP request from %s refused with %s (%s)", request.remote, status,
                 type(exc).__name__ if exc else "no detail")
    if request.writer.output_size > 0:  # as aiohttp: a response was begun, the connection is lost
        raise ConnectionError("Response is sent already, cannot send another response "
                              "with the error message")
    try:
        text = _PARSE_ERROR if status == 400 else HTTPStatus(status).phrase
    except ValueError:
        text = "HTTP error"
    # Set here: these requests match no application, so on_response_prepare never sees them.
    response = web.Response(status=status, text=json.dumps({"error": text}),
                            content_type="application/json", headers={"Server": SERVER_NAME})
    response.force_close()
    return response


# aiohttp answers parser-level failures (a garbage request line, a header over the limit) in
# RequestHandler.handle_error, before any middleware, as text/plain quoting the input; it has no
# hook for this. Replaced once, on import (bot.app imports this module, so every listener and the
# test client get it). The original's contract is kept: log, refuse once output began, close.
RequestHandler.handle_error = _handle_error
