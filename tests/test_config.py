"""bot/config.py: defaults, ${VAR} substitution, and every mistake refused naming its key."""
import logging
import os
import pathlib

import pytest

import main
from bot.config import (
    AuthConfig, Config, ConfigError, DatabaseConfig, ProxyConfig, RunnerConfig, load, public_url,
)

REPO = pathlib.Path(__file__).resolve().parent.parent
TOKEN = "a-token-of-16-chars-or-more"


@pytest.fixture
def env(monkeypatch):
    """No SPEED_ or GITHUB_ variables from the caller's environment; set more with env.setenv."""
    for name in list(os.environ):
        if name.startswith(("SPEED_", "GITHUB_")):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def write(tmp_path):
    def write(text: str | bytes) -> str:
        path = tmp_path / "app.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    return write


def test_defaults(env):
    config = load(None)
    assert config == Config()
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.database.url == "sqlite:///deployments.db"
    assert config.runner.allowed_urls == ("https://*", "ssh://*")
    runner = config.runner
    assert (runner.max_concurrent, runner.timeout, runner.memory) == (4, 1800, "1g")
    assert config.auth.api_tokens == ()
    assert public_url(config) == "http://127.0.0.1:8080"


def test_the_shipped_app_yaml_loads_as_the_defaults(env):
    config = load(str(REPO / "app.yaml"))
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert public_url(config) == "http://127.0.0.1:8080"
    assert (config.database, config.runner, config.auth) == (DatabaseConfig(), RunnerConfig(),
                                                             AuthConfig())


def refusal(path: str | None = None, **overrides) -> str:
    """The message of the ConfigError that loading raises."""
    with pytest.raises(ConfigError) as caught:
        load(path, **overrides)
    return str(caught.value)


@pytest.mark.parametrize("value, expected", [
    ("${SPEED_T_PORT}", 9090),
    ("${SPEED_T_PORT:-7070}", 9090),
    ("${SPEED_T_UNSET:-7070}", 7070),
    ("${SPEED_T_EMPTY:-7070}", 7070),  # as in the shell: an empty variable takes the default
])
def test_environment_substitution(env, value, expected):
    env.setenv("SPEED_T_PORT", "9090")
    env.setenv("SPEED_T_EMPTY", "")
    assert load(None, server__port=value).server.port == expected


def test_substitution_inside_text_and_lists(env):
    env.setenv("SPEED_T_HOST", "speed.example")
    config = load(None, server__public_url="https://${SPEED_T_HOST}:${SPEED_T_UNSET:-443}/",
                  runner__allowed_urls=["https://${SPEED_T_HOST}/*", "${SPEED_T_UNSET:-ssh://*}"])
    assert config.server.public_url == "https://speed.example:443/"
    assert public_url(config) == "https://speed.example:443"
    assert config.runner.allowed_urls == ("https://speed.example/*", "ssh://*")


def test_a_set_but_empty_variable_without_default_is_empty(env):
    env.setenv("SPEED_T_EMPTY", "")
    assert load(None, server__public_url="${SPEED_T_EMPTY}").server.public_url == ""


@pytest.mark.parametrize("overrides, key", [
    ({"server__public_url": "${SPEED_T_UNSET}"}, "server.public_url"),
    ({"server__port": "${SPEED_T_UNSET}"}, "server.port"),
    ({"runner__allowed_urls": ["https://*", "${SPEED_T_UNSET}"]}, "runner.allowed_urls[1]"),
])
def test_an_unset_variable_without_default_names_the_key(env, overrides, key):
    message = refusal(None, **overrides)
    assert message.startswith(f"{key}: ") and "SPEED_T_UNSET" in message


def test_api_tokens_from_a_comma_separated_variable(env, write):
    env.setenv("SPEED_T_TOKENS", f" {TOKEN}-1, {TOKEN}-2 ,")
    path = write("server:\n  host: 0.0.0.0\nauth:\n  api_tokens: ${SPEED_T_TOKENS}\n")
    config = load(path)
    assert config.auth.api_tokens == (f"{TOKEN}-1", f"{TOKEN}-2")
    assert config.server.host == "0.0.0.0"
    env.setenv("SPEED_T_TOKENS", "")
    assert load(None, auth__api_tokens="${SPEED_T_TOKENS}").auth.api_tokens == ()


