"""`.speed.yml` parsed and checked on strings: each key, and each kind of bad input."""
import pytest

from runner.settings import Build, Ceiling, Resources, Settings, SettingsError, from_json, parse

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
    ("env:\n  A: 2026-11-29\n", "env.A (line 2): expected a string, number or boolean"),
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
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_input_names_the_key_and_line(text, message):
    """Bad input: a SettingsError (never another exception) naming the key and, from YAML, the
    line — the reason the deployment fails with."""
    with pytest.raises(SettingsError) as raised:
        parse(text, CEILING)
    assert str(raised.value).startswith(f".speed.yml: {message}"), str(raised.value)


def test_aliases_cannot_blow_up():
    """A billion-laughs file (9^9 values through aliases) is refused at once, never expanded;
    an alias to a list where a value is expected is refused."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    with pytest.raises(SettingsError, match="file: more than 10000 values"):
        parse(bomb, CEILING)
    with pytest.raises(SettingsError, match="expected a string, number or boolean"):
        parse("build:\n  args: {A: &x [1, 2]}\nenv: {B: *x}\n", CEILING)
