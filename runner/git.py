"""Fetching a deployment's source with git: shallow, one branch, no prompts, no surprises."""
import asyncio
import base64
import contextlib
import os
import signal
import urllib.parse

from runner.errors import CheckoutFailed
from runner.validation import Unresolved, addresses_of

_MAX_MESSAGE = 4000


async def pin(url: str, allowed: tuple[str, ...], timeout: float) -> tuple[str, ...]:
    """Resolve url's host once, now, and check the answer again: DNS may answer otherwise than
    when the deployment was requested (rebinding). Pass the result to checkout and resolve."""
    try:
        return await addresses_of(url, allowed, timeout)
    except (ValueError, Unresolved) as e:  # Invalid, or a port that older SPEEDs let through
        raise CheckoutFailed(f"not cloning: {str(e).removeprefix('url: ')}") from None


def _environment(url: str, token: str | None, addresses: tuple[str, ...]) -> dict[str, str]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme or "ssh"
    config = []
    if token:
        # In the environment, not the command line, where other users could read it.
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        config.append(("http.extraHeader", f"Authorization: Basic {basic}"))
    if addresses and scheme in ("http", "https"):
        # curl connects to the checked addresses and never resolves the name itself. The exact
        # host works with any curl; "*" (curl >= 7.86) also covers hosts curl spells otherwise.
        # ssh and git:// resolve on their own: for them the check in pin() is all there is.
        port = parts.port or (443 if scheme == "https" else 80)
        listed = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
        config += [("http.curloptResolve", f"{host}:{port}:{listed}")
                   for host in (parts.hostname, "*")]
    entries = {"GIT_CONFIG_COUNT": str(len(config))} if config else {}
    for i, (key, value) in enumerate(config):
        entries |= {f"GIT_CONFIG_KEY_{i}": key, f"GIT_CONFIG_VALUE_{i}": value}
    return {
        **entries,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/nonexistent"),  # ssh keys and known_hosts live there
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        # Only the transport the validated URL names; never ext::, fd:: or file:// behind its back.
        "GIT_ALLOW_PROTOCOL": scheme,
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        "LC_ALL": "C",
    }


async def _git(args: list[str], url: str, timeout: float, cwd: str | None = None,
               token: str | None = None, addresses: tuple[str, ...] = ()) -> str:
    spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
        # timeout(1) kills git's process group at the deadline even if SPEED died (kill -9)
        # meanwhile: an orphaned clone must not hang on a stalled server for ever.
        "timeout", "-s", "KILL", f"{timeout:g}",
        "git", "-c", "http.followRedirects=false", "-c", "core.hooksPath=/dev/null", *args,
        cwd=cwd, env=_environment(url, token, addresses), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        # Its own process group: git's transport helpers (git remote-https) die with it.
        start_new_session=True))
    try:
        process = await asyncio.shield(spawn)
    except asyncio.CancelledError:
        # Cancelled while asyncio connected the pipes, asyncio would kill timeout(1) alone
        # (SIGKILL is not passed on) and wait for git's output to end: with a stalled server,
        # for ever. The whole group goes instead, once the process is known, however often
        # the cancel comes meanwhile (a deployment's clean-up may cancel it again).
        while not spawn.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(spawn)
        if not spawn.cancelled() and spawn.exception() is None:
            await _end(spawn.result())
        raise
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel (a deployment
        # cancelled) that comes as git ends.
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        raise CheckoutFailed(f"git {args[0]} timed out after {timeout:g} s") from None
    finally:
        await _end(process)
    text = output.decode("utf-8", "replace")
    if token:
        text = text.replace(token, "[redacted]")
    if process.returncode != 0:
        why = _why(text)
        raise CheckoutFailed(f"git {args[0]} failed (exit code {process.returncode})"
                             + (f": {why}" if why else ""), text[-_MAX_MESSAGE:])
    return text


def _why(output: str) -> str:
    """git's own reason in its output: its last fatal: or error: line (at most 200 characters)."""
    said = [line.strip() for line in output.splitlines()
            if line.startswith(("fatal: ", "error: "))]
    return said[-1][:200] if said else ""


async def _end(process: asyncio.subprocess.Process) -> None:
    """Kill git's process group, unless it ended, and wait for it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def checkout(url: str, branch: str, destination: str, timeout: float,
                   commit: str | None = None, token: str | None = None,
                   addresses: tuple[str, ...] = ()) -> str:
    """Clone branch from url into destination, at commit if given (else its tip); return the sha.
    With addresses (from pin), git connects to those only."""
    await _git(["clone", "--quiet", "--depth", "1", "--single-branch", "--no-tags",
                "--branch", branch, "--", url, destination], url, timeout, token=token,
               addresses=addresses)
    head = (await _git(["rev-parse", "HEAD"], url, timeout, cwd=destination)).strip()
    if commit and head != commit:
        # The branch moved on since the push that asked for commit: fetch exactly that one.
        return await move_to(url, destination, commit, timeout, token, addresses)
    return head


async def move_to(url: str, destination: str, commit: str, timeout: float,
                  token: str | None = None, addresses: tuple[str, ...] = ()) -> str:
    """Check out exactly commit in the clone at destination, fetching it; return it."""
    await _git(["fetch", "--quiet", "--depth", "1", "--no-tags", "origin", "--", commit],
               url, timeout, cwd=destination, token=token, addresses=addresses)
    await _git(["checkout", "--quiet", "--detach", commit], url, timeout, cwd=destination)
    return commit


async def resolve(url: str, branch: str, timeout: float, token: str | None = None,
                  addresses: tuple[str, ...] = ()) -> str | None:
    """The commit at the tip of branch, asking the remote without cloning; None if it has none."""
    listed = await _git(["ls-remote", "--", url, f"refs/heads/{branch}"], url, timeout, token=token,
                        addresses=addresses)
    for line in listed.splitlines():
        sha, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}":
            return sha
    return None
