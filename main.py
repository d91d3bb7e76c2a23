"""SPEED's entry point: python main.py [--config app.yaml] [--host H] [--port P]."""
import argparse
import logging
import sys

from aiohttp import web

from bot.app import create_app
from bot.config import ConfigError, load
from bot.logs import configure_logging
from storage.store import StorageFull

SHUTDOWN_SECONDS = 3.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SPEED deployment bot")
    parser.add_argument("--config", default="app.yaml", help="configuration file (default app.yaml)")
    parser.add_argument("--host", help="listen address (overrides server.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides server.port)")
    args = parser.parse_args(argv)
    configure_logging()
    overrides = {f"server__{key}": value for key, value in
                 (("host", args.host), ("port", args.port)) if value is not None}
    try:
        config = load(args.config, **overrides)
    except ConfigError as e:
        print(f"speed: configuration error: {e}", file=sys.stderr)
        return 2
    logging.getLogger("speed").info("listening on http://%s:%s", config.server.host,
                                    config.server.port)
    try:
        # shutdown_timeout: open requests (live log streams) get a few seconds, not a minute.
        web.run_app(create_app(config), host=config.server.host, port=config.server.port,
                    print=None, access_log_format='%r %s %b %Tfs', shutdown_timeout=SHUTDOWN_SECONDS)
    except StorageFull as e:
        print(f"speed: {e}; free some space and start again", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