def test_a_yaml_file(env, write):
    env.setenv("SPEED_T_PORT", "9191")
    path = write("""
server:
  host: ::1
  port: ${SPEED_T_PORT:-8080}
database:
  url: sqlite:////tmp/speed-test.db
runner:
  max_concurrent: 2
  timeout: 90
  cpus: "0.5"
  allowed_urls:
    - https://github.com/acme/*
  keep_images: 0
auth:
  api_tokens: [a-token-of-16-chars-or-more]
repos:
  - match: acme/*
    branches: [main, release/*]
""")
    config = load(path)
    assert (config.server.host, config.server.port) == ("::1", 9191)
    assert config.database.url == "sqlite:////tmp/speed-test.db"
    runner = config.runner
    assert (runner.max_concurrent, runner.timeout, runner.cpus) == (2, 90.0, 0.5)
    assert runner.keep_images == 0
    assert isinstance(runner.timeout, float) and isinstance(config.server.port, int)
    assert runner.allowed_urls == ("https://github.com/acme/*",)
    assert runner.memory == "1g"  # what the file leaves out keeps its default
    assert config.auth.api_tokens == (TOKEN,)
    assert config.repos[0].match == "acme/*" and config.repos[0].branches == ("main", "release/*")


@pytest.mark.parametrize("text, key", [
    ("bogus: 1\n", "bogus"),
    ("server:\n  bogus: 1\n", "server.bogus"),
    ("runner:\n  alowed_urls: []\n", "runner.alowed_urls"),
    ("auth:\n  tokens: []\n", "auth.tokens"),
    ("repos:\n  - match: a/b\n    bogus: 1\n", "repos[0].bogus"),
])
def test_unknown_keys_are_named(env, write, text, key):
    assert refusal(write(text)).startswith(f"{key}: unknown key")


@pytest.mark.parametrize("text, key", [
    ("server: 5\n", "server"),
    ("server:\n  port: abc\n", "server.port"),
    ("server:\n  port: true\n", "server.port"),
    ("server:\n  port: 80.5\n", "server.port"),
    ("server:\n  port: [80]\n", "server.port"),
    ("server:\n  port: .inf\n", "server.port"),
    ("server:\n  port: 100000000000000000000000000\n", "server.port"),
    ("server:\n  port: 70000\n", "server.port"),
    ("server:\n  host: [a]\n", "server.host"),
    ("server:\n  host: true\n", "server.host"),
    ("runner:\n  cpus: .nan\n", "runner.cpus"),
    ("runner:\n  timeout: 1e400\n", "runner.timeout"),
    ("runner:\n  timeout: {}\n", "runner.timeout"),
    ("runner:\n  max_concurrent: 0\n", "runner.max_concurrent"),
    ("runner:\n  keep_images: -1\n", "runner.keep_images"),
    ("runner:\n  memory: lots\n", "runner.memory"),  # every deployment failed on it
    ("runner:\n  memory: 1k\n", "runner.memory"),
    ("runner:\n  memory: -1g\n", "runner.memory"),
    ("runner:\n  backend: podman\n", "runner.backend"),
    ("runner:\n  backend: swarm\n", "runner.registry"),
    ("runner:\n  backend: swarm\n  registry: https://r.example:5000\n", "runner.registry"),
    ("runner:\n  backend: swarm\n  registry: r.example:5000\n  swarm_host: /var/run/docker.sock\n",
     "runner.swarm_host"),
    ("runner:\n  allowed_urls: 5\n", "runner.allowed_urls"),
    ("runner:\n  allowed_urls: [[x]]\n", "runner.allowed_urls[0]"),
    ("runner:\n  allowed_urls: []\n", "runner.allowed_urls"),
    ("auth:\n  api_tokens: {a: b}\n", "auth.api_tokens"),
    ("auth:\n  api_tokens: [short]\n", "auth.api_tokens"),
    ("repos:\n  - branches: [main]\n", "repos[0].match"),
])
def test_wrong_types_and_values_are_named(env, write, text, key):
    assert refusal(write(text)).startswith(f"{key}: ")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.5", "speed.example"])
def test_a_public_host_needs_api_tokens(env, host):
    assert refusal(None, server__host=host).startswith("server.host: ")
    assert load(None, server__host=host, auth__api_tokens=[TOKEN]).server.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_tokens(env, host):
    assert load(None, server__host=host).server.host == host


