"""peewee models: deployments, their results, deliveries, settings, sessions, secrets,
environments, releases and replicas (the schema itself comes from storage/migrations)."""
import datetime

from peewee import (
    AutoField, BigIntegerField, BooleanField, CharField, DateTimeField, DoubleField, ForeignKeyField,
    IntegerField, Model, TextField,
)

from storage.db import database
from storage.status import Status


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class BaseModel(Model):
    class Meta:
        database = database


class Deployment(BaseModel):
    id = AutoField()
    url = TextField()
    branch = TextField()
    commit = CharField(max_length=40, null=True)
    status = CharField(max_length=16, default=Status.PENDING.value, index=True)
    progress = TextField(null=True)
    trigger = CharField(max_length=32, default="manual")  # manual, push, pull_request, redeploy
    # For repositories on GitHub: owner/name, the App installation, the pull request, and the
    # GitHub Deployment made for this deployment, if any.
    repo_full_name = CharField(max_length=200, null=True, index=True)
    installation_id = BigIntegerField(null=True)
    pull_request = IntegerField(null=True)
    github_deployment_id = BigIntegerField(null=True)
    # The last state the reporter of releases before 0008 got through to GitHub (the outbox,
    # Report, says what each state's delivery came to since).
    reported = CharField(max_length=32, null=True)
    # sha256 of the running container's token; cleared when the deployment finishes, so the
    # token is refused from then on.
    token_hash = CharField(max_length=64, null=True)
    container_id = CharField(max_length=64, null=True)
    # The image it runs: named by the pipeline with a random part and never printed, so no other
    # deployment can build FROM it or run it.
    image = TextField(null=True)
    # How many times a worker claimed it: a deployment that keeps taking SPEED down with it is
    # failed instead of being queued again for ever.
    attempts = IntegerField(default=0)
    # The replica carrying it out (Replica.id) since it was claimed: only that replica may write
    # about it until another adopts it, once the owner's lease ran out (storage.replicas).
    owner = CharField(max_length=32, null=True, index=True)
    # Which claim of it the owner carries out: counted up at every claim and adoption, so a
    # run of an earlier claim (its replica stopped, then given the deployment back) is fenced too.
    claim = IntegerField(default=0)
    # The settings in effect (runner.settings.Settings.to_json): from the commit's .speed.yml.
    settings = TextField(null=True)
    # The environment a repos: rule names (SPEED_ENVIRONMENT), and whether a pull request comes
    # from a fork (which never receives secrets).
    environment = CharField(max_length=255, null=True)
    fork = BooleanField(default=False)
    # While it runs: the values of the secrets its container got, encrypted, so that a restart
    # goes on redacting them whatever became of the secrets since. Cleared when it finishes.
    secrets_sealed = TextField(null=True)
    exit_code = IntegerField(null=True)
    reason = TextField(null=True)
    # True when SPEED or its engine failed, not the repository's code (GitHub's "error" state).
    infrastructure_failure = BooleanField(default=False)
    # Time (Unix ns) of the newest container output stored; a reattached log stream resumes after it.
    log_cursor = BigIntegerField(null=True)
    log_seen = IntegerField(default=0)  # pieces of output at log_cursor's time stored already
    # Batches of output stored: each names the count it expects, so a retried one is stored once.
    output_batches = IntegerField(default=0)
    log_bytes = IntegerField(default=0)
    created_at = DateTimeField(default=utcnow)
    started_at = DateTimeField(null=True)
    # Phase ends: clone (cloned_at - started_at), build (built_at - cloned_at), run (the rest).
    cloned_at = DateTimeField(null=True)
    built_at = DateTimeField(null=True)
    container_started_at = DateTimeField(null=True)
    finished_at = DateTimeField(null=True)

    class Meta:
        # A push's superseded deployments are found by these (storage.deployments._supersede):
        # without it, each delivery read every deployment the repository ever had.
        indexes = ((("repo_full_name", "branch", "status"), False),)

    @property
    def state(self) -> Status:
        return Status(self.status)


class Result(BaseModel):
    id = AutoField()
    deployment = ForeignKeyField(Deployment, backref="results", on_delete="CASCADE", index=True)
    text = TextField()
    created_at = DateTimeField(default=utcnow)


