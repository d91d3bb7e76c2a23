"""Reading and checking request bodies and path parameters."""
import asyncio
import json
import re
from typing import Any

from aiohttp import web

from bot.errors import json_error, not_found

MAX_BODY = 1024 * 1024
# A body that does not declare its length (chunked) is buffered until it passes the limit, so it
# gets a small one whatever the route allows: only GitHub sends more, and it declares the length.
MAX_UNDECLARED_BODY = MAX_BODY
# Seconds a client has to send a whole body: a body trickled in (or never finished) would
# otherwise hold a connection and a handler for as long as the client likes.
BODY_SECONDS = 30.0


def _too_large(limit: int) -> web.HTTPException:
    return json_error(413, f"Request body is larger than {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed limit, and with 408
    unless it has all arrived within BODY_SECONDS."""
    declared = request.content_length
    if declared is None:
        limit = min(limit, MAX_UNDECLARED_BODY)
    if declared is not None and declared > limit:
        raise _too_large(limit)
    if request.content.is_eof():  # it all came with the headers: nothing to wait for
        body = request.content.read_nowait()
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks, size = [], 0
    try:
        async with asyncio.timeout(BODY_SECONDS):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        too_slow = json_error(408, f"The request body did not arrive within {BODY_SECONDS:g} s")
        too_slow.force_close()  # the rest of the body may still come: never read it as a request
        raise too_slow from None
    return b"".join(chunks)


async def json_object(request: web.Request, *fields: str) -> dict[str, Any]:
    """The request body as a JSON object of these fields (each optional here), or a 400/413
    JSON error."""
    return _object(await read_body(request, MAX_BODY), fields)


async def no_body(request: web.Request) -> None:
    """For a request that takes none: a body sent must be empty or {} (anything else is 400,
    as for every other request, not ignored)."""
    if request.body_exists:
        raw = await read_body(request, MAX_BODY)
        if raw.strip():
            _object(raw, ())


def _object(raw: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    """raw as a JSON object of these fields, or a 400 JSON error."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # also too deep, or numbers too long to convert
        raise json_error(400, "Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise json_error(400, "Request body must be a JSON object")
    # Refused, not ignored: a misspelt field ("branch" for "branches") or one SPEED has not got
    # ("commit") would otherwise do something else than asked, silently.
    unknown = next((name for name in body if name not in fields), None)
    if unknown is not None:
        raise json_error(400, f"Unknown field {json.dumps(unknown)[:100]}: this request takes "
                              + (", ".join(f"'{name}'" for name in fields) or "none"))
    return body


def text_field(body: dict[str, Any], name: str, message: str | None = None) -> str:
    """A required non-empty string field."""
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise json_error(400, message or f"'{name}' is required and must be a non-empty string")
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800": nothing can store it
        raise json_error(400, f"'{name}' must be valid Unicode text") from None
    return value


def int_field(body: dict[str, Any], name: str) -> int:
    """A required integer field (booleans are not integers here)."""
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise json_error(400, f"'{name}' is required and must be an integer")
    return value


def path_id(request: web.Request, what: str = "Deployment") -> int:
    """The {id} path parameter; anything that cannot be an id is a JSON 404 naming what."""
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise not_found(what)
    return int(raw)


IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,100}")


def idempotency_key(request) -> str | None:
    """The request's Idempotency-Key header, if it sent one: 1 to 100 of A-Z a-z 0-9 . _ : -."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise json_error(400, "Idempotency-Key must be 1 to 100 characters of A-Z a-z 0-9 . _ : -")
    return key


def not_modified(request: web.Request, etag: str) -> bool:
    """Whether the request's If-None-Match is * or names etag (weakly, as RFC 9110 compares)."""
    if request.headers.get("If-None-Match", "").strip() == "*":
        return True
    try:
        presented = request.if_none_match or ()
    except ValueError:  # a malformed header: as if absent, the whole answer is sent
        return False
    # By value alone: aiohttp reads a quoted "*" as the wildcard's value too, and it is no tag.
    return any(tag.value == etag for tag in presented)
