"""SPEED's REST API over urllib: JSON calls and the raw event stream."""
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from speedcli.errors import CliError, HttpError, Unreachable

TIMEOUT = 30.0
# Seconds before each retry of a request sent with an Idempotency-Key whose answer was lost.
RETRY_AFTER = (1.0, 3.0)
# Answers of a proxy in front of SPEED that may mean SPEED never got the request, or never answered.
GATEWAY_ERRORS = (502, 503, 504)


def _cause(error: BaseException) -> BaseException:
    """The failure urllib wrapped in a URLError (a refusal, a timeout), else the error itself."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        return error.reason
    return error


def reason(error: BaseException) -> str:
    """A network failure in a few words ("Connection refused", "timed out")."""
    error = _cause(error)
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
    except (ValueError, OSError, http.client.HTTPException):
        body = None
    message = body.get("error") if isinstance(body, dict) else None
    return message if isinstance(message, str) and message else error.reason


class Api:
    """One SPEED server, with an optional API token."""

    def __init__(self, base_url: str, token: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.token = token

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query)

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.call("POST", path, body=body)

    def post_once(self, path: str, body: dict | None = None) -> Any:
        """POST with an Idempotency-Key, sent again while its answer is lost (timed out, cut
        off, a gateway's error): SPEED carries it out once however often it arrives."""
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        for delay in (*RETRY_AFTER, None):
            try:
                return self.call("POST", path, body=body, headers=headers)
            except (Unreachable, HttpError) as e:
                lost = e.sent if isinstance(e, Unreachable) else e.status in GATEWAY_ERRORS
                if delay is None or not lost:
                    raise
                time.sleep(delay)

    def call(self, method: str, path: str, body: dict | None = None,
             query: dict | None = None, headers: dict | None = None) -> Any:
        """The decoded JSON answer of one request."""
        return self.answer(method, path, body, query, headers)[1]

    def answer(self, method: str, path: str, body: dict | None = None,
               query: dict | None = None, headers: dict | None = None) -> tuple[int, Any]:
        """(HTTP status, decoded JSON) of one request that succeeded (2xx)."""
        response = self._open(method, path, body, query, TIMEOUT, "application/json", headers)
        try:
            with response:
                raw = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(self.base_url, reason(e), sent=True) from None
        try:
            return response.status, json.loads(raw)
        except ValueError:
            raise CliError(f"unexpected answer from {self.base_url}{path}: not JSON") from None

    def stream(self, path: str, query: dict | None = None) -> http.client.HTTPResponse:
        """An open text/event-stream response; the caller reads and closes it."""
        # No read timeout: a queued deployment may legitimately stay silent for a long time.
        return self._open("GET", path, None, query, None, "text/event-stream")

    def _open(self, method: str, path: str, body: dict | None, query: dict | None,
              timeout: float | None, accept: str,
              extra: dict | None = None) -> http.client.HTTPResponse:
        headers = {"Accept": accept, **(extra or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif method == "POST":
            data = b""
        query = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        try:
            request = urllib.request.Request(url, data=data, method=method, headers=headers)
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            with e:
                raise HttpError(e.code, _error_message(e)) from None
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            raise Unreachable(self.base_url, reason(e), sent=_maybe_sent(e)) from None


def _maybe_sent(error: BaseException) -> bool:
    """Whether a failed request may have reached the server: it timed out or was cut off,
    rather than refused or never resolved."""
    return isinstance(_cause(error), (TimeoutError, ConnectionResetError, BrokenPipeError,
                                      http.client.HTTPException))
