"""SPEED's entry point: python main.py [--config app.yaml] [--host H] [--port P], or
python main.py [--config app.yaml] rotate-secrets [--new-key]."""
import argparse
import asyncio
import errno
import logging
import pathlib
import resource
import sys

from aiohttp import web

from bot.access_log import AccessLog
from bot.app import create_app
from bot.config import ConfigError, load, secrets_key_file
from bot.logs import configure_logging
from bot.secrets_api import keyring_for
from storage import secrets
from storage.keyring import Keyring, KeyringError, add_key
from storage.store import Store, StorageFull

SHUTDOWN_SECONDS = 3.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SPEED deployment bot")
    parser.add_argument("--config", default="app.yaml", help="configuration file (default app.yaml)")
    parser.add_argument("--host", help="listen address (overrides server.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides server.port)")
    commands = parser.add_subparsers(dest="command")
    rotate = commands.add_parser("rotate-secrets", help="re-encrypt every secret under the first "
                                 "key of secrets.key (or of the key file), then exit")
    rotate.add_argument("--new-key", action="store_true",
                        help="first put a new key at the top of the key file")
    args = parser.parse_args(argv)
    configure_logging()
    overrides = {f"server__{key}": value for key, value in
                 (("host", args.host), ("port", args.port)) if value is not None}
    try:
        config = load(args.config, **overrides)
        if args.command == "rotate-secrets":
            return rotate_secrets(config, args.new_key)
        serve(create_app(config), config)
    except (ConfigError, KeyringError) as e:
        # Also from start-up inside run_app (a lost key file): one line, not a traceback.
        print(f"speed: configuration error: {e}", file=sys.stderr)
        return 2
    except StorageFull as e:
        print(f"speed: {e}; free some space and start again", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise
        # aiohttp's own words name the address: "error while attempting to bind on ...".
        print(f"speed: cannot listen: {e.strerror}", file=sys.stderr)
        return 1
    logging.getLogger("speed").info("stopped")
    return 0


def serve(app: web.Application, config) -> None:
    """Run SPEED until it is stopped; start-up failures propagate."""
    raise_open_files_limit()
    listening = f"listening on http://{config.server.host}:{config.server.port}"
    # shutdown_timeout: open requests (live log streams) get a few seconds, not a minute.
    # print: said once the application started and the socket is open, not before.
    web.run_app(app, host=config.server.host, port=config.server.port,
                print=lambda _: logging.getLogger("speed").info(listening),
                access_log_class=AccessLog, shutdown_timeout=SHUTDOWN_SECONDS)


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard limit, and log it."""
    # Every connection, container log stream and database file is a descriptor; the usual soft
    # limit of 1024 is soon reached under load (or by a hostile container), and then accept()
    # fails for the API too. The hard limit is what the administrator allows.
    log = logging.getLogger("speed")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:  # an unlimited hard limit may be refused
            log.warning("cannot raise the open files limit from %s to %s: %s", soft, hard, e)
    log.info("open files limit: %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)


# Why a ciphertext is not under the first key after rotate-secrets, by whether any key reads it.
NOT_UNDER_FIRST = {True: "set under an older key meanwhile: run rotate-secrets again",
                   False: "no key decrypts it: lost unless the key it was encrypted under is "
                          "put back"}


def rotate_secrets(config, new_key: bool) -> int:
    """Re-encrypt every secret under the first key; say whether the keys after it may go."""
    if new_key and config.secrets.key:
        raise ConfigError("--new-key adds to a key file; with secrets.key, put a new key "
                          "first in secrets.key yourself")
    keyring = keyring_for(config)
    key_file = pathlib.Path(secrets_key_file(config)) if new_key else None
    store = Store(config.database.url)
    try:
        count, left = asyncio.run(_rotate(store, keyring, key_file))
    finally:
        store.close()
    done = f"re-encrypted {count} secret value{'s' if count != 1 else ''} under the first key"
    if not left:
        print(f"{done}; every secret decrypts with it alone: keys after it are no longer needed")
        return 0
    print(f"{done}; keep the keys after it, as these do not decrypt with it: " + "; ".join(
        f"{name} ({NOT_UNDER_FIRST[readable]})" for name, readable in left.items()),
        file=sys.stderr)
    return 1


async def _rotate(store: Store, keyring: Keyring, key_file: pathlib.Path | None):
    """Check the keys, add one if asked, re-encrypt: (how many, what the first key cannot read)."""
    await store.run(secrets.check_keys, keyring)  # as at start-up: a lost key file stops it here
    if key_file:
        add_key(key_file)  # a running SPEED encrypts under it from its next use on
    count = await store.run(secrets.reencrypt, keyring.rotate)
    # A running SPEED may set a secret under an older key while this runs (one configured by
    # secrets.key and not restarted does so for ever): only what is read back afterwards counts.
    stored = await store.run(secrets.ciphertexts)
    return count, {name: keyring.readable(ciphertext) for name, ciphertext in stored.items()
                   if not keyring.under_first(ciphertext)}


if __name__ == "__main__":
    sys.exit(main())
