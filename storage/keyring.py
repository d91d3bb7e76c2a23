"""The keys secret values are encrypted with at rest: Fernet (AES-128-CBC + HMAC-SHA256) from
`cryptography`, several keys at once so that a key can be rotated."""
import logging
import os
import pathlib
import tempfile
import threading
from typing import Collection

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

log = logging.getLogger(__name__)


class KeyringError(ValueError):
    """A key is unusable, or a value was encrypted under none of the keys."""


def _fernets(keys: list[str]) -> list[Fernet]:
    """The keys as Fernets, first first; KeyringError when there is none or one is malformed."""
    if not keys:
        raise KeyringError("secrets.key: no key")
    try:
        return [Fernet(key.strip().encode()) for key in keys]
    except (ValueError, TypeError):
        raise KeyringError("secrets.key: each key must be 32 url-safe base64-encoded bytes "
                           "(make one with: python -c 'from cryptography.fernet import "
                           "Fernet; print(Fernet.generate_key().decode())')") from None


class Keyring:
    """Encrypts under the first key; decrypts with any."""

    def __init__(self, keys: list[str]):
        self._keys = _fernets(keys)

    def _current(self) -> list[Fernet]:
        """The keys as they are now, first first."""
        return self._keys

    def encrypt(self, value: str) -> str:
        return MultiFernet(self._current()).encrypt(value.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        return _read(MultiFernet(self._current()).decrypt, ciphertext)

    def rotate(self, ciphertext: str) -> str:
        """The same value encrypted under the first key."""
        return _read(MultiFernet(self._current()).rotate, ciphertext)

    def readable(self, ciphertext: str) -> bool:
        """Whether some key decrypts it."""
        return _opens(MultiFernet(self._current()), ciphertext)

    def under_first(self, ciphertext: str) -> bool:
        """Whether the first key alone decrypts it: the keys after it may go once every value is."""
        return _opens(self._current()[0], ciphertext)

    def check(self, stored: Collection[str]) -> None:
        """Before first use: KeyringError when values are stored and no key decrypts any of them."""
        # One readable value shows the keys are the right ones, so this costs one decryption;
        # a value no key reads among readable ones is the business of rotate-secrets.
        if stored and not any(self.readable(ciphertext) for ciphertext in stored):
            raise KeyringError("secrets.key: no key decrypts any secret in the database; "
                               "configure the key they were encrypted under (from a backup)")


def _read(call, ciphertext: str) -> str:
    try:
        return call(ciphertext.encode()).decode()
    except InvalidToken:
        raise KeyringError("a secret was encrypted under a key secrets.key no longer "
                           "holds") from None


def _opens(fernet: Fernet | MultiFernet, ciphertext: str) -> bool:
    try:
        fernet.decrypt(ciphertext.encode())
    except InvalidToken:
        return False
    return True


class KeyFileKeyring(Keyring):
    """A key file's keys, read again when it changes: a running SPEED follows a rotation."""

    def __init__(self, path: pathlib.Path):
        self._path = path
        self._lock = threading.Lock()  # the event loop and the database thread both use it
        self._keys: list[Fernet] = []
        self._seen: tuple[int, int, int] | None = None  # inode, size, mtime of what was read
        try:
            self._reload()
        except FileNotFoundError:
            pass  # made by check(), once the database says there is nothing to lose

    def _reload(self) -> None:
        """Read the file if it changed since it was last read; a stat per use is cheap."""
        stat = os.stat(self._path)
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if seen != self._seen:
            self._keys = _fernets(read_key_file(self._path))
            self._seen = seen

    def _current(self) -> list[Fernet]:
        with self._lock:
            try:
                self._reload()
            except (OSError, KeyringError) as e:
                why = (f"secrets.key: {self._path}: {e.strerror}" if isinstance(e, OSError)
                       else f"{e} ({self._path})")
                if not self._keys:
                    raise KeyringError(why) from None
                # A file being edited, or deleted by mistake: the keys read before still serve.
                log.warning("%s; using the keys read from it before", why)
            return self._keys

    def check(self, stored: Collection[str]) -> None:
        """Make the key file if there is none and nothing is stored; then Keyring.check."""
        if not self._path.exists():
            if stored:
                # A new key would read none of them, and values set from now on would be
                # encrypted under a key the old ones are not: say so instead of starting.
                raise KeyringError(f"secrets.key: {self._path} is missing, yet the database "
                                   "holds secrets encrypted under it; restore it from the "
                                   "database's backup")
            make_key_file(self._path)
        super().check(stored)


def read_key_file(path: pathlib.Path) -> list[str]:
    """The keys in a key file: one per line, the first encrypts."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def make_key_file(path: pathlib.Path) -> None:
    """Make a key file holding a new key, unless another process makes one first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _written(path, Fernet.generate_key().decode() + "\n")
    try:
        # link() puts the whole file in place or fails if one is there: of two SPEEDs starting
        # at once, one key wins, and neither can read the other's file half-written.
        os.link(temporary, path)
    except FileExistsError:
        return
    finally:
        os.unlink(temporary)
    _sync_directory(path.parent)
    log.warning("made a new key for secrets in %s (mode 0600): back it up with the database; "
                "without it no secret can be read", path)


def add_key(path: pathlib.Path) -> None:
    """Put a new first key in a key file, keeping the others to decrypt with."""
    text = "\n".join([Fernet.generate_key().decode(), *read_key_file(path)]) + "\n"
    temporary = _written(path, text)
    try:
        os.replace(temporary, path)  # a running SPEED reads the old file or the new, never half
    except OSError:
        os.unlink(temporary)
        raise
    _sync_directory(path.parent)


def _written(path: pathlib.Path, text: str) -> str:
    """A new file (mode 0600) beside path holding text, on disk; its name."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # a crash must not leave a key file named but empty
    except BaseException:
        os.unlink(name)
        raise
    return name


def _sync_directory(directory: pathlib.Path) -> None:
    """Put a directory's new entry on disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
