"""A private Caddy for tests: its own admin port (never 2019), listen port and home; restartable."""
import http.client
import json
import os
import pathlib
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

from tests.conftest import free_port

START_TIMEOUT = 15.0


def binary() -> str | None:
    """The caddy command, if installed."""
    return shutil.which("caddy")


class Caddy:
    """`caddy run` with a JSON config naming its admin address; Caddy's files stay in directory."""

    def __init__(self, directory: pathlib.Path, command: str):
        self.directory = directory
        self.command = command
        self.admin_port = free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.listen = f"127.0.0.1:{free_port()}"
        # What Caddy starts with: only its admin endpoint (the default, 2019, may be a user's).
        # Caddy 2.6 ignores CADDY_ADMIN: the address must be in the config itself.
        self.initial = {"admin": {"listen": f"127.0.0.1:{self.admin_port}",
                                  "config": {"persist": False}}}
        self.config_path = directory / "caddy.json"
        self.config_path.write_text(json.dumps(self.initial))
        self.log_path = directory / "caddy.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start Caddy and return once its admin API answers."""
        home = self.directory / "home"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}
        with open(self.log_path, "ab") as log:
            # cwd is Caddy's own directory: `caddy run` must find no Caddyfile of anyone's.
            self.process = subprocess.Popen(
                [self.command, "run", "--config", str(self.config_path)], cwd=self.directory,
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"caddy did not start; its log:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop Caddy (SIGTERM, then SIGKILL) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Restart Caddy with nothing but its initial config, as after a crash or a reboot."""
        self.stop()
        self.start()

    def reset(self) -> None:
        """Load the initial config again: everything the last test put into Caddy goes."""
        self.request("POST", "/load", self.initial)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.admin + "/config/", timeout=1):
                return True
        except OSError:  # an HTTPError too: Caddy answers /config/ with 200
            return False

    def config(self, path: str = "") -> Any:
        """Caddy's config at path (e.g. "apps/http/servers"), as JSON."""
        return self.request("GET", f"/config/{path}")

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """One admin API call; the decoded answer. HTTPError on a refusal."""
        data = None if body is None else json.dumps(body).encode()
        # Caddy replaces its admin endpoint after every config change, resetting connections
        # the old one accepted: a call that can safely be repeated is, for a moment.
        again_until = time.monotonic() + (1.0 if method == "GET" or path == "/load" else 0)
        while True:
            request = urllib.request.Request(self.admin + path, data=data, method=method,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    text = response.read()
                return json.loads(text) if text.strip() else None
            except urllib.error.HTTPError:
                raise
            except (ConnectionError, http.client.RemoteDisconnected, urllib.error.URLError):
                if time.monotonic() > again_until:
                    raise
                time.sleep(0.02)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
