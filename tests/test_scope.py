"""The scope rule for secrets, as a matrix: repository by host and path (canonical, its case
counting except on hosts that ignore it), branch, pull request, fork."""
import re

import pytest

from runner.scope import Recipient, Scope, barred, check_pattern, host, refusal, repository

EXACT = Scope(repositories=("github.com/acme/app",))
GLOB = Scope(repositories=("github.com/acme/*",))
MAIN_ONLY = Scope(repositories=("github.com/acme/app",), branches=("main", "release/*"))
WITH_PRS = Scope(repositories=("github.com/acme/app",), pull_requests=True)
# A self-hosted git server, whose paths are case-sensitive (it is not among IGNORE_CASE).
SELF = Scope(repositories=("git.example/acme/app-x",))
SELF_GLOB = Scope(repositories=("git.example/acme/*",))
SELF_DEEP = Scope(repositories=("git.example/acme/*/*",))
SELF_ANY = Scope(repositories=("git.example/*/*",))
SELF_MIDDLE = Scope(repositories=("git.example/acme/*/app",))
# The hosts whose paths ignore case: the configured GitHub's (bot/app.py passes it).
IGNORE_CASE = frozenset({"github.com"})

APP = "https://github.com/acme/app.git"
MATRIX = [
    # scope, recipient, why not (None: it gets the secret)
    (EXACT, Recipient(APP, "main"), None),
    (EXACT, Recipient("https://GitHub.com/Acme/App", "main"), None),
    (EXACT, Recipient("ssh://git@github.com/acme/app.git", "main"), None),
    (EXACT, Recipient("https://github.com:443/acme/app.git", "main"), None),
    (EXACT, Recipient("https://evil.example/acme/app.git", "main"),
     "not defined for this repository (evil.example/acme/app)"),
    (EXACT, Recipient("https://github.com.evil.example/acme/app.git", "main"),
     "not defined for this repository (github.com.evil.example/acme/app)"),
    (EXACT, Recipient("https://github.com:8443/acme/app.git", "main"),
     "not defined for this repository (github.com:8443/acme/app)"),
    (EXACT, Recipient("https://github.com/acme/app-fork.git", "main"),
     "not defined for this repository (github.com/acme/app-fork)"),
    (EXACT, Recipient("https://github.com/other/acme/app.git", "main"),
     "not defined for this repository (github.com/other/acme/app)"),
    (GLOB, Recipient("https://github.com/acme/other.git", "main"), None),
    (GLOB, Recipient("https://github.com/acme/group/deep.git", "main"),
     "not defined for this repository (github.com/acme/group/deep)"),
    (GLOB, Recipient("https://github.com/acmex/app.git", "main"),
     "not defined for this repository (github.com/acmex/app)"),
    (GLOB, Recipient("https://gitlab.com/acme/app.git", "main"),
     "not defined for this repository (gitlab.com/acme/app)"),
    (MAIN_ONLY, Recipient(APP, "main"), None),
    (MAIN_ONLY, Recipient(APP, "release/1.x"), None),
    (MAIN_ONLY, Recipient(APP, "feature"), "not defined for branch feature"),
    (EXACT, Recipient(APP, "feature", pull_request=7), "not for pull requests"),
    (WITH_PRS, Recipient(APP, "feature", pull_request=7), None),
    (WITH_PRS, Recipient("https://github.com/mallory/app.git", "feature", pull_request=7,
                         fork=True), "never for pull requests from forks"),
    (Scope(repositories=("github.com/*/*",), pull_requests=True),
     Recipient("https://github.com/acme/app.git", "x", pull_request=8, fork=True),
     "never for pull requests from forks"),
    # Case: hosts never count it; paths do, except on a host known to ignore it (GitHub's).
    (SELF, Recipient("https://git.example/acme/app-x.git", "main"), None),
    (SELF, Recipient("https://GIT.Example/acme/app-x", "main"), None),
    (SELF, Recipient("https://git.example/ACME/app-x.git", "main"),
     "not defined for this repository (git.example/ACME/app-x)"),
    (SELF, Recipient("https://git.example/acme/App-X.git", "main"),
     "not defined for this repository (git.example/acme/App-X)"),
    (SELF_GLOB, Recipient("https://git.example/ACME/app-x.git", "main"),
     "not defined for this repository (git.example/ACME/app-x)"),
    # .git is stripped in the case the host reads it in: app-x.GIT is another repository here.
    (SELF, Recipient("https://git.example/acme/app-x.GIT", "main"),
     "not defined for this repository (git.example/acme/app-x.GIT)"),
    (EXACT, Recipient("https://github.com/ACME/APP.GIT", "main"), None),
    (EXACT, Recipient("https://github.com/acme/app.Git", "main"), None),
    (Scope(repositories=("GitHub.com/Acme/App",)), Recipient(APP, "main"), None),
    # Paths a front may decode or normalise into another repository's: never matched.
    (SELF_GLOB, Recipient("http://git.example/acme/..%2Fmallory%2Ftool-x.git", "main"),
     "not defined for this repository (its path has an encoded character: %)"),
    (SELF, Recipient("https://git.example/acme/app%2Dx.git", "main"),
     "not defined for this repository (its path has an encoded character: %)"),
    (SELF_DEEP, Recipient("https://git.example/acme/../tool.git", "main"),
     "not defined for this repository (its path has a '..' segment)"),
    (SELF_ANY, Recipient("https://git.example/./tool.git", "main"),
     "not defined for this repository (its path has a '.' segment)"),
    (SELF_MIDDLE, Recipient("https://git.example/acme//app.git", "main"),
     "not defined for this repository (its path has an empty segment)"),
    (SELF, Recipient("https://git.example/acme/app-x/", "main"),
     "not defined for this repository (its path has an empty segment)"),
    (SELF_GLOB, Recipient("https://git.example/acme/..\\mallory\\tool-x.git", "main"),
     "not defined for this repository (the URL has a backslash)"),
    (EXACT, Recipient("https://evil.example\\@github.com/acme/app.git", "main"),
     "not defined for this repository (the URL has a backslash)"),
    (SELF_GLOB, Recipient("https://git.example/acme/..\uff0fmallory\uff0ftool-x.git", "main"),
     "not defined for this repository (its path has a non-ASCII character)"),
    (SELF_GLOB, Recipient("https://git.example/acme/..;/mallory/tool-x.git", "main"),
     "not defined for this repository (its path has ';')"),
    (SELF_GLOB, Recipient("https://git.example/acme/tool x.git", "main"),
     "not defined for this repository (its path has ' ')"),
    (SELF, Recipient("https://git.example/acme/app-x.git?../../mallory/tool", "main"),
     "not defined for this repository (the URL has a query or a fragment)"),
    (SELF, Recipient("https://git.example/acme/app-x.git#x", "main"),
     "not defined for this repository (the URL has a query or a fragment)"),
    (SELF, Recipient("https://git.example:99999/acme/app-x.git", "main"),
     "not defined for this repository (its port is not one)"),
    (SELF, Recipient("https://git%2eexample/acme/app-x.git", "main"),
     "not defined for this repository (its host is not a plain host name)"),
    (EXACT, Recipient("git@github.com:acme/app.git", "main"),
     "not defined for this repository (the URL names no host)"),
    (SELF, Recipient("https://git.example/.git", "main"),
     "not defined for this repository (its path has an empty segment)"),
    # Forks are refused whatever their URL.
    (SELF_GLOB, Recipient("https://git.example/acme/%2e%2e", "x", pull_request=9, fork=True),
     "never for pull requests from forks"),
]


