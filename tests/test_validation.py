"""check_url refuses URLs that make git run code or reach inside; check_branch agrees with git."""
import os
import subprocess
import unicodedata

import pytest

from runner.validation import MAX_BRANCH, Invalid, check_branch, check_url

DEFAULT = ("https://*", "ssh://*")
HTTPS = ("https://*",)


@pytest.mark.parametrize("url, allowed", [
    ("--upload-pack=touch /tmp/x", DEFAULT),
    ("-uhttps://github.com/acme/app.git", DEFAULT),
    ("ext::sh -c touch% /tmp/pwned", DEFAULT),
    ("ext::sh%20-c%20touch%20/tmp/pwned", ("*",)),
    ("fd::17/foo", ("*",)),
    ("file:///etc", ("*",)),
    ("/etc/passwd", ("*",)),
    ("github.com:acme/app.git", ("*",)),
    ("ssh://-oProxyCommand=touch%20/tmp/x/foo", DEFAULT),
    ("ssh://-user@github.com/acme/app.git", DEFAULT),
    ("https://user:pass@github.com/a/b.git", DEFAULT),
    ("https://user@github.com/a/b.git", DEFAULT),
    ("ssh://git:secret@github.com/a/b.git", DEFAULT),
    ("https://github.com/a b.git", DEFAULT),
    ("https://github.com/a.git\n", DEFAULT),
    ("https://github.com/a\nb.git", DEFAULT),
    ("https://github.com/a\x00.git", DEFAULT),
    ("https://github.com/a\t.git", DEFAULT),
    ("https://github.com/a\x7f.git", DEFAULT),
    ("", DEFAULT),
    ("https://github.com/" + "a" * 2981, DEFAULT),
    ("http://github.com/acme/app.git", DEFAULT),
    ("git://github.com/acme/app.git", DEFAULT),
    ("https://[::1/x.git", DEFAULT),
    ("https://github.com:0/acme/app.git", DEFAULT),  # accepted, it failed at ls-remote
    ("https://github.com:99999/acme/app.git", DEFAULT),
    ("https://github.com\uff0f@127.0.0.1/x.git", DEFAULT),
    # Hosts inside: refused unless a pattern names them, in every spelling git's resolver takes.
    ("https://127.0.0.1/x.git", HTTPS),
    ("https://169.254.169.254/x", HTTPS),
    ("https://localhost/x", HTTPS),
    ("https://LOCALHOST/x", HTTPS),
    ("https://localhost./x", HTTPS),
    ("https://api.localhost/x", HTTPS),
    ("https://10.0.0.5/x.git", HTTPS),
    ("https://192.168.1.1/x.git", HTTPS),
    ("https://172.16.0.1/x.git", HTTPS),
    ("https://172.31.255.254/x.git", HTTPS),
    ("https://100.64.0.1/x.git", HTTPS),  # shared address space (carrier NAT, some metadata)
    ("https://198.18.0.1/x.git", HTTPS),
    ("https://224.0.0.1/x.git", HTTPS),
    ("https://240.0.0.1/x.git", HTTPS),
    ("https://0.1.2.3/x.git", HTTPS),
    ("https://[fe80::1]/x.git", HTTPS),  # IPv6 link-local
    ("https://[fc00::1]/x.git", HTTPS),  # IPv6 unique local
    ("https://[fd00:ec2::254]/x.git", HTTPS),  # AWS's IPv6 metadata address
    ("https://[::]/x.git", HTTPS),
    ("https://[::ffff:169.254.169.254]/x.git", HTTPS),
    ("https://0.0.0.0/x.git", HTTPS),
    ("https://[::1]/x.git", HTTPS),
    ("https://[::ffff:127.0.0.1]/x.git", HTTPS),
    ("https://127.1/x.git", HTTPS),
    ("https://2130706433/x.git", HTTPS),
    ("https://0x7f000001/x.git", HTTPS),
    ("https://0/x.git", HTTPS),
    ("https://\uff11\uff12\uff17\u30020\u30020\u30021/x.git", HTTPS),  # fullwidth 127。0。0。1
    ("https://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/x.git", HTTPS),  # localhost
    ("http://127.0.0.1:8000/x.git", ("http://*",)),  # a wildcard does not name a host
    ("http://127.1:8000/x.git", ("http://127.*",)),
])
def test_refused_urls(url, allowed):
    """Attack: option injection (Jenkins CVE-2019-10392, CVE-2017-1000117), GitPython's ext::,
    local paths, credentials, control chars, internal hosts. Asserts: Invalid('url: ...')."""
    with pytest.raises(Invalid, match="^url: "):
        check_url(url, allowed)


@pytest.mark.parametrize("url, allowed", [
    ("https://github.com/acme/app.git", DEFAULT),
    ("ssh://git@github.com/acme/app.git", DEFAULT),
    ("https://github.com:443/acme/app.git", DEFAULT),
    ("https://8.8.8.8/acme/app.git", DEFAULT),
    ("http://127.0.0.1:8000/x.git", ("http://127.0.0.1:*",)),
    ("https://github.com/" + "a" * (2048 - 19), DEFAULT),
])
def test_accepted_urls(url, allowed):
    """No over-blocking: ordinary URLs, and a loopback host a pattern names, pass unchanged."""
    assert check_url(url, allowed) == url