@pytest.fixture
def restore_logging():
    """main() configures the root logger; put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("text, args, says", [
    (None, [], "No such file"),
    ("server: [\n", [], "not valid YAML"),
    ("server:\n\tport: 1\n", [], "not valid YAML"),
    ("- a\n- b\n", [], "mapping"),
    (b"server:\n  host: \xff\n", [], "UTF-8"),
    ("server:\n  bogus: 1\n", [], "server.bogus"),
    ("server:\n  port: .inf\n", [], "server.port"),
    ("", ["--host", "0.0.0.0"], "server.host"),
    ("", ["--port", "70000"], "server.port"),
])
def test_main_reports_a_bad_configuration_in_one_line(env, write, capsys, restore_logging,
                                                      tmp_path, text, args, says):
    path = write(text) if text is not None else str(tmp_path / "absent.yaml")
    assert main.main(["--config", path, *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("speed: configuration error: ") and err.count("\n") == 1, err
    assert says in err and "Traceback" not in err


def test_the_proxy_section_defaults_and_the_shipped_app_yaml(env):
    assert load(None).proxy == ProxyConfig("127.0.0.1:8000", "localhost", "http://localhost:2019")
    assert load(str(REPO / "app.yaml")).proxy == ProxyConfig()
    env.setenv("SPEED_PROXY_LISTEN", "0.0.0.0:80")
    env.setenv("SPEED_PROXY_DOMAIN", "apps.example.com")
    env.setenv("SPEED_PROXY_ADMIN", "http://127.0.0.1:2020")
    assert load(str(REPO / "app.yaml")).proxy == ProxyConfig(
        "0.0.0.0:80", "apps.example.com", "http://127.0.0.1:2020")


def test_the_proxy_section_from_a_file(env, write):
    path = write("proxy:\n  listen: '[::1]:8443'\n  domain: Apps.Example\n"
                 "  admin: http://caddy.internal:2019/\n")
    assert load(path).proxy == ProxyConfig("[::1]:8443", "Apps.Example",
                                           "http://caddy.internal:2019/")


@pytest.mark.parametrize("listen, host, url", [
    ("127.0.0.1:8000", "production.app.localhost", "http://production.app.localhost:8000/"),
    ("0.0.0.0:80", "production.app.example.com", "http://production.app.example.com/"),
    ("[::1]:8080", "a.localhost", "http://a.localhost:8080/"),
    ("127.0.0.1:8080", "b.localhost", "http://b.localhost:8080/"),
])
def test_proxy_url_names_the_port_unless_it_is_80(env, listen, host, url):
    assert load(None, proxy__listen=listen).proxy.url(host) == url


@pytest.mark.parametrize("text, key", [
    ("proxy: 5\n", "proxy"),
    ("proxy:\n  bogus: 1\n", "proxy.bogus"),
    ("proxy:\n  listen: [a]\n", "proxy.listen"),
    ("proxy:\n  listen: 8000\n", "proxy.listen"),
    ("proxy:\n  listen: 127.0.0.1\n", "proxy.listen"),
    ("proxy:\n  listen: '127.0.0.1:0'\n", "proxy.listen"),
    ("proxy:\n  listen: '127.0.0.1:70000'\n", "proxy.listen"),
    ("proxy:\n  listen: 'http://127.0.0.1:8000'\n", "proxy.listen"),
    ("proxy:\n  domain: ''\n", "proxy.domain"),
    ("proxy:\n  domain: '*.example.com'\n", "proxy.domain"),
    ("proxy:\n  domain: 'a..example'\n", "proxy.domain"),
    ("proxy:\n  domain: 'example.com/x'\n", "proxy.domain"),
    ("proxy:\n  domain: '-a.example'\n", "proxy.domain"),
    ("proxy:\n  domain: '10.0.0.1'\n", "proxy.domain"),
    ("proxy:\n  admin: localhost:2019\n", "proxy.admin"),
    ("proxy:\n  admin: https://localhost:2019\n", "proxy.admin"),
    ("proxy:\n  admin: http://\n", "proxy.admin"),
    ("proxy:\n  admin: 'http://localhost:99999'\n", "proxy.admin"),
    ("proxy:\n  admin: 'http://localhost:2019/config/'\n", "proxy.admin"),
])
def test_a_bad_proxy_section_is_named(env, write, text, key):
    assert refusal(write(text)).startswith(f"{key}: ")


def test_the_swarm_backend_section(env, write):
    config = load(write("runner:\n  backend: swarm\n  registry: 10.0.0.5:5000\n"
                        "  swarm_host: tcp://10.0.0.5:2376\n"))
    assert (config.runner.backend, config.runner.registry, config.runner.swarm_host) == (
        "swarm", "10.0.0.5:5000", "tcp://10.0.0.5:2376")
    assert load(None).runner.swarm_host == "unix:///var/run/docker.sock"


@pytest.mark.parametrize("url", ["ftp://speed.example", "http://", "speed.example:8080",
                                 "http://speed.example/?a=1"])
def test_a_callback_url_must_be_an_http_url_of_a_host(env, url):
    assert refusal(runner__callback_url=url).startswith("runner.callback_url:")
