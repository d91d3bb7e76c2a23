"""A deployment's build context, read from its checkout without following a link out of it."""
import os
import stat
import tempfile
from typing import IO

from docker.utils.build import tar

from runner.dockerfile import refuse_unsafe_images
from runner.errors import BuildFailed
from runner.settings import Build

MAX_DOCKERFILE = 1024 * 1024
# What SPEED sends the engine as one build's context: a sparse file of a few bytes in git can be
# hundreds of megabytes once archived.
MAX_CONTEXT = 1024 * 1024 * 1024
MAX_DOCKERIGNORE = 64 * 1024


def inside(root: str, relative: str) -> str:
    """The real path that relative names in root; BuildFailed if it leaves root (an absolute
    path, `..`, or a symbolic link pointing out)."""
    if os.path.isabs(relative):
        raise BuildFailed(f"{relative}: an absolute path; paths are relative to the repository")
    top = os.path.realpath(root)
    real = os.path.realpath(os.path.join(top, relative))
    if os.path.commonpath([top, real]) != top:
        raise BuildFailed(f"{relative}: leads out of the repository "
                          "(SPEED follows no link out of it)")
    return real


def read_file(root: str, relative: str, limit: int) -> bytes | None:
    """A regular file inside root, read to at most limit bytes; None if there is none."""
    try:
        # O_NONBLOCK: a FIFO would otherwise hang the open; it is refused below.
        fd = os.open(inside(root, relative), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BuildFailed(f"{relative}: cannot be read ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BuildFailed(f"{relative}: not a regular file")
        data = b""
        while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
            data += chunk
        if len(data) > limit:
            raise BuildFailed(f"{relative}: larger than {limit} bytes")
        return data
    finally:
        os.close(fd)


class _Bounded:
    """A temporary file that refuses to grow past a limit (BuildFailed)."""

    def __init__(self, directory: str, limit: int):
        self._file = tempfile.TemporaryFile(dir=directory)
        self._limit, self._written = limit, 0

    def write(self, data: bytes) -> int:
        self._written += len(data)
        if self._written > self._limit:
            self._file.close()
            raise BuildFailed(f"the build context is larger than {self._limit} bytes "
                              "(a .dockerignore can leave out what the build does not need)")
        return self._file.write(data)

    def __getattr__(self, name: str):
        return getattr(self._file, name)


def archive(repository: str, build: Build = Build(),
            limit: int = MAX_CONTEXT) -> tuple[IO[bytes], str]:
    """The build context of the checkout at repository as a tar file (beside the checkout, at
    most limit bytes), .dockerignore applied, and the name of the Dockerfile in it.

    Only regular files are read, and only through the archive: links are archived as links,
    never followed (the engine resolves them inside the context)."""
    root = inside(repository, build.context)
    if not os.path.isdir(root):
        raise BuildFailed(f"build.context: {build.context} is not a directory in the repository")
    text = read_file(repository, build.dockerfile, MAX_DOCKERFILE)
    if text is None:
        raise BuildFailed("no Dockerfile at the repository root" if build.dockerfile == "Dockerfile"
                          else f"build.dockerfile: no {build.dockerfile} in the repository")
    refuse_unsafe_images(text.decode("utf-8", "replace"), dict(build.args))
    ignore = read_file(root, ".dockerignore", MAX_DOCKERIGNORE) or b""
    patterns = [line.strip() for line in ignore.decode("utf-8", "replace").splitlines()
                if line.strip() and not line.strip().startswith("#")]
    name = os.path.relpath(inside(repository, build.dockerfile), root)
    if name.startswith(".."):
        # Outside the context, as `docker build -f` allows: it goes in under a name of its own.
        dockerfile = (".speed.Dockerfile", text.decode("utf-8", "replace"))
    else:
        dockerfile = (name, None)
    bounded = _Bounded(os.path.dirname(os.path.realpath(repository)), limit)
    return tar(root, exclude=patterns, dockerfile=dockerfile, fileobj=bounded), dockerfile[0]