class Delivery(BaseModel):
    """A GitHub webhook delivery, so a redelivered event is answered as it was the first time."""

    guid = CharField(max_length=64, unique=True)
    event = CharField(max_length=64)
    deployment = ForeignKeyField(Deployment, null=True, on_delete="SET NULL")
    status = IntegerField()
    message = TextField()
    received_at = DateTimeField(default=utcnow)


class Setting(BaseModel):
    key = CharField(primary_key=True)
    value = TextField()


class Session(BaseModel):
    """A browser's login session, kept as hashes: the database shows no cookie and no token."""

    cookie_hash = CharField(max_length=64, unique=True)  # sha256 of the cookie's random value
    token_hash = CharField(max_length=64)  # sha256 of the API token it signed in with
    created_at = DateTimeField(default=utcnow)
    expires_at = DateTimeField(index=True)



class Secret(BaseModel):
    """A value deployments may receive, encrypted (Fernet); the scope says which may."""

    name = CharField(max_length=128, unique=True)
    value = TextField()  # ciphertext only
    repositories = TextField()  # JSON list of host/path globs
    branches = TextField()  # JSON list of branch globs; empty: every branch
    pull_requests = BooleanField(default=False)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    updated_by = CharField(max_length=64)  # which token, by the start of its sha256


class Environment(BaseModel):
    """Where a repository's service runs: production, pr-12, ...; one release of it is live."""

    repository = TextField()  # host/path, as runner.scope.repository names it
    name = CharField(max_length=64)
    address = CharField(max_length=200, unique=True)  # <name>.<repo>: the proxy adds its domain
    # The live release (a Release id; no foreign key, which would make the two tables refer to
    # each other and peewee create neither first).
    live = IntegerField(null=True)
    created_at = DateTimeField(default=utcnow)
    removed_at = DateTimeField(null=True)  # torn down (a closed pull request's preview)

    class Meta:
        indexes = ((("repository", "name"), True),)


class Release(BaseModel):
    """One deployment's container of an environment, from its start to its retirement."""

    environment = ForeignKeyField(Environment, backref="releases", on_delete="CASCADE", index=True)
    deployment = ForeignKeyField(Deployment, on_delete="CASCADE", unique=True)
    image = TextField()
    container_id = CharField(max_length=64, null=True)
    upstream = CharField(max_length=64, null=True)  # host:port the proxy sends its requests to
    state = CharField(max_length=16, index=True)  # storage.releases.ReleaseState
    health = TextField(null=True)  # what the last check of a live release saw; None: healthy
    started_at = DateTimeField(default=utcnow)
    live_since = DateTimeField(null=True)
    drain_until = DateTimeField(null=True)
    retired_at = DateTimeField(null=True)


class Replica(BaseModel):
    """A running SPEED process sharing the database; its heartbeat is its lease."""

    id = CharField(max_length=32, primary_key=True)  # random, made at each start
    host = CharField(max_length=200)  # hostname and boot id: where its pid means something
    pid = IntegerField()
    slots = IntegerField(default=0)  # its runner.max_concurrent
    started_at = DateTimeField(default=utcnow)
    # The database's clock (seconds) at its last heartbeat: the database's, so replicas on
    # machines whose clocks disagree still agree on whose lease ran out. 0: it left.
    heartbeat = DoubleField()


class Report(BaseModel):
    """One state a deployment is to show on GitHub: the outbox bot/reporter.py drains. Rows are
    made by the database itself (triggers of migration 0008) when a deployment changes."""

    deployment_id = IntegerField()
    key = CharField(max_length=16)  # queued, running, success, failure, error, cancelled
    state = CharField(max_length=16, default="waiting")  # storage.outbox: WAITING ... GIVEN_UP
    sender = CharField(max_length=32, null=True)  # the replica sending it
    steps = IntegerField(default=0)  # 1: its commit status is on GitHub (the rest follows)
    created_at = DoubleField()  # the database's clock

    class Meta:
        indexes = ((("deployment_id", "key"), True), (("state", "id"), False))


class StartRequest(BaseModel):
    """A POST /start's Idempotency-Key and the deployment it queued, kept a day."""

    key = CharField(max_length=100, primary_key=True)
    request_hash = CharField(max_length=64)  # sha256 of what was asked: url and branch
    deployment_id = IntegerField()
    created_at = DoubleField(index=True)  # the database's clock

    class Meta:
        table_name = "start_request"
