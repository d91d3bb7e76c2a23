"""Secrets through the API: set, list and delete with an API token; values go in, never out."""
import hashlib
import json
import pathlib
import re

from aiohttp import web

from bot.api import iso
from bot.auth import SESSION_COOKIE, bearer, known_token, require_api_token
from bot.config import Config, ConfigError, secrets_key_file
from bot.errors import json_error
from bot.keys import config_key, keyring_key, store_key
from bot.requests import json_object, text_field
from runner.scope import check_pattern
from runner.secrets import MIN_VALUE
from runner.validation import MAX_BRANCH, MAX_URL
from storage import secrets as queries
from storage import sessions
from storage.errors import NotFound
from storage.keyring import KeyFileKeyring, Keyring, KeyringError
from storage.models import Secret

routes = web.RouteTableDef()

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_VALUE = 64 * 1024
MAX_PATTERNS = 100


def keyring_for(config: Config) -> Keyring:
    """The keys of secrets.key, or of the key file (made at start-up if nothing is stored)."""
    try:
        if config.secrets.key:
            return Keyring(list(config.secrets.key))
        return KeyFileKeyring(pathlib.Path(secrets_key_file(config)))
    except KeyringError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"secrets.key_file: {e.filename}: {e.strerror}") from None


def describe(secret: Secret) -> dict:
    """A secret as the API shows it: everything but the value."""
    return {"name": secret.name, "repositories": json.loads(secret.repositories),
            "branches": json.loads(secret.branches), "pull_requests": secret.pull_requests,
            "created_at": iso(secret.created_at), "updated_at": iso(secret.updated_at),
            "updated_by": secret.updated_by}


async def _who(request: web.Request) -> str:
    """Which token made a change, as the start of its sha256: never the token itself."""
    token = bearer(request)
    if token and known_token(token, request.app[config_key].auth.api_tokens):
        return "token sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]
    cookie = request.cookies.get(SESSION_COOKIE)
    found = cookie and await request.app[store_key].run(sessions.token_hash_of, cookie)
    return f"token sha256:{found[:12]} (signed in)" if found else "no token (the API is open)"


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME.fullmatch(name) or name.upper().startswith("SPEED_"):
        raise json_error(400, "A secret's name is 1 to 128 letters, digits and _, not starting "
                              "with a digit or SPEED_ (it becomes an environment variable)")
    return name


def _strings(body: dict, key: str, required: bool, longest: int) -> list[str]:
    value = body.get(key, None if required else [])
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= longest
                                              for v in value) \
            or (required and not value) or len(value) > MAX_PATTERNS:
        raise json_error(400, f"'{key}' must be a list of {1 if required else 0} to "
                              f"{MAX_PATTERNS} strings of 1 to {longest} characters")
    return [text_field({key: item}, key) for item in value]  # valid Unicode, as every field


@routes.put("/secrets/{name}")
async def put_secret(request: web.Request) -> web.Response:
    """Create or replace a secret: 201 when new, 200 when replaced."""
    await require_api_token(request, request.app[config_key].auth.api_tokens)
    name = _name(request)
    body = await json_object(request, "value", "repositories", "branches", "pull_requests")
    value = text_field(body, "value")
    # White space around the value counts for nothing: redacting a value of spaces alone
    # would cut holes in ordinary output, as a short one would.
    if not MIN_VALUE <= len(value.strip()) <= len(value) <= MAX_VALUE or "\0" in value:
        raise json_error(400, f"'value' must be text of {MIN_VALUE} to {MAX_VALUE} characters "
                              f"without NUL, {MIN_VALUE} of them other than white space")
    try:
        repositories = [check_pattern(p) for p in _strings(body, "repositories", True, MAX_URL)]
    except ValueError as e:
        raise json_error(400, f"'repositories': {e}") from None
    branches = _strings(body, "branches", False, MAX_BRANCH)
    pull_requests = body.get("pull_requests", False)
    if not isinstance(pull_requests, bool):
        raise json_error(400, "'pull_requests' must be true or false")
    ciphertext = request.app[keyring_key].encrypt(value)
    created = await request.app[store_key].run(queries.put, name, ciphertext, repositories,
                                               branches, pull_requests, await _who(request))
    found = await request.app[store_key].run(queries.named, [name])
    return web.json_response(describe(found[name]), status=201 if created else 200)


@routes.get("/secrets")
async def list_secrets(request: web.Request) -> web.Response:
    """Every secret's name, scope and history; never a value."""
    await require_api_token(request, request.app[config_key].auth.api_tokens)
    found = await request.app[store_key].run(queries.listing)
    return web.json_response({"secrets": [describe(secret) for secret in found]})


@routes.delete("/secrets/{name}")
async def delete_secret(request: web.Request) -> web.Response:
    """Delete a secret; deployments that ask for it afterwards fail saying it is not defined."""
    await require_api_token(request, request.app[config_key].auth.api_tokens)
    try:
        await request.app[store_key].run(queries.delete, _name(request))
    except NotFound:
        raise json_error(404, "Secret not found") from None
    return web.json_response({"message": "Secret deleted"})
