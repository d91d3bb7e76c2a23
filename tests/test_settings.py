"""`.speed.yml` parsed and checked on strings: each key, and each kind of bad input."""
import json
import random

import pytest
import yaml

from runner import settings as settings_module
from runner.settings import (MAX_TEXT, Build, Ceiling, Resources, Settings, SettingsError,
                             from_json, parse)

CEILING = Ceiling(timeout=600, memory="1g", cpus=1.0)

FULL = """\
env:
  GREETING: hello
  COUNT: 3
  RATIO: 0.5
  DEBUG: true
secrets:
  - DEPLOY_KEY
  - API_TOKEN
timeout: 120
build:
  dockerfile: docker/Dockerfile.prod
  context: app
  args:
    VERSION: 1.2.3
    RELEASE: 7
  target: runtime
resources:
  memory: 256m
  cpus: 0.5
"""


def test_every_key_is_read():
    """Each key reaches the settings, numbers and booleans spelt as the environment sees them."""
    assert parse(FULL, CEILING) == Settings(
        env=(("GREETING", "hello"), ("COUNT", "3"), ("RATIO", "0.5"), ("DEBUG", "true")),
        secrets=("DEPLOY_KEY", "API_TOKEN"), timeout=120.0,
        build=Build(dockerfile="docker/Dockerfile.prod", context="app",
                    args=(("VERSION", "1.2.3"), ("RELEASE", "7")), target="runtime"),
        resources=Resources(memory="256m", cpus=0.5))


def test_env_and_build_args_arrive_as_written_not_as_yaml_guesses_their_type(loader):
    """Found by a hostile user: YAML 1.1 made PYTHON_VERSION: 3.10 "3.1", 010 "8", yes "true"
    and 1_000 "1000". A plain value now arrives as written; a quoted one or a null as before."""
    settings = parse("env: {A: 3.10, B: yes, C: 010, D: 0x10, E: 1_000, F: 1e3, G: True, "
                     "H: 2026-11-29, I: '007', J: 3, K: .inf}\nbuild: {args: {V: 1.10}}\n",
                     CEILING)
    assert settings.env == (("A", "3.10"), ("B", "yes"), ("C", "010"), ("D", "0x10"),
                            ("E", "1_000"), ("F", "1e3"), ("G", "True"), ("H", "2026-11-29"),
                            ("I", "007"), ("J", "3"), ("K", ".inf"))
    assert settings.build.args == (("V", "1.10"),)
    with pytest.raises(SettingsError, match="expected a string, number or boolean"):
        parse("env: {A: ~}\n", CEILING)


@pytest.mark.parametrize("text", [None, b"", "", "# only a comment\n", "---\n"])
def test_no_file_or_an_empty_one_is_todays_behaviour(text):
    assert parse(text, CEILING) == Settings()


def test_stored_settings_read_back_the_same_and_are_checked_again():
    """What is stored with a deployment (to_json) reads back equal; against a lower ceiling it
    fails as the file would."""
    settings = parse(FULL, CEILING)
    assert from_json(settings.to_json(), CEILING) == settings
    assert from_json(Settings().to_json(), CEILING) == Settings()
    assert from_json(parse("secrets: [A]", CEILING).to_json(), CEILING).secrets == ("A",)
    with pytest.raises(SettingsError, match="timeout: 120 s is over the server's limit of 60 s"):
        from_json(settings.to_json(), Ceiling(timeout=60, memory="1g", cpus=1.0))


