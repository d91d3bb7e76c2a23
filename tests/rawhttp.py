"""HTTP as bytes on a socket, for requests an HTTP client would normalise or refuse to send."""
import asyncio


async def exchange(host: str, port: int, data: bytes, timeout: float = 10.0
                   ) -> tuple[int, dict[str, str], bytes]:
    """Send data, read until the server closes; (status, headers with lower-case names, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return parse(answer)


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one HTTP/1.1 response."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def request(method: str, target: str, host: str | None, body: bytes = b"",
            extra: str = "") -> bytes:
    """One request with Connection: close; host None sends no Host header at all."""
    head = f"{method} {target} HTTP/1.1\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    head += f"{extra}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode("latin-1") + body
