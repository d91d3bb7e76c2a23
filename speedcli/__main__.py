"""Entry point of `speed` and `python -m speedcli`."""
import os
import sys

from speedcli import errors, parser
from speedcli.api import Api
from speedcli.safe import field
from speedcli.settings import server


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (see errors for the meanings)."""
    for stream in (sys.stdout, sys.stderr):
        # Containers print anything; an unencodable character must not end the stream.
        stream.reconfigure(errors="replace")
    args = parser.build().parse_args(argv)
    try:
        return args.run(Api(*server(args)), args)
    except errors.CliError as e:
        # The message quotes the server (its error text, a bad status line): one escaped line.
        print(f"speed: {field(str(e))}", file=sys.stderr)
        return errors.ERROR
    except KeyboardInterrupt:
        return errors.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`speed logs 7 | head`); say nothing more to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return errors.BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
