"""Where SPEED is and which token to send: flags first, then the environment."""
import argparse
import os
import urllib.parse

from speedcli.errors import CliError

DEFAULT_URL = "http://127.0.0.1:8080"


def _checked(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (
            parts.port is None or parts.port > 0)
    except ValueError:  # a bad port or IPv6 literal
        valid = False
    if not valid:
        raise CliError(f"the server URL must look like http(s)://HOST[:PORT], not {url!r}")
    return url


def server(args: argparse.Namespace) -> tuple[str, str | None]:
    """(base URL, API token or None) from --url/--token, SPEED_URL/SPEED_API_TOKEN."""
    url = getattr(args, "url", None) or os.environ.get("SPEED_URL") or DEFAULT_URL
    token = getattr(args, "token", None)
    if token is None:
        token = os.environ.get("SPEED_API_TOKEN")
    return _checked(url), token or None
