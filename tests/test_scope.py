"""The scope rule for secrets, as a matrix: repository by host and path, branch, pull request,
fork."""
import pytest

from runner.scope import Recipient, Scope, check_pattern, refusal, repository

EXACT = Scope(repositories=("github.com/acme/app",))
GLOB = Scope(repositories=("github.com/acme/*",))
MAIN_ONLY = Scope(repositories=("github.com/acme/app",), branches=("main", "release/*"))
WITH_PRS = Scope(repositories=("github.com/acme/app",), pull_requests=True)

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
]


@pytest.mark.parametrize("scope, recipient, why", MATRIX)
def test_scope_matrix(scope, recipient, why):
    assert refusal(scope, recipient) == why


def test_repositories_are_named_by_host_and_path():
    assert repository("https://github.com/acme/app.git") == "github.com/acme/app"
    assert repository("http://127.0.0.1:8080/acme/app.git") == "127.0.0.1:8080/acme/app"
    assert repository("git://github.com:9418/acme/app") == "github.com/acme/app"


@pytest.mark.parametrize("pattern", ["acme/app", "*/acme/app", "github.*/acme/app",
                                     "github.com", "https://github.com/acme/app", "", "a b/c"])
def test_patterns_name_a_host_without_wildcards(pattern):
    """Owner/name alone, or a wildcard in the host, could reach another host's repository."""
    with pytest.raises(ValueError, match="host and path"):
        check_pattern(pattern)
    assert check_pattern("GitHub.com/Acme/*") == "github.com/acme/*"
