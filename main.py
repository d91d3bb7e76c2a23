"""SPEED's entry point: python main.py [--config app.yaml] [--host H] [--port P], or
python main.py [--config app.yaml] rotate-secrets [--new-key]."""
import argparse
import asyncio
import logging
import pathlib
import resource
import sys

from aiohttp import web

from bot.app import create_app
from bot.config import ConfigError, load, secrets_key_file
from bot.logs import configure_logging
from bot.secrets_api import keyring_for
from storage import secrets
from storage.keyring import KeyringError, add_key
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
        app = create_app(config)
    except ConfigError as e:
        print(f"speed: configuration error: {e}", file=sys.stderr)
        return 2
    raise_open_files_limit()
    logging.getLogger("speed").info("listening on http://%s:%s", config.server.host,
                                    config.server.port)
    try:
        # shutdown_timeout: open requests (live log streams) get a few seconds, not a minute.
        web.run_app(app, host=config.server.host, port=config.server.port,
                    print=None, access_log_format='%r %s %b %Tfs', shutdown_timeout=SHUTDOWN_SECONDS)
    except StorageFull as e:
        print(f"speed: {e}; free some space and start again", file=sys.stderr)
        return 1
    return 0


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


def rotate_secrets(config, new_key: bool) -> int:
    """Re-encrypt every secret under the first key; the old keys may go afterwards."""
    if new_key:
        if config.secrets.key:
            raise ConfigError("--new-key adds to a key file; with secrets.key, put a new key "
                              "first in secrets.key yourself")
        add_key(pathlib.Path(secrets_key_file(config)))
    keyring = keyring_for(config)
    store = Store(config.database.url)
    try:
        count = asyncio.run(store.run(secrets.reencrypt, keyring.rotate))
    except KeyringError as e:
        raise ConfigError(str(e)) from None
    finally:
        store.close()
    print(f"re-encrypted {count} secret{'s' if count != 1 else ''} under the first key; keys "
          "after it are no longer needed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
