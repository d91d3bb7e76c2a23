"""One function per subcommand: call the API, print, return the exit code."""
import argparse
import re
import sys
import urllib.parse

from speedcli import render, safe, value
from speedcli.api import Api
from speedcli.errors import CliError
from speedcli.follow import follow


def _field(body, name: str, kind: type = object):
    if not (isinstance(body, dict) and name in body and isinstance(body[name], kind)):
        raise CliError(f"unexpected answer from SPEED: no '{name}' in {str(body)[:80]}")
    return body[name]


def _deployment(body) -> dict:
    if not isinstance(body, dict) or "status" not in body:
        raise CliError(f"unexpected answer from SPEED: not a deployment: {str(body)[:80]}")
    return body


def _queued(api: Api, body, follow_it: bool) -> int:
    deployment_id = _field(body, "id", int)
    print(deployment_id, flush=True)
    return follow(api, deployment_id) if follow_it else 0


def start(api: Api, args: argparse.Namespace) -> int:
    return _queued(api, api.post_once("/start", {"url": args.repo_url, "branch": args.branch}),
                   args.follow)


def redeploy(api: Api, args: argparse.Namespace) -> int:
    return _queued(api, api.post(f"/redeploy/{args.id}"), args.follow)


def info(api: Api, args: argparse.Namespace) -> int:
    print(render.info(_deployment(api.get(f"/info/{args.id}"))))
    return 0


def results(api: Api, args: argparse.Namespace) -> int:
    recorded = _field(api.get(f"/results/{args.id}"), "results", str)
    terminal = sys.stdout.isatty()
    # As recorded, but with what could drive the terminal escaped (colours kept on a terminal).
    logs = safe.LogText(terminal)
    text = logs.feed(recorded) + logs.flush()
    # A terminal's prompt should not follow on the last line, nor in the log's last colour.
    sys.stdout.write(text + logs.reset() + ("\n" if text and not text.endswith("\n") and terminal
                                            else ""))
    sys.stdout.flush()
    return 0


def logs(api: Api, args: argparse.Namespace) -> int:
    return follow(api, args.id) if args.follow else results(api, args)


def listing(api: Api, args: argparse.Namespace) -> int:
    found = _field(api.get("/deployments", status=args.status, repo=args.repo, limit=args.limit),
                   "deployments", list)
    print(render.table([_deployment(d) for d in found]))
    return 0


def environments(api: Api, args: argparse.Namespace) -> int:
    print(render.environments(_field(api.get("/environments"), "environments", list)))
    return 0


def rollback(api: Api, args: argparse.Namespace) -> int:
    body = {"release": args.release} if args.release is not None else None
    return _queued(api, api.post(f"/environments/{args.environment}/rollback", body),
                   args.follow)


def cancel(api: Api, args: argparse.Namespace) -> int:
    print(render.info(_deployment(api.post(f"/cancel/{args.id}"))))
    return 0


def _secret_path(name: str) -> str:
    # Quoted whole: a name with / or ? stays one path segment, and SPEED judges it.
    return "/secrets/" + urllib.parse.quote(name, safe="")


SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def secret_set(api: Api, args: argparse.Namespace) -> int:
    if args.on_command_line:
        raise CliError("secret set takes no value on the command line, where other users can "
                       "read it (ps): pipe it in, or give --from-file PATH")
    if not SECRET_NAME.fullmatch(args.name):
        # Not repeated: `speed secret set API_KEY=value` would print the value (and, sent, put
        # it in SPEED's access log).
        raise CliError("a secret's name is letters, digits and _, not starting with a digit; "
                       "the value comes from stdin or --from-file, never the command line")
    secret = value.read(args.name, args.from_file)
    status, body = api.answer("PUT", _secret_path(args.name), {
        "value": secret, "repositories": args.repositories, "branches": args.branches,
        "pull_requests": args.pull_requests})
    name = _field(body, "name", str)
    print(safe.field(f"{'created' if status == 201 else 'replaced'} secret {name}"))
    return 0


def secret_list(api: Api, args: argparse.Namespace) -> int:
    found = _field(api.get("/secrets"), "secrets", list)
    print(render.secrets([s if isinstance(s, dict) else {} for s in found]))
    return 0


def secret_rm(api: Api, args: argparse.Namespace) -> int:
    api.call("DELETE", _secret_path(args.name))
    print(safe.field(f"deleted secret {args.name}"))
    return 0