BAD = [
    ("env: [1", "file (line 1): not valid YAML"),
    ("env:\n  A: 1\n nope", "file (line 3): not valid YAML"),
    (b"\xff\xfe", "file: not valid UTF-8"),
    (b"#" * (64 * 1024 + 1), "file: larger than 65536 bytes"),
    ("- a\n- b\n", "file (line 1): expected a mapping"),
    ("timeout: 5\nbuidl: {}\n", "buidl (line 2): unknown key"),
    ("build:\n  dockerfil: x\n", "build.dockerfil (line 2): unknown key"),
    ("resources: {gpus: 1}\n", "resources.gpus (line 1): unknown key"),
    ("env: [A, B]\n", "env (line 1): expected a mapping"),
    ("env:\n  SPEED_TOKEN: x\n", "env.SPEED_TOKEN (line 2): names starting SPEED_ are SPEED's own"),
    ("env:\n  speed_x: x\n", "env.speed_x (line 2): names starting SPEED_"),
    ("env:\n  1A: x\n", "env.1A (line 2): not a valid name"),
    ("env:\n  A: null\n", "env.A (line 2): expected a string, number or boolean"),
    ("env:\n  A: [1]\n", "env.A (line 2): expected a string, number or boolean"),
    ("env:\n  A: 1\n  A: 2\n", "env.A (line 3): given twice"),
    ("env:\n  A: \"a\\0b\"\n", "env.A (line 2): must not contain NUL"),
    ("secrets: DEPLOY_KEY\n", "secrets (line 1): expected a list of secret names"),
    ("secrets: [A, A]\n", "secrets (line 1): A is listed twice"),
    ("secrets: [SPEED_TOKEN]\n", "secrets (line 1): SPEED_TOKEN: names starting SPEED_"),
    ("secrets: [{A: 1}]\n", "secrets (line 1): expected secret names"),
    ("env: {A: x}\nsecrets: [A]\n", "secrets (line 2): A is also set in env"),
    ("timeout: 601\n", "timeout (line 1): 601 s is over the server's limit of 600 s"),
    ("timeout: 0\n", "timeout (line 1): must be greater than 0"),
    ("timeout: soon\n", "timeout (line 1): expected a number"),
    ("timeout: true\n", "timeout (line 1): expected a number"),
    ("timeout: .nan\n", "timeout (line 1): expected a number"),
    ("resources:\n  memory: 2g\n", "resources.memory (line 2): 2g is over the server's limit of 1g"),
    ("resources:\n  memory: lots\n", "resources.memory (line 2): expected a size"),
    ("resources:\n  cpus: 4\n", "resources.cpus (line 2): 4 is over the server's limit of 1"),
    ("build:\n  dockerfile: ../Dockerfile\n", "build.dockerfile (line 2): leads out of the repository"),
    ("build:\n  context: a/../../b\n", "build.context (line 2): leads out of the repository"),
    ("build:\n  dockerfile: /etc/passwd\n", "build.dockerfile (line 2): an absolute path"),
    ("build:\n  context: 3\n", "build.context (line 2): expected a path in the repository"),
    ("build:\n  args: {A: [1]}\n", "build.args.A (line 2): expected a string, number or boolean"),
    ("build:\n  args: {-A: 1}\n", "build.args.-A (line 2): not a valid name"),
    ("build:\n  target: \"a b\"\n", "build.target (line 2): expected the name of a build stage"),
    ("{[1]: 2}\n", "file (line 1): keys must be text"),
    # Below Docker's minimums: a CPU quota that rounds to 0 is no limit at all.
    ("resources:\n  cpus: 1.0e-10\n", "resources.cpus (line 2): 1e-10 is under Docker's minimum "
                                       "of 0.01"),
    ("resources:\n  cpus: 0.009\n", "resources.cpus (line 2): 0.009 is under Docker's minimum"),
    ("resources:\n  memory: 1\n", "resources.memory (line 2): 1 is under Docker's minimum of 6m"),
    ("resources:\n  memory: 6291455b\n", "resources.memory (line 2): 6291455b is under Docker's "
                                         "minimum of 6m"),
    # Once crashes ("internal error"): numbers no float holds, characters YAML refuses, tags whose
    # constructors raise what they like.
    ("timeout: 1" + "0" * 400, "timeout (line 1): about 1e+400 s is over the server's limit of "
                               "600 s"),
    ("resources:\n  cpus: 1" + "0" * 400, "resources.cpus (line 2): about 1e+400 is over the "
                                           "server's limit of 1"),
    ("resources:\n  memory: 0x1" + "0" * 400, "resources.memory (line 2): about 1e+482 is over the "
                                               "server's limit of 1g"),
    ("env: {A: !!int '0x" + "f" * 4000 + "'}",
     "env.A (line 1): a number too long to spell out; quote it"),
    ("env: {A: 1}\0\n", "file (line 1): not valid YAML: character U+0000 is not allowed"),
    (b"env:\n  A: \x1b[2J\n", "file (line 2): not valid YAML: character U+001B is not allowed"),
    ("env:\n  A: 1\n  <<: {B: 2}\n", "file (line 3): merge keys (<<) are not supported"),
    ("base: &b {A: 1}\nenv:\n  <<: *b\n", "file (line 3): merge keys (<<) are not supported"),
    ("env: {A: !!bool maybe}\n", "file: a value SPEED cannot read (KeyError)"),
    ("env: {A: !!int ''}\n", "file: a value SPEED cannot read (IndexError)"),
    ("env: {A: !!timestamp soon}\n", "file: a value SPEED cannot read (AttributeError)"),
]


@pytest.fixture(params=["libyaml", "python"])
def loader(request, monkeypatch):
    """Each test with libyaml's loader and with the pure-Python one SPEED falls back to."""
    if request.param == "libyaml":
        assert settings_module.LOADER is yaml.CSafeLoader  # PyYAML here is built with libyaml
    else:
        monkeypatch.setattr(settings_module, "LOADER", yaml.SafeLoader)
    return request.param


