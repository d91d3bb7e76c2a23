"""GitHub webhook deliveries for tests: payloads shaped like GitHub's, signed as GitHub signs."""
import functools
import hashlib
import hmac
import json
import uuid
import zlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ZERO_SHA = "0" * 40
TIMESTAMP = "2024-05-01T12:00:00Z"


def fake_sha(seed: str) -> str:
    """A stable 40-hex commit id derived from seed."""
    return hashlib.sha1(seed.encode()).hexdigest()


def _user(login: str, kind: str = "User") -> dict:
    """A GitHub user or organization object."""
    uid = zlib.crc32(login.encode())
    return {"login": login, "id": uid, "node_id": f"U_{uid}", "type": kind, "site_admin": False,
            "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
            "url": f"https://api.github.com/users/{login}",
            "html_url": f"https://github.com/{login}"}


def repository(full_name: str, clone_url: str, fork: bool = False, private: bool = False,
               default_branch: str = "main") -> dict:
    """A repository object as in webhook payloads; its id is stable per full_name."""
    owner, name = full_name.split("/", 1)
    rid = zlib.crc32(full_name.encode())
    return {"id": rid, "node_id": f"R_{rid}", "name": name, "full_name": full_name,
            "private": private, "owner": _user(owner), "fork": fork,
            "html_url": f"https://github.com/{full_name}", "clone_url": clone_url,
            "git_url": f"git://github.com/{full_name}.git",
            "ssh_url": f"git@github.com:{full_name}.git",
            "url": f"https://api.github.com/repos/{full_name}", "default_branch": default_branch,
            "visibility": "private" if private else "public", "archived": False, "disabled": False}


def _installation(installation_id: int | None) -> dict:
    """The `installation` key GitHub adds to deliveries for a GitHub App."""
    return {} if installation_id is None else {
        "installation": {"id": installation_id, "node_id": f"MDIzOkludGVncmF0aW9u{installation_id}"}}


def push_payload(full_name: str, clone_url: str, ref: str = "refs/heads/main",
                 before: str | None = None, after: str | None = None, deleted: bool = False,
                 installation_id: int | None = None, forced: bool = False,
                 sender: str = "octocat") -> dict:
    """A `push` event; deleted=True gives a branch deletion (after is all zeros, no head_commit)."""
    before = before or fake_sha(f"{full_name}:{ref}:before")
    after = ZERO_SHA if deleted else (after or fake_sha(f"{full_name}:{ref}:after"))
    repo = repository(full_name, clone_url)
    author = {"name": "Octo Cat", "email": "octocat@example.com", "username": sender}
    commit = None if deleted else {
        "id": after, "tree_id": fake_sha(f"tree:{after}"), "distinct": True,
        "message": "Update run.sh", "timestamp": TIMESTAMP, "url": f"{repo['html_url']}/commit/{after}",
        "author": author, "committer": author, "added": [], "removed": [], "modified": ["run.sh"]}
    return {"ref": ref, "before": before, "after": after, "repository": repo,
            "pusher": {"name": sender, "email": "octocat@example.com"}, "sender": _user(sender),
            "created": before == ZERO_SHA, "deleted": deleted, "forced": forced, "base_ref": None,
            "compare": f"{repo['html_url']}/compare/{before[:12]}...{after[:12]}",
            "commits": [] if commit is None else [commit], "head_commit": commit,
            **_installation(installation_id)}


def pull_request_payload(full_name: str, clone_url: str, action: str = "opened", number: int = 1,
                         head_sha: str | None = None, head_ref: str = "feature",
                         head_full_name: str | None = None, head_clone_url: str | None = None,
                         installation_id: int | None = None, base_ref: str = "main",
                         sender: str = "octocat") -> dict:
    """A `pull_request` event; a head_full_name other than full_name makes the head a fork."""
    head_full_name = head_full_name or full_name
    fork = head_full_name != full_name
    if head_clone_url is None:
        head_clone_url = f"https://github.com/{head_full_name}.git" if fork else clone_url
    head_sha = head_sha or fake_sha(f"{head_full_name}:{head_ref}")
    base = repository(full_name, clone_url)
    head = repository(head_full_name, head_clone_url, fork=fork)
    closed = action == "closed"
    pr = {"url": f"{base['url']}/pulls/{number}", "id": zlib.crc32(f"{full_name}#{number}".encode()),
          "number": number, "state": "closed" if closed else "open", "locked": False,
          "title": "Change things", "body": None, "user": _user(sender), "draft": False,
          "html_url": f"{base['html_url']}/pull/{number}", "created_at": TIMESTAMP,
          "updated_at": TIMESTAMP, "closed_at": TIMESTAMP if closed else None, "merged": False,
          "merged_at": None, "merge_commit_sha": None,
          "head": {"label": f"{head['owner']['login']}:{head_ref}", "ref": head_ref, "sha": head_sha,
                   "user": head["owner"], "repo": head},
          "base": {"label": f"{base['owner']['login']}:{base_ref}", "ref": base_ref,
                   "sha": fake_sha(f"{full_name}:{base_ref}"), "user": base["owner"], "repo": base}}
    return {"action": action, "number": number, "pull_request": pr, "repository": base,
            "sender": _user(sender), **_installation(installation_id)}


def ping_payload(hook_id: int = 1, zen: str = "Keep it logically awesome.") -> dict:
    """A `ping` event, sent when a webhook is created."""
    return {"zen": zen, "hook_id": hook_id, "sender": _user("octocat"),
            "hook": {"type": "App", "id": hook_id, "name": "web", "active": True, "events": ["push"],
                     "config": {"content_type": "json", "insecure_ssl": "0",
                                "url": "https://speed.example.com/webhook"},
                     "updated_at": TIMESTAMP, "created_at": TIMESTAMP}}


def encode(payload: dict) -> bytes:
    """A payload as the compact JSON body of a delivery."""
    return json.dumps(payload, separators=(",", ":")).encode()


def sign(body: bytes, secret: str) -> str:
    """GitHub's X-Hub-Signature-256 value: "sha256=" + HMAC-SHA256 of body keyed by secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_headers(event: str, body: bytes, secret: str | None, guid: str | None = None) -> dict:
    """The HTTP headers GitHub sends with a delivery; signed when secret is not None."""
    headers = {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/abc123",
               "X-GitHub-Event": event, "X-GitHub-Delivery": guid or str(uuid.uuid4()),
               "X-GitHub-Hook-ID": "1"}
    if secret is not None:
        sha1 = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
        headers["X-Hub-Signature"] = f"sha1={sha1}"
        headers["X-Hub-Signature-256"] = sign(body, secret)
    return headers


@functools.cache
def make_app_key(name: str = "app") -> tuple[bytes, bytes]:
    """A 2048-bit RSA key pair (private PEM, public PEM), one per name for the whole process."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public
