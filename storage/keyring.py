"""The keys secret values are encrypted with at rest: Fernet (AES-128-CBC + HMAC-SHA256) from
`cryptography`, several keys at once so that a key can be rotated."""
import os
import pathlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class KeyringError(ValueError):
    """A key is unusable, or a value was encrypted under none of the keys."""


class Keyring:
    """Encrypts under the first key; decrypts with any."""

    def __init__(self, keys: list[str]):
        if not keys:
            raise KeyringError("secrets.key: no key")
        try:
            self._fernet = MultiFernet([Fernet(key.strip().encode()) for key in keys])
        except (ValueError, TypeError):
            raise KeyringError("secrets.key: each key must be 32 url-safe base64-encoded bytes "
                            "(make one with: python -c 'from cryptography.fernet import "
                            "Fernet; print(Fernet.generate_key().decode())')") from None

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        return self._read(self._fernet.decrypt, ciphertext)

    def rotate(self, ciphertext: str) -> str:
        """The same value encrypted under the first key."""
        return self._read(self._fernet.rotate, ciphertext)

    @staticmethod
    def _read(call, ciphertext: str) -> str:
        try:
            return call(ciphertext.encode()).decode()
        except InvalidToken:
            raise KeyringError("a secret was encrypted under a key secrets.key no longer "
                               "holds") from None


def key_file_keys(path: pathlib.Path) -> tuple[list[str], bool]:
    """The keys in a key file (one per line, the first encrypts), made with a new key if there
    is none; and whether it was made now."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key().decode()
        # O_EXCL: two processes starting at once must not each write a different key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return key_file_keys(path)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return [key], True
    return [line.strip() for line in text.splitlines() if line.strip()], False


def add_key(path: pathlib.Path) -> None:
    """Put a new first key in a key file, keeping the others to decrypt with."""
    keys, _ = key_file_keys(path)
    new = Fernet.generate_key().decode()
    temporary = path.with_suffix(".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join([new, *keys]) + "\n")
    os.replace(temporary, path)
