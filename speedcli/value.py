"""A secret's value, read from stdin or a file: never from the command line.

Arguments are visible to every user of the machine (`ps`, /proc/PID/cmdline) and stay in shell
histories, so `speed secret set` takes no value there. On a terminal the value is typed without
echo; piped or read from a file, one trailing newline (what `echo` adds) is dropped.
"""
import contextlib
import os
import sys
from typing import Iterator

from speedcli.errors import CliError
from speedcli.safe import field

# SPEED refuses a larger request body: reading more would only fill memory (`< /dev/zero`).
MAX_BYTES = 1024 * 1024


def _without_one_newline(text: str) -> str:
    """text less one line end at its very end (\\n, or \\r\\n from a Windows editor)."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


@contextlib.contextmanager
def _no_echo(fd: int) -> Iterator[None]:
    """The terminal on fd without echo, restored however the block ends (Ctrl-C included)."""
    import termios  # Unix only, like the terminals this talks to

    saved = termios.tcgetattr(fd)
    quiet = termios.tcgetattr(fd)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSADRAIN, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _typed(name: str) -> bytes:
    """One line typed on the terminal that is stdin, not shown as it is typed."""
    with _no_echo(sys.stdin.fileno()):
        # Asked only once echo is off: nothing typed after the prompt can show.
        sys.stderr.write(field(f"value of {name} (not shown; end with Enter): "))
        sys.stderr.flush()
        try:
            return sys.stdin.buffer.readline(MAX_BYTES + 1)
        finally:
            sys.stderr.write("\n")  # the Enter typed was not echoed either
            sys.stderr.flush()


def read(name: str, path: str | None) -> str:
    """The value of secret `name`: from the file at path ("-": stdin), else stdin."""
    if path is not None and path != "-":
        try:
            with open(path, "rb") as file:
                raw = file.read(MAX_BYTES + 1)
        except OSError as e:
            raise CliError(f"cannot read {path}: {e.strerror or e}") from None
        where = path
    elif os.isatty(sys.stdin.fileno()):
        raw, where = _typed(name), "what was typed"
    else:
        raw, where = sys.stdin.buffer.read(MAX_BYTES + 1), "stdin"
    if len(raw) > MAX_BYTES:
        raise CliError(f"the value in {where} is larger than {MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"the value in {where} is not UTF-8 text") from None
    value = _without_one_newline(text)
    if not value:
        raise CliError(f"no value in {where}: pipe it in, or give --from-file PATH")
    return value
