"""Records build and container output in batches, capped, quoted, with secrets redacted."""
import asyncio
import itertools
import re
from typing import Awaitable, Callable

from storage import quoting

# (deployment id, text, stream cursor (opaque) or None, byte limit of all results or None for
# SPEED's own note) -> (bytes of results stored in all, bytes of text that did not fit)
Writer = Callable[[int, str, object, int | None], Awaitable[tuple[int, int]]]

FLUSH_BYTES = 64 * 1024
_WINDOW = 64
FLUSH_SECONDS = 0.25
REDACTED = "[redacted]"


def pattern_of(secrets: list[str]) -> re.Pattern[str] | None:
    """One pattern matching each of these texts, the longest where several start at one place
    (None for none)."""
    if not secrets:
        return None
    # A trie, not a list of alternatives: the regex engine tried each of thousands of forms at
    # every character (a megabyte against 20 keys' forms took 11 s); a trie tries one branch.
    trie: dict = {}
    for secret in secrets:
        node = trie
        for character in secret:
            node = node.setdefault(character, {})
        node[_END] = True
    try:
        return re.compile(_trie_regex(trie))
    except RecursionError:  # hundreds of texts each beginning the next: the list it is, then
        return re.compile("|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True)))


_END = ""  # a trie key no character is: a text ends here


def _trie_regex(node: dict) -> str:
    """The regex of the texts below a trie node, each branch's longest first."""
    branches = []
    for character, child in node.items():
        if character == _END:
            continue
        run = [character]
        while len(child) == 1 and _END not in child:  # one way on: a literal, not a group
            (character, child), = child.items()
            run.append(character)
        branches.append(re.escape("".join(run)) + _trie_regex(child))
    if not branches:
        return ""
    group = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if _END not in node:
        return group
    # Greedy: a longer text going on from here is tried before the one ending here.
    return f"(?:{group})?" if len(branches) == 1 else group + "?"


def _open_prefix(secret: str, text: str) -> int:
    """The length of the longest end of text that is the beginning of secret (not all of it)."""
    start = max(len(text) - len(secret) + 1, 0)
    head = secret[:_WINDOW]
    # Candidates holding a whole window are found by str.find, at C speed: a Python loop over
    # every position where the secret's first character occurs made a long secret cost
    # quadratic time on the event loop (a 64 KiB one, 48 ms a write). The earliest is longest.
    at = text.find(head, start)
    while at != -1:
        if secret.startswith(text[at:]):
            return len(text) - at
        at = text.find(head, at + 1)
    for at in range(max(start, len(text) - len(head) + 1), len(text)):  # ends under a window
        if head.startswith(text[at:]) and secret.startswith(text[at:]):
            return len(text) - at
    return 0


class OutputRecorder:
    """Buffers output and writes it as one result per batch: by size, or every FLUSH_SECONDS."""

    def __init__(self, deployment_id: int, write: Writer, limit: int, stored: int = 0):
        self._deployment_id = deployment_id
        self._write = write
        self._limit = limit
        self._stored = stored
        self._secrets: list[str] = []
        self._pattern: re.Pattern[str] | None = None
        self._secret_characters: set[str] = set()
        # Output arrives cut anywhere (Docker splits lines over 16 KB into frames, builds stream
        # in chunks), so a secret may straddle two writes. A write ending in what could begin a
        # secret is held, whole, until the next write tells or close. Whole writes keep the cursor
        # exact: a batch's cursor is that of the last write it holds entirely, so a reattach after
        # a crash replays a held write once, in full. (text, cursor, SPEED's own), not yet
        # redacted. The same holding keeps a line that may become "[speed]" until it is known.
        self._held: list[tuple[str, object, bool]] = []
        self._at_line_start = True
        self._buffer: list[str] = []
        self._buffered = 0
        self._cursor: object = None
        self._dropped = 0
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task | None = None
        self._failed: Exception | None = None

    @property
    def full(self) -> bool:
        """Whether the limit was reached: nothing more will be stored."""
        return self._stored + self._buffered >= self._limit or self._dropped > 0

    def redact(self, secret: str) -> None:
        """Never store this text: it is replaced wherever it appears in the output."""
        if secret and secret not in self._secrets:
            self._secrets.append(secret)
            self._secret_characters.update(secret)
            self._pattern = None  # compiled when next used: a value's many forms cost one compile

    def matcher(self) -> re.Pattern[str] | None:
        """The pattern of every secret, compiled once after secrets were added (a long value
        has thousands of forms: call it in a thread before output flows)."""
        if self._pattern is None:
            self._pattern = pattern_of(self._secrets)
        return self._pattern

    def redacted(self, text: str) -> str:
        """text without this deployment's secrets (for reasons and messages)."""
        pattern = self.matcher()
        return pattern.sub(REDACTED, text) if pattern else text

    async def say(self, line: str) -> None:
        """Record a line of SPEED's own, as `[speed] line`."""
        await self._take(f"{quoting.OWN} {line}\n", None, own=True)

    async def write(self, text: str, cursor: object = None) -> None:
        """Take a piece of output; cursor is the stream position it ends at."""
        await self._take(text, cursor, own=False)

    async def _take(self, text: str, cursor: object, own: bool) -> None:
        if self._failed is not None:  # a timed flush failed (NotOwner): the writer hears of it
            raise self._failed
        self._held.append((text, cursor, own))
        self._release(self._releasable())
        if self._buffered >= FLUSH_BYTES:
            await self.flush()
        elif self._ticker is None:
            self._ticker = asyncio.create_task(self._flush_soon())

    def _releasable(self) -> int:
        """How many held writes may go: none past where a secret may begin, none cutting one."""
        joined = self._held[0][0] if len(self._held) == 1 else "".join(t for t, _, _ in self._held)
        safe = len(joined) - max(self._open_tail(joined),
                                 quoting.open_end(joined, self._at_line_start))
        if safe == len(joined):
            return len(self._held)
        pattern = self.matcher()
        spans = [m.span() for m in pattern.finditer(joined)] if pattern else []
        end = len(joined)
        for count in range(len(self._held), 0, -1):
            if end <= safe and not any(start < end < stop for start, stop in spans):
                return count
            end -= len(self._held[count - 1][0])
        return 0

    def _open_tail(self, text: str) -> int:
        """The length of the longest end of text that is the beginning of a longer secret."""
        if not text or text[-1] not in self._secret_characters:
            return 0  # the common case: a line's end (no token holds a newline)
        return max(_open_prefix(secret, text) for secret in self._secrets)

    def _quoted(self, released: list[tuple[str, object, bool]]) -> str:
        """The released writes as one text, output lines that look like SPEED's own quoted."""
        pieces = []
        for own, run in itertools.groupby(released, key=lambda write: write[2]):
            text = "".join(piece for piece, _, _ in run)  # `[spe` + `ed]` are judged together
            if not own:
                text = quoting.quote(text, self._at_line_start)
            self._at_line_start = quoting.ends_at_line_start(text, self._at_line_start)
            pieces.append(text)
        return pieces[0] if len(pieces) == 1 else "".join(pieces)

    def _release(self, count: int) -> None:
        """Quote and redact the first count held writes together and buffer them, capped."""
        if not count:
            return
        released, self._held = self._held[:count], self._held[count:]
        text = self._quoted(released)
        pattern = self.matcher()
        if pattern:
            text = pattern.sub(REDACTED, text)
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
        for _, cursor, _ in reversed(released):
            if cursor is not None:
                self._cursor = cursor
                break

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        self._ticker = None
        try:
            await self.flush()
        except Exception as e:  # noqa: BLE001 - nobody awaits this task: the next write raises it
            self._failed = e

    async def flush(self) -> None:
        """Store what is buffered now (held writes wait for more output or close)."""
        async with self._lock:
            if not self._buffer:
                return
            text, cursor = "".join(self._buffer), self._cursor
            self._buffer, self._buffered, self._cursor = [], 0, None
            await self._store(text, cursor, self._limit)

    async def _store(self, text: str, cursor: object, limit: int | None) -> None:
        """Write to the database, which cuts at the limit: callbacks may have filled it."""
        self._stored += len(text.encode())
        self._stored, dropped = await self._write(self._deployment_id, text, cursor, limit)
        self._dropped += dropped

    async def close(self) -> None:
        """Store everything left, with a marker saying how much the limit cut."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._release(len(self._held))  # no more output can complete a secret
        await self.flush()
        if self._dropped:
            # "at least": once full, the pipeline stops reading, so the rest is never counted.
            marker = (f"\n[output truncated: at least {self._dropped} bytes over the "
                      f"{self._limit}-byte limit were not stored]\n")
            self._dropped = 0
            async with self._lock:
                await self._store(marker, None, None)  # SPEED's own: never cut
