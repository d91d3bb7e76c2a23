"""What the client reports as one `speed: ...` line, and its exit codes."""

SUCCEEDED, FAILED, CANCELLED, ERROR, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 3, 130, 141

_BY_STATUS = {"Succeeded": SUCCEEDED, "Failed": FAILED, "Cancelled": CANCELLED}


def exit_code(status: str) -> int:
    """The exit code of a followed deployment that ended in this status."""
    return _BY_STATUS.get(status, ERROR)


class CliError(Exception):
    """A failure shown as one line on stderr, exit code ERROR."""


class HttpError(CliError):
    """SPEED answered with an HTTP error."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


class Unreachable(CliError):
    """No answer from SPEED: refused, unresolvable, timed out, or cut off. `sent`: the request
    may have reached SPEED (timed out or cut off), so it may have been carried out."""

    def __init__(self, base_url: str, why: str, sent: bool = False):
        super().__init__(f"cannot reach SPEED at {base_url}: {why}")
        self.why = why
        self.sent = sent
