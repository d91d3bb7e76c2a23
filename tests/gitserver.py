"""Real git repositories served over git's smart HTTP (git http-backend) on 127.0.0.1."""
import base64
import http.server
import os
import pathlib
import secrets
import subprocess
import threading

GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
_GIT_ENV = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
            "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def _git(*args: str, cwd: pathlib.Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **_GIT_ENV}, check=True,
                          capture_output=True, text=True).stdout.strip()


class _Handler(http.server.BaseHTTPRequestHandler):
    root: pathlib.Path
    # Repositories under /private/ need HTTP basic auth with this password (a GitHub-style token).
    private_token: str = ""
    seen_authorization: list
    requests: list  # (path, headers) of every request, in order

    def do_GET(self):
        self._cgi()

    def do_POST(self):
        self._cgi()

    def log_message(self, *args):
        pass

    def _cgi(self):
        path, _, query = self.path.partition("?")
        self.requests.append((path, dict(self.headers.items())))
        if path.startswith("/private/"):
            authorization = self.headers.get("Authorization", "")
            self.seen_authorization.append(authorization)
            expected = "Basic " + base64.b64encode(f"x-access-token:{self.private_token}".encode()).decode()
            if authorization != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="private"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path, "QUERY_STRING": query,
            "REQUEST_METHOD": self.command, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": self.client_address[0],
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        output = subprocess.run([GIT_HTTP_BACKEND], input=body, env=env, capture_output=True).stdout
        head, _, payload = output.partition(b"\r\n\r\n")
        if not payload and b"\n\n" in head:
            head, _, payload = output.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client (a cancelled clone) hung up



class GitServer:
    """Bare repositories under root, served at http://127.0.0.1:PORT/<name>.git.

    Those named private/... answer only to the private_token, as GitHub does for private ones."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.work = root / "_work"
        self.seen_authorization: list[str] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.private_token = "ghp_" + secrets.token_hex(16)
        handler = type("Handler", (_Handler,), {"root": root, "private_token": self.private_token,
                                                "seen_authorization": self.seen_authorization,
                                                "requests": self.requests})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}.git"

    def headers_sent_to(self, name: str) -> list[dict[str, str]]:
        """The headers of every request made of repository name so far, in order."""
        prefix = f"/{name}.git/"
        return [headers for path, headers in list(self.requests) if path.startswith(prefix)]

    def commit(self, name: str, files: dict[str, str], branch: str = "main",
               message: str = "commit") -> str:
        """Write files on branch of repository name (created if new); return the commit sha."""
        bare = self.root / f"{name}.git"
        work = self.work / name
        if not bare.exists():
            _git("init", "--quiet", "--bare", str(bare))
            _git("init", "--quiet", "-b", branch, str(work))
            _git("remote", "add", "origin", str(bare), cwd=work)
        elif _git("branch", "--list", branch, cwd=work):
            _git("checkout", "--quiet", branch, cwd=work)
        else:
            _git("checkout", "--quiet", "-b", branch, cwd=work)
        for path, text in files.items():
            target = work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        _git("add", "--all", cwd=work)
        _git("commit", "--quiet", "--allow-empty", "-m", message, cwd=work)
        _git("push", "--quiet", "origin", branch, cwd=work)
        return _git("rev-parse", "HEAD", cwd=work)

    def close(self) -> None:
        self._server.shutdown()