BRANCHES = [
    "main", "release/1.2", "a-b_c", "feature/ünïcödé", "refs/heads/x", "x/HEAD", "a;b", "#tag",
    "a./b", "a{b}", "a" * MAX_BRANCH, "-x", "-", "--upload-pack=touch /tmp/x", "$(touch x)", "`id`",
    "a'b", 'a"b', "..", "a..b", "a/../b", "a@{b", "@{-1}", "@", "HEAD", "a.", "a/b.", ".", "a/.",
    "a.lock", "a.lock/b", "a/b.lock", ".a", "a/.b", ".lock", "a//b", "/a", "a/", "/", "a\x01b",
    "a\x1fb", "a\x7fb", "a\tb", "a\nb", "a b", "a~b", "a^b", "a:b", "a?b", "a*b", "a[b", "a\\b",
    "a" * (MAX_BRANCH + 1), "a" * 10_000,
]
# git takes "@" as a branch name (refs/heads/@ is a valid ref), but in revisions "@" means HEAD.
STRICTER = {"HEAD", "@"}


def git_accepts(name: str, cwd) -> bool:
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(cwd.parent))  # never inside a repository
    return subprocess.run(["git", "check-ref-format", "--branch", name], cwd=cwd, env=env,
                          capture_output=True).returncode == 0


def accepts(name: str) -> bool:
    try:
        assert check_branch(name) == name
    except Invalid as e:
        assert str(e).startswith("branch: ")
        return False
    return True


@pytest.mark.parametrize("name", BRANCHES, ids=[repr(name)[:40] for name in BRANCHES])
def test_check_branch_accepts_what_git_accepts(name, tmp_path):
    """Attack: branches with a leading '-', $(...), quotes, ';', '..', control chars, 10,000 chars.
    Asserts: check_branch agrees with git check-ref-format; also refuses HEAD, @, over-long."""
    if len(name) > MAX_BRANCH or name in STRICTER:
        assert not accepts(name)
    else:
        assert accepts(name) == git_accepts(name, tmp_path)


def test_git_itself_is_consulted(tmp_path):
    """The oracle above is real git: it accepts 'main' and refuses 'a..b'."""
    assert git_accepts("main", tmp_path) and not git_accepts("a..b", tmp_path)


@pytest.mark.parametrize("name", ["a\x00b", "\x00", "main\x00--upload-pack=x"])
def test_check_branch_refuses_nul(name):
    """Attack: a NUL byte in a branch name (argv would cut it). Asserts: refused, 'branch: ...'."""
    assert not accepts(name)


# Every Unicode control character (category Cc): C0, DEL and C1. git takes C1 in branch names
# (U+0085 is the bytes C2 85 to it), but U+009B is a CSI to a terminal and U+0085 a line break.
CONTROLS = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cc"]


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_every_control_character_is_refused_in_branches_and_urls(char):
    """Attack: a branch or URL carrying a C0 or C1 control (U+009B CSI, U+0085 NEL) that would
    reach operators' terminals through `speed list`. Asserts: Invalid, naming control
    characters, for all 65 of them."""
    with pytest.raises(Invalid, match=r"^branch: contains a character refused .*control char"):
        check_branch(f"feature{char}x")
    with pytest.raises(Invalid, match=r"^url: must not contain spaces or control characters"):
        check_url(f"https://github.com/acme/app{char}.git", DEFAULT)


def test_git_itself_takes_c1_controls(tmp_path):
    """Why C1 needs a rule of its own: git check-ref-format accepts U+0085 and U+009B."""
    assert git_accepts("a\u0085b", tmp_path) and git_accepts("a\u009bb", tmp_path)


@pytest.mark.parametrize("branch", ["main\u0085x", "main\u009b2J", "main\x00x", "main\x1b]52;c;x"])
async def test_start_refuses_control_characters_in_branches(client, branch):
    """Attack: POST /start with a branch carrying U+0085, U+009B, NUL or ESC. Asserts: 400
    naming the branch, and nothing stored."""
    url = "https://github.com/acme/app.git"
    response = await client.post("/start", json={"url": url, "branch": branch})
    assert response.status == 400
    assert (await response.json())["error"].startswith("branch: ")
    assert (await (await client.get("/deployments")).json())["deployments"] == []


async def test_start_refuses_a_c1_control_in_the_url(client):
    """Attack: POST /start with U+0085 in the URL. Asserts: 400 naming the URL, nothing stored."""
    response = await client.post("/start", json={"url": "https://github.com/a\u0085b.git",
                                                 "branch": "main"})
    assert response.status == 400
    assert (await response.json())["error"] == ("url: must not contain spaces or control "
                                                "characters (U+0000-U+001F, U+007F-U+009F)")
    assert (await (await client.get("/deployments")).json())["deployments"] == []