@pytest.mark.parametrize("scope, recipient, why", MATRIX)
def test_scope_matrix(scope, recipient, why):
    assert refusal(scope, recipient, IGNORE_CASE) == why


def test_without_hosts_that_ignore_case_every_path_is_case_sensitive():
    """No host ignores case unless the caller says so: GitHub's paths then count it too."""
    assert refusal(EXACT, Recipient("https://github.com/Acme/App", "main")) == (
        "not defined for this repository (github.com/Acme/App)")
    assert refusal(EXACT, Recipient(APP, "main")) is None


def test_forks_are_barred_before_any_scope():
    """A fork's answer depends on nothing but its being one (callers give it before lookups)."""
    assert barred(Recipient(APP, "main", pull_request=3, fork=True)) == (
        "never for pull requests from forks")
    assert barred(Recipient(APP, "main", pull_request=3)) is None


def test_repositories_are_named_by_host_and_path():
    assert repository("https://github.com/acme/app.git") == "github.com/acme/app"
    assert repository("http://127.0.0.1:8080/acme/app.git") == "127.0.0.1:8080/acme/app"
    assert repository("git://github.com:9418/acme/app") == "github.com/acme/app"
    assert repository("https://git.example/Acme/App.git") == "git.example/Acme/App"
    assert repository("https://git.example/acme/app.GIT") == "git.example/acme/app.GIT"
    assert repository("https://GitHub.com/Acme/App.GIT", {"github.com"}) == "github.com/Acme/App"
    with pytest.raises(ValueError, match="encoded character"):
        repository("https://github.com/acme/%61pp.git")


def test_hosts_are_named_as_scopes_name_them():
    """The hosts that ignore case are given as URLs (config.github.repository_host)."""
    assert host("https://GitHub.com") == "github.com"
    assert host("https://ghe.example:8443/") == "ghe.example:8443"
    assert host("https://ghe.example:443") == "ghe.example"


@pytest.mark.parametrize("pattern", ["acme/app", "*/acme/app", "github.*/acme/app",
                                     "github.com", "https://github.com/acme/app", "", "a b/c"])
def test_patterns_name_a_host_without_wildcards(pattern):
    """Owner/name alone, or a wildcard in the host, could reach another host's repository."""
    with pytest.raises(ValueError, match="host and path"):
        check_pattern(pattern)


@pytest.mark.parametrize("pattern, why", [
    ("git.example/acme/../*", "its path has a '..' segment"),
    ("git.example/./app", "its path has a '.' segment"),
    ("git.example/acme//app", "its path has an empty segment"),
    ("git.example/acme/", "its path has an empty segment"),
    ("git.example/acme/%2e%2e", "its path has an encoded character: %"),
    ("git.example/acme\\app", "its path has a backslash"),
    ("git.example/acme/\u00e4pp", "its path has a non-ASCII character"),
    ("git.example/acme/a b", "its path has ' '"),
])
def test_patterns_name_canonical_paths(pattern, why):
    """A pattern no canonical repository name could match is refused, saying why."""
    with pytest.raises(ValueError, match=re.escape(why)):
        check_pattern(pattern)


def test_patterns_keep_the_case_of_their_path():
    """Only the host is lower-cased: on most git servers the path's case names another
    repository."""
    assert check_pattern(" GitHub.com/Acme/* ") == "github.com/Acme/*"
    assert check_pattern("git.example:8443/acme/app-?") == "git.example:8443/acme/app-?"
    assert check_pattern("github.com/acme/<b>web</b>") == "github.com/acme/<b>web</b>"
