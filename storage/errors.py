"""What storage refuses: one root, so callers can tell the database's answers from bugs."""
from storage.status import Status


class StorageError(Exception):
    """The database refused or could not do what was asked; nothing was changed."""


class NotFound(StorageError, LookupError):
    """No deployment has that id."""


class IllegalTransition(StorageError, ValueError):
    """The deployment cannot move to the requested status."""

    def __init__(self, current: Status, new: Status, why: str = ""):
        super().__init__(f"cannot move a {current.value} deployment to {new.value}"
                         + (f" ({why})" if why else ""))
        self.current, self.new, self.why = current, new, why


class Finished(StorageError):
    """The deployment finished: what only a running deployment may do was refused."""


class KeyReused(StorageError):
    """An Idempotency-Key sent again with another request than the one it first came with."""


class ResultsFull(StorageError):
    """The deployment's results reached their size limit; the text was not stored."""

    def __init__(self, limit: int):
        super().__init__(f"the deployment's results reached their limit of {limit} bytes")
        self.limit = limit


class StorageFull(StorageError):
    """The database's disk is full: the query was rolled back and nothing changed."""

    def __init__(self):
        super().__init__("the database's disk is full")


class StorageUnavailable(StorageError):
    """The database server cannot be reached (restarting, failing over): the query did not
    complete, and is to be tried again once it answers."""

    def __init__(self):
        super().__init__("the database cannot be reached")


class NotOwner(StorageError):
    """Another replica carries the deployment now (this one's lease ran out): nothing written."""

    def __init__(self, deployment_id: int):
        super().__init__(f"deployment {deployment_id} is carried out by another replica now")
        self.deployment_id = deployment_id
