"""Structured logging: one line per event, with the deployment id when there is one."""
import logging


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        deployment = getattr(record, "deployment", None)
        return f"{line} deployment={deployment}" if deployment is not None else line


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr as `time level logger: message [deployment=N]`."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
