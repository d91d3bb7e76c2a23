"""Fetching a deployment's source with git: shallow, one branch, no prompts, no surprises."""
import asyncio
import base64
import contextlib
import os
import signal
import urllib.parse

from runner.errors import CheckoutFailed

_MAX_MESSAGE = 4000


def _environment(url: str, token: str | None) -> dict[str, str]:
    scheme = urllib.parse.urlsplit(url).scheme or "ssh"
    secret = {}
    if token:
        # In the environment, not the command line, where other users could read it.
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        secret = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                  "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}
    return {
        **secret,
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
               token: str | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        "git", "-c", "http.followRedirects=false", "-c", "core.hooksPath=/dev/null", *args,
        cwd=cwd, env=_environment(url, token), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        # Its own process group: git's transport helpers (git remote-https) die with it.
        start_new_session=True)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        raise CheckoutFailed(f"git {args[0]} timed out after {timeout:g} s") from None
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    text = output.decode("utf-8", "replace")
    if token:
        text = text.replace(token, "[redacted]")
    if process.returncode != 0:
        raise CheckoutFailed(f"git {args[0]} failed (exit code {process.returncode})",
                             text[-_MAX_MESSAGE:])
    return text


async def checkout(url: str, branch: str, destination: str, timeout: float,
                   commit: str | None = None, token: str | None = None) -> str:
    """Clone branch from url into destination, at commit if given (else its tip); return the sha."""
    await _git(["clone", "--quiet", "--depth", "1", "--single-branch", "--no-tags",
                "--branch", branch, "--", url, destination], url, timeout, token=token)
    head = (await _git(["rev-parse", "HEAD"], url, timeout, cwd=destination)).strip()
    if commit and head != commit:
        # The branch moved on since the push that asked for commit: fetch exactly that one.
        await _git(["fetch", "--quiet", "--depth", "1", "--no-tags", "origin", "--", commit],
                   url, timeout, cwd=destination, token=token)
        await _git(["checkout", "--quiet", "--detach", commit], url, timeout, cwd=destination)
        head = commit
    return head


async def resolve(url: str, branch: str, timeout: float, token: str | None = None) -> str | None:
    """The commit at the tip of branch, asking the remote without cloning; None if it has none."""
    listed = await _git(["ls-remote", "--", url, f"refs/heads/{branch}"], url, timeout, token=token)
    for line in listed.splitlines():
        sha, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}":
            return sha
    return None
