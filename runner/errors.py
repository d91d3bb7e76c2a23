"""Runner errors: one root, one kind per phase, each carrying what the phase printed."""


class RunnerError(Exception):
    """A deployment could not be carried out; message says why, log holds the tool's output."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.message = message
        self.log = log


class CheckoutFailed(RunnerError):
    """git could not fetch the repository or branch."""


class BuildFailed(RunnerError):
    """The image could not be built."""


class RunFailed(RunnerError):
    """The container could not be created, started or followed."""


class EngineUnavailable(RunnerError):
    """The container engine does not answer."""


class SettingsInvalid(RunnerError):
    """The commit's .speed.yml cannot be used, or asks for a secret the deployment may not have."""
