"""Deployment statuses and the legal transitions between them."""
import enum


class Status(str, enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @classmethod
    def parse(cls, word: str) -> "Status | None":
        """The status a word names, case-insensitively, or None."""
        return _BY_LOWER.get(word.strip().lower())


FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
_BY_LOWER = {s.value.lower(): s for s in Status}

# Only the worker starts a deployment (storage.deployments.claim_next) and only start-up puts an
# interrupted one back in the queue (requeue); neither is a transition callers may ask for.
LEGAL = {
    Status.PENDING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
    Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
}


def is_legal(current: Status, new: Status) -> bool:
    """Whether a deployment may move from current to new."""
    return new in LEGAL.get(current, frozenset())
