"""Records build and container output in batches, capped, with secrets redacted."""
import asyncio
from typing import Awaitable, Callable

# (deployment id, text, total bytes stored, stream cursor in ns or None) -> stored
Writer = Callable[[int, str, int, int | None], Awaitable[None]]

FLUSH_BYTES = 64 * 1024
FLUSH_SECONDS = 0.25
REDACTED = "[redacted]"


class OutputRecorder:
    """Buffers output and writes it as one result per batch: by size, or every FLUSH_SECONDS."""

    def __init__(self, deployment_id: int, write: Writer, limit: int, stored: int = 0):
        self._deployment_id = deployment_id
        self._write = write
        self._limit = limit
        self._stored = stored
        self._secrets: list[str] = []
        self._buffer: list[str] = []
        self._buffered = 0
        self._cursor: int | None = None
        self._dropped = 0
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task | None = None

    @property
    def full(self) -> bool:
        """Whether the limit was reached: nothing more will be stored."""
        return self._stored + self._buffered >= self._limit or self._dropped > 0

    def redact(self, secret: str) -> None:
        """Never store this text: it is replaced wherever it appears in the output."""
        self._secrets.append(secret)

    async def write(self, text: str, cursor: int | None = None) -> None:
        """Take a piece of output; cursor is the stream position it ends at."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        size = len(text.encode())
        room = self._limit - self._stored - self._buffered
        if size > room:
            if room > 0:
                text = text.encode()[:room].decode("utf-8", "ignore")
                self._buffer.append(text)
                self._buffered += len(text.encode())
            self._dropped += size - max(room, 0)
        else:
            self._buffer.append(text)
            self._buffered += size
        if cursor is not None:
            self._cursor = cursor
        if self._buffered >= FLUSH_BYTES:
            await self.flush()
        elif self._ticker is None:
            self._ticker = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        self._ticker = None
        await self.flush()

    async def flush(self) -> None:
        """Store what is buffered now."""
        async with self._lock:
            if not self._buffer and self._cursor is None:
                return
            text, cursor = "".join(self._buffer), self._cursor
            self._buffer, self._buffered, self._cursor = [], 0, None
            if text:
                self._stored += len(text.encode())
                await self._write(self._deployment_id, text, self._stored, cursor)

    async def close(self) -> None:
        """Store everything left, with a marker saying how much the limit cut."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._dropped:
            self._buffer.append(f"\n[output truncated: {self._dropped} bytes over the "
                                f"{self._limit}-byte limit were not stored]\n")
            self._dropped = 0
        await self.flush()
