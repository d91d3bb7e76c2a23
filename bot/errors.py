"""JSON errors: deliberate 4xx from handlers, and one middleware for everything else."""
import json
import logging

from aiohttp import web

from storage.errors import StorageUnavailable
from storage.store import StorageFull

log = logging.getLogger(__name__)


def json_error(status: int, message: str, **headers: str) -> web.HTTPException:
    """An HTTP error whose body is {"error": message}."""
    error = web.HTTPException(text=json.dumps({"error": message}), content_type="application/json",
                              headers=headers or None)
    error.set_status(status)
    return error


def not_found(what: str = "Deployment") -> web.HTTPException:
    return json_error(404, f"{what} not found")


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Answer every failure as JSON; log unexpected ones without echoing them to the caller."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.content_type == "application/json" or e.empty_body or e.status < 400:
            raise
        kept = {name: e.headers[name] for name in ("Allow", "WWW-Authenticate") if name in e.headers}
        raise json_error(e.status, e.reason, **kept) from None
    except StorageFull:
        # The transaction was rolled back: say so, so the caller knows to retry, not to check.
        log.error("the database's disk is full: %s %s refused", request.method, request.path)
        raise json_error(507, "Insufficient storage: the database's disk is full, so nothing was "
                              "changed; retry once space is freed") from None
    except StorageUnavailable:
        log.error("the database cannot be reached: %s %s refused", request.method, request.path)
        raise json_error(503, "Service unavailable: the database cannot be reached, so nothing "
                              "was changed; retry shortly") from None
    except Exception as e:
        if isinstance(e, ConnectionResetError) and _client_gone(request):
            # The client hung up mid-request (a body cut short): routine, and nobody to answer.
            log.info("client went away during %s %s", request.method, request.path)
            raise json_error(400, "The request was cut short") from None
        log.exception("unhandled error in %s %s", request.method, request.path)
        raise json_error(500, "Internal server error") from None


def _client_gone(request: web.Request) -> bool:
    """Whether the request's own connection is closed (not some connection SPEED opened)."""
    return request.transport is None or request.transport.is_closing()
