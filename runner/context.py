"""A deployment's build context, read from its checkout without following a link out of it."""
import os
import re
import stat
from typing import IO

from docker.utils.build import tar

from runner.errors import BuildFailed

MAX_DOCKERFILE = 1024 * 1024
MAX_DOCKERIGNORE = 64 * 1024
# The images SPEED builds are speed-<instance>:...; no deployment may build on another's.
_OWN_IMAGE = re.compile(r"(?:^|/)speed-[0-9a-f]{12}(?:[:@]|$)")
_REFERENCES = re.compile(r"^\s*(?:FROM\s+(?:--\S+\s+)*(\S+)|(?:COPY|ADD|RUN)\s.*)", re.I)
_FROM_FLAG = re.compile(r"--(?:from|mount=\S*?\bfrom)=([^\s,]+)", re.I)


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


def _logical_lines(dockerfile: str) -> list[tuple[int, str]]:
    """(first line number, text) of each instruction, continuation lines joined."""
    lines, start, parts = [], 0, []
    for number, line in enumerate(dockerfile.splitlines(), start=1):
        if not parts:
            start = number
        if line.rstrip().endswith(("\\", "`")):
            parts.append(line.rstrip()[:-1])
            continue
        lines.append((start, " ".join(parts + [line])))
        parts = []
    if parts:
        lines.append((start, " ".join(parts)))
    return lines


def refuse_own_images(dockerfile: str) -> None:
    """BuildFailed if the Dockerfile builds on, or copies from, an image SPEED made."""
    for number, line in _logical_lines(dockerfile):
        found = _REFERENCES.match(line)
        if not found:
            continue
        references = [found.group(1)] if found.group(1) else _FROM_FLAG.findall(line)
        if any(_OWN_IMAGE.search(reference.lower()) for reference in references):
            raise BuildFailed(f"Dockerfile line {number}: deployments may not use the images "
                              "SPEED builds for deployments")


def archive(root: str, dockerfile: str = "Dockerfile") -> IO[bytes]:
    """The build context of the checkout at root as a tar file, .dockerignore applied.

    Only regular files are read, and only through the archive: links are archived as links,
    never followed (the engine resolves them inside the context)."""
    text = read_file(root, dockerfile, MAX_DOCKERFILE)
    if text is None:
        raise BuildFailed(f"no {dockerfile} at the repository root")
    refuse_own_images(text.decode("utf-8", "replace"))
    ignore = read_file(root, ".dockerignore", MAX_DOCKERIGNORE) or b""
    patterns = [line.strip() for line in ignore.decode("utf-8", "replace").splitlines()
                if line.strip() and not line.strip().startswith("#")]
    return tar(root, exclude=patterns, dockerfile=(dockerfile, None))
