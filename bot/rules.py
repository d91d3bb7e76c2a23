"""Which repositories and branches SPEED deploys: the `repos:` rules of app.yaml."""
import fnmatch
import urllib.parse

from bot.config import Config, RepoRule


def rule_for(config: Config, full_name: str) -> RepoRule | None:
    """The first rule whose glob matches owner/name (case-insensitively, as GitHub does)."""
    for rule in config.repos:
        if fnmatch.fnmatchcase(full_name.lower(), rule.match.lower()):
            return rule
    return None


def deploys_branch(rule: RepoRule, branch: str) -> bool:
    """Whether pushes to branch deploy under this rule."""
    return any(fnmatch.fnmatchcase(branch, pattern) for pattern in rule.branches)


def full_name_of_url(url: str) -> str:
    """The owner/name a repository URL ends with, lower-cased (GitHub names ignore case)."""
    path = urllib.parse.urlsplit(url).path.strip("/").removesuffix(".git")
    return "/".join(path.split("/")[-2:]).lower()


def full_name_of(config: Config, url: str) -> str | None:
    """owner/name when url is a repository on the configured GitHub that a rule covers."""
    if not url.startswith(config.github.repository_host + "/"):
        return None
    full_name = full_name_of_url(url)
    return full_name if full_name.count("/") == 1 and rule_for(config, full_name) else None


def environment_of(config: Config, full_name: str | None) -> str | None:
    """The environment a rule names for a configured repository (SPEED_ENVIRONMENT), if any."""
    rule = rule_for(config, full_name) if full_name else None
    return rule.environment or None if rule else None
