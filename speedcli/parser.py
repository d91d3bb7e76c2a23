"""The command line: subcommands, their arguments, and usage errors that exit with code 3."""
import argparse
import sys

from speedcli import commands
from speedcli.errors import ERROR
from speedcli.settings import DEFAULT_URL

EPILOG = """exit codes: 0 done (with --follow: the deployment Succeeded), 1 it Failed,
2 it was Cancelled, 3 usage, connection or HTTP error, 130 interrupted"""


SECRET_EPILOG = "exit codes: 0 done, 3 usage, connection or HTTP error, 130 interrupted"
SECRET_SET_EPILOG = """The value is read from stdin (typed without echo on a terminal) or from
--from-file, never from the command line, where other users could see it; one trailing newline
is dropped (echo adds one); """ + SECRET_EPILOG


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit with ERROR: 2 means Cancelled here."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(ERROR, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras and getattr(parsed, "secret_command", None) == "set":
            # argparse would repeat them ("unrecognized arguments: ..."), and one may be a
            # secret's value typed where it should not be: never show them.
            if any(extra.startswith("-") for extra in extras):
                self.error("unrecognized arguments (not repeated: one may be a secret's value)")
            parsed.on_command_line = [*parsed.on_command_line, *extras]
        elif extras:
            self.error("unrecognized arguments: " + " ".join(extras))
        return parsed


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

    def command(name: str, run, help_: str, epilog: str = EPILOG) -> Parser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[server], epilog=epilog)
        if run is not None:
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

    command("environments", commands.environments,
            "list every environment: its live release, health and address")

    p = command("rollback", commands.rollback,
                "make an earlier kept release of an environment live again; print the deployment")
    p.add_argument("environment", type=int, metavar="ENVIRONMENT", help="the environment's id")
    p.add_argument("--release", type=int, help="this release (default: the newest kept one)")
    follow_option(p, "the rollback's log")

    _secret_commands(command("secret", None, "manage the secrets deployments may receive",
                             SECRET_EPILOG), server)
    return parser


def _secret_commands(secret: Parser, server: argparse.ArgumentParser) -> None:
    """`speed secret set|list|rm`: a secret's value is read from stdin or a file, never from
    the command line, where every user of the machine could read it (ps, /proc)."""
    sub = secret.add_subparsers(dest="secret_command", required=True, metavar="COMMAND")

    def command(name: str, run, help_: str, epilog: str = SECRET_EPILOG) -> Parser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[server], epilog=epilog)
        p.set_defaults(run=run)
        return p

    p = command("set", commands.secret_set,
                "create or replace a secret; its value is read from stdin (or --from-file)",
                SECRET_SET_EPILOG)
    p.add_argument("name", metavar="NAME",
                   help="letters, digits and _ (it becomes an environment variable)")
    # A value typed here anyway is refused without being repeated (commands.secret_set).
    p.add_argument("on_command_line", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--repo", action="append", required=True, metavar="HOST/PATH",
                   dest="repositories",
                   help="a repository that may get it, as a glob: github.com/acme/app, "
                        "github.com/acme/* (repeat for more)")
    p.add_argument("--branch", action="append", default=[], metavar="GLOB", dest="branches",
                   help="only deployments of matching branches (repeat for more; default: all)")
    p.add_argument("--pull-requests", action="store_true",
                   help="pull requests from the repository itself get it too (forks never do)")
    p.add_argument("--from-file", metavar="PATH",
                   help="read the value from this file instead of stdin")

    command("list", commands.secret_list, "list secrets: names, scope, when and by which token "
                                          "each was set (never a value)")

    p = command("rm", commands.secret_rm, "delete a secret")
    p.add_argument("name", metavar="NAME")