@pytest.mark.parametrize("text, message", BAD)
def test_bad_input_names_the_key_and_line(text, message, loader):
    """Bad input: a SettingsError (never another exception) naming the key and, from YAML, the
    line — the reason the deployment fails with — with either loader."""
    with pytest.raises(SettingsError) as raised:
        parse(text, CEILING)
    assert str(raised.value).startswith(f".speed.yml: {message}"), str(raised.value)


def test_docker_minimums_themselves_are_allowed():
    assert parse("resources: {memory: 6m, cpus: 0.01}\n", CEILING).resources == Resources(
        memory="6m", cpus=0.01)


def test_libyaml_reads_the_file_when_pyyaml_has_it():
    """PyYAML's own reader takes ~2 s on a 64 KiB file of numbers; libyaml's some 7 times less."""
    assert settings_module.LOADER is (yaml.CSafeLoader if yaml.__with_libyaml__ else
                                      yaml.SafeLoader)


def test_nesting_as_deep_as_the_file_allows_is_refused(loader):
    """Deeper than either loader goes (a 64 KiB file may nest 65,535 levels): libyaml stops at
    1000, PyYAML's composer runs out of recursion; either way a SettingsError naming the file."""
    for text in ("[" * 1_100, "env: {A: " + "[" * 1_100, "- " * 5_000 + "x"):
        with pytest.raises(SettingsError, match=r"^\.speed\.yml: file"):
            parse(text, CEILING)


def test_no_input_raises_anything_but_a_settings_error(loader):
    """Fuzz: 1,500 files made by cutting, repeating and splicing bytes and YAML syntax into a
    valid one; stored settings that are not JSON, or JSON of any shape. Asserts: each either
    reads or raises SettingsError."""
    pieces = [b"\0", b"\x1b", b"\xff", b"&a ", b"*a", b"<<: ", b"!!binary ", b"!!float ", b"!!int ",
              b"!!bool ", b"!!timestamp ", b"!!set ", b"!!omap ", b"!!python/name:os.system ",
              b"? ", b"- ", b"[", b"{", b"}", b"]", b",", b": ", b"\n", b"  ", b"'", b'"', b"\\x",
              b"0x", b"0b", b"1e999", b".inf", b"~", b"%YAML 1.1\n", b"--- ", b"\t",
              b"\xe2\x80\xae"]
    rng = random.Random(13)
    full = FULL.encode()
    for _ in range(1_500):
        data = bytearray(full)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data) + 1)
            data[at:at + rng.randint(0, 8)] = rng.choice(pieces) * rng.randint(1, 3)
        try:
            parse(bytes(data), CEILING)
        except SettingsError:
            pass
    for stored in ("", "not json", "[", "[" * 100_000, "null", "1e999", "[1]", '"env"',
                   '{"env": 1}', '{"env": {"A": null}}', '{"timeout": 1e999}', '{"build": []}',
                   '{"resources": {"cpus": 1' + "0" * 400 + "}}", '{"env": {"A": {"B": 1}}}'):
        try:
            from_json(stored, CEILING)
        except SettingsError:
            pass


def test_a_key_is_quoted_at_most_100_characters_and_yaml_problems_200():
    """A key of any length (the file's author chose it) is cut in the message; so is the text
    YAML's own message quotes (an unknown tag)."""
    key = "x-" * 3_000
    with pytest.raises(SettingsError) as raised:
        parse(f"env:\n  ? {key}\n  : 1\n", CEILING)  # an explicit key: a plain one stops at 1024
    assert str(raised.value) == (".speed.yml: " + f"env.{key}"[:99] + "…"
                                 " (line 3): not a valid name (letters, digits and _, not starting"
                                 " with a digit)")
    with pytest.raises(SettingsError) as raised:
        parse("env: {A: !" + "t" * 5_000 + " x}\n", CEILING)
    assert str(raised.value).startswith(".speed.yml: file (line 1): not valid YAML: could not "
                                        "determine a constructor for the tag '!ttt")
    assert len(str(raised.value)) < 300


def test_aliases_cannot_blow_up():
    """A billion-laughs file (9^9 values through aliases) is refused at once, never expanded;
    an alias to a list where a value is expected is refused."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    with pytest.raises(SettingsError, match="file: more than 10000 values"):
        parse(bomb, CEILING)
    with pytest.raises(SettingsError, match="expected a string, number or boolean"):
        parse("build:\n  args: {A: &x [1, 2]}\nenv: {B: *x}\n", CEILING)


ANCHORED = "x" * 32_000


def alias_bomb(aliases: int = 2_884) -> str:
    """The tester's file: one 32,000-character value under build.args, aliased all over env."""
    return (f"build:\n  args:\n    A: &a {ANCHORED}\nenv:\n"
            + "".join(f"  E{i}: *a\n" for i in range(aliases)))


