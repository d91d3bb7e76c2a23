"""A TCP proxy in front of a test HTTP server that can hold requests: a deterministic stall.

While holding, a connection whose request matches is accepted and read but not forwarded; once
released it is forwarded and the answer flows back as if the server had been slow. The test git
server speaks HTTP/1.0 (one request per connection), so each connection is one request."""
import contextlib
import gzip
import re
import socket
import threading
import time
from typing import Callable

# The request that transfers a pack: git's protocol v2 `command=fetch`, or v0's first `want`.
# ls-remote (which SPEED may run first, to reuse an image) and the ref listing do not match.
PACK_TRANSFER = re.compile(rb"command=fetch|^[0-9a-f]{4}want ")


def transfers_a_pack(head: bytes, body: bytes) -> bool:
    """Whether an HTTP request is git fetching objects: the clone itself, past the ref listing."""
    return head.startswith(b"POST ") and bool(PACK_TRANSFER.search(body))


class HoldingProxy:
    """Listens on 127.0.0.1:port and forwards to upstream, holding matching requests on demand."""

    def __init__(self, upstream_url: str):
        host, _, port = upstream_url.removeprefix("http://").partition(":")
        self._upstream = (host, int(port.split("/")[0]))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._released = threading.Event()
        self._released.set()
        self._matches: Callable[[bytes, bytes], bool] = lambda head, body: True
        self._limit: int | None = None
        self._lock = threading.Lock()
        self._held = 0
        self.held_total = 0  # requests ever held
        self._losing: list[Callable[[bytes, bytes], bool]] = []
        self.lost = 0  # answers ever lost
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, upstream_url: str) -> str:
        """upstream_url (of the proxied server) as reached through this proxy."""
        host, port = self._upstream
        return upstream_url.replace(f"http://{host}:{port}", self.base_url, 1)

    def hold(self, matches: Callable[[bytes, bytes], bool] | None = None,
             limit: int | None = None) -> None:
        """From now on, hold requests that match (head, body) -> bool (default: every one); with
        limit, only the first limit of them (later ones pass, the held stay held)."""
        with self._lock:
            self._matches = matches or (lambda head, body: True)
            self._limit = None if limit is None else self.held_total + limit
        self._released.clear()

    def lose_answer(self, matches: Callable[[bytes, bytes], bool]) -> None:
        """Forward the next request that matches (head, body) -> bool, then cut its client off
        instead of answering: the server carried it out, the client cannot know."""
        with self._lock:
            self._losing.append(matches)

    def release(self) -> None:
        """Forward what is held and stop holding."""
        self._released.set()

    @property
    def held(self) -> int:
        """Requests held right now."""
        with self._lock:
            return self._held

    def wait_held(self, count: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.held < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} held request(s) expected within {timeout} s; "
                                     f"{self.held} held")
            time.sleep(0.02)

    def close(self) -> None:
        self._closed = True
        self._released.set()  # held requests are dropped, not forwarded: their clients see EOF
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _take(self, head: bytes, body: bytes) -> bool:
        """Whether to hold this request (counted as held if so)."""
        with self._lock:
            if self._released.is_set() or not self._matches(head, _decoded(head, body)):
                return False
            if self._limit is not None and self.held_total >= self._limit:
                return False
            self._held += 1
            self.held_total += 1
            return True

    def _lose(self, head: bytes, body: bytes) -> bool:
        """Whether to lose this request's answer (counted as lost if so)."""
        with self._lock:
            matches = next((m for m in self._losing if m(head, _decoded(head, body))), None)
            if matches is None:
                return False
            self._losing.remove(matches)
            self.lost += 1
            return True

    def _serve(self, client: socket.socket) -> None:
        with client:
            try:
                head, body = _read_request(client)
            except OSError:
                return
            if self._lose(head, body):
                with contextlib.suppress(OSError), \
                        socket.create_connection(self._upstream, timeout=30) as upstream:
                    upstream.sendall(head + body)
                    while upstream.recv(65536):  # the whole answer, dropped
                        pass
                return  # the client's connection closes with no answer
            if self._take(head, body):
                try:
                    self._released.wait()
                finally:
                    with self._lock:
                        self._held -= 1
            if self._closed:
                return
            try:
                with socket.create_connection(self._upstream, timeout=30) as upstream:
                    upstream.sendall(head + body)
                    threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
                    _pipe(upstream, client)
            except OSError:
                pass  # the client (a killed git) hung up meanwhile: nothing to answer


def _read_request(client: socket.socket) -> tuple[bytes, bytes]:
    """The request's head (through the blank line) and its Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            raise OSError("closed before a full request head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    head += b"\r\n\r\n"
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(body) < length:
        chunk = client.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def _decoded(head: bytes, body: bytes) -> bytes:
    if re.search(rb"(?im)^content-encoding:\s*gzip", head):
        try:
            return gzip.decompress(body)
        except OSError:
            return body
    return body


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
