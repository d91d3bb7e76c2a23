"""The command line: subcommands, their arguments, and usage errors that exit with code 3."""
import argparse
import sys

from speedcli import commands
from speedcli.errors import ERROR
from speedcli.settings import DEFAULT_URL

EPILOG = """exit codes: 0 done (with --follow: the deployment Succeeded), 1 it Failed,
2 it was Cancelled, 3 usage, connection or HTTP error, 130 interrupted"""


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit with ERROR: 2 means Cancelled here."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(ERROR, f"{self.prog}: error: {message}\n")


def _server_options() -> argparse.ArgumentParser:
    # SUPPRESS: accepted before or after the subcommand without one overwriting the other.
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--url", default=argparse.SUPPRESS,
                         help=f"SPEED's address (default: $SPEED_URL or {DEFAULT_URL})")
    options.add_argument("--token", default=argparse.SUPPRESS,
                         help="API token sent as a Bearer token (default: $SPEED_API_TOKEN)")
    return options


def build() -> Parser:
    """The `speed` parser; each subcommand's function is in args.run."""
    server = _server_options()
    parser = Parser(prog="speed", description="Command-line client of a SPEED deployment bot.",
                    epilog=EPILOG, parents=[server])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, help_: str) -> Parser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[server], epilog=EPILOG)
        p.set_defaults(run=run)
        return p

    def follow_option(p: Parser, what: str) -> None:
        p.add_argument("--follow", "-f", action="store_true",
                       help=f"stream {what} until it finishes; exit with its outcome")

    p = command("start", commands.start, "queue a deployment of a branch; print its id")
    p.add_argument("repo_url", metavar="URL", help="the git repository")
    p.add_argument("branch", metavar="BRANCH")
    follow_option(p, "its log")

    p = command("info", commands.info, "show a deployment's fields")
    p.add_argument("id", type=int, metavar="ID")

    p = command("results", commands.results, "print everything a deployment recorded")
    p.add_argument("id", type=int, metavar="ID")

    p = command("logs", commands.logs, "print a deployment's log (--follow: live)")
    p.add_argument("id", type=int, metavar="ID")
    follow_option(p, "the log")

    p = command("list", commands.listing, "list deployments, newest first")
    p.add_argument("--status", help="only this status (Pending, Running, Succeeded, ...)")
    p.add_argument("--repo", help="only repositories whose URL contains this")
    p.add_argument("--limit", type=int, help="at most this many (server default 50)")

    p = command("cancel", commands.cancel, "stop a queued or running deployment")
    p.add_argument("id", type=int, metavar="ID")

    p = command("redeploy", commands.redeploy,
                "queue the same repository, branch and commit again; print the new id")
    p.add_argument("id", type=int, metavar="ID")
    follow_option(p, "the new deployment's log")
    return parser