def test_aliases_cannot_make_the_values_huge(loader):
    """Leak: a 64 KiB file whose env names one 32,000-character value through 2,884 aliases
    was 92 MB of settings (stored in the row, sent by /deployments). Asserts: refused, naming
    the file, fast, and under 64 KiB of file."""
    bomb = alias_bomb()
    assert len(bomb.encode()) <= 64 * 1024
    with pytest.raises(SettingsError) as raised:
        parse(bomb.encode(), CEILING)
    assert str(raised.value) == (".speed.yml: file: its values come to more than 65536 bytes "
                                 "(YAML aliases count each time they are used)")
    with pytest.raises(SettingsError, match="more than 65536 bytes"):
        parse(alias_bomb(2), CEILING)  # three copies: 96,000 bytes


def test_the_text_limit_counts_all_the_settings_carry_and_reads_back():
    """The edge: names, values, paths (the defaults too), target, memory and secret names, in
    UTF-8 bytes, come to exactly 65536: the file is taken, and its stored form reads back equal
    (redeploying it must not fail); one byte more is refused."""
    fixed = "build:\n  args: {A: &a " + ANCHORED + "}\n  target: t\nenv:\n  E: *a\n"
    used = len("Dockerfile" "." "A" "t" "E" "S" "6m") + 2 * len(ANCHORED) + len("F")
    fill = "é" * ((MAX_TEXT - used) // 2) + "y" * ((MAX_TEXT - used) % 2)
    text = fixed + f"  F: {fill}\nsecrets: [S]\nresources: {{memory: 6m}}\n"
    settings = parse(text, CEILING)
    assert from_json(settings.to_json(), CEILING) == settings
    with pytest.raises(SettingsError, match="more than 65536 bytes"):
        parse(text.replace("[S]", "[S1]"), CEILING)
    with pytest.raises(SettingsError, match="more than 65536 bytes"):
        parse(text.replace("target: t", "target: tt"), CEILING)


def test_stored_settings_over_the_limit_are_refused():
    """A row stored before the limit (92 MB of env) no longer reads: as the file would not."""
    stored = json.dumps({"env": {f"E{i}": ANCHORED for i in range(3)}})
    with pytest.raises(SettingsError, match="its values come to more than 65536 bytes"):
        from_json(stored, CEILING)


def test_a_service_block_is_read_with_its_defaults():
    """service: makes a deployment a service; only port is required, the rest has defaults;
    stored settings read it back."""
    from runner.settings import Health, Service
    short = parse("service:\n  port: 8000\n", CEILING)
    assert short.service == Service(port=8000)
    assert short.service.health == Health(path="/", interval=0.2, timeout=2.0, deadline=60.0,
                                          passes=2)
    full = parse("service:\n  port: 80\n  keep: 2\n  drain: 0\n  health:\n    path: /healthz"
                 "?full=1\n    interval: 0.2\n    timeout: 1\n    deadline: 30\n    passes: 1\n",
                 CEILING)
    assert full.service == Service(port=80, keep=2, drain=0.0, health=Health(
        path="/healthz?full=1", interval=0.2, timeout=1.0, deadline=30.0, passes=1))
    assert from_json(full.to_json(), CEILING) == full
    assert parse("env: {A: b}\n", CEILING).service is None


@pytest.mark.parametrize("text, message", [
    ("service: {}\n", "service.port (line 1): required"),
    ("service: {port: 0}\n", "service.port (line 1): expected a whole number from 1 to 65535"),
    ("service: {port: '80'}\n", "service.port (line 1): expected a whole number"),
    ("service: {port: 80, keep: 21}\n", "service.keep (line 1): expected a whole number from 0"),
    ("service: {port: 80, drain: 601}\n", "service.drain (line 1): expected seconds from 0 to 600"),
    ("service: {port: 80, health: {path: healthz}}\n", "service.health.path (line 1): expected a "
                                                       "path such as /healthz"),
    ("service: {port: 80, health: {path: '/a b'}}\n", "service.health.path (line 1)"),
    ("service: {port: 80, health: {interval: 0}}\n", "service.health.interval (line 1): expected "
                                                     "seconds from 0.1 to 60"),
    ("service: {port: 80, health: {deadline: 601}}\n", "service.health.deadline (line 1): 601 s is "
                                                       "over the server's limit of 600 s"),
    ("service: {port: 80, health: {passes: 0}}\n", "service.health.passes (line 1): expected a "
                                                   "whole number from 1 to 10"),
    ("service: {port: 80, replicas: 2}\n", "service.replicas (line 1): unknown key"),
    ("service: [80]\n", "service (line 1): expected a mapping"),
], ids=["no port", "port 0", "port text", "keep", "drain", "path", "path space", "interval",
        "deadline", "passes", "unknown", "list"])
def test_a_bad_service_block_names_the_key(text, message):
    with pytest.raises(SettingsError) as raised:
        parse(text, CEILING)
    assert str(raised.value).startswith(f".speed.yml: {message}"), str(raised.value)
