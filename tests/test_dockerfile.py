"""Which images a Dockerfile may use, read as Docker's parser reads it (no engine needed)."""
import pytest

from runner.dockerfile import references, refuse_unsafe_images
from runner.errors import BuildFailed

TAG = "speed-0123456789ab:5-0011223344556677"

ALLOWED = {
    "plain": "FROM speed-test-base:latest\nCOPY . /app\n",
    "stages": "FROM base:1 AS build\nRUN x\nFROM base:2\nCOPY --from=build /a /b\nCOPY --from=0 /a /b\n",
    "arg default": "ARG BASE=python:3.11\nFROM ${BASE}\n",
    "scratch": "FROM scratch\nCOPY x /\n",
    "digest": "FROM alpine@sha256:" + "a" * 64 + "\n",
    "flags": "FROM --platform=linux/amd64 base:1 AS a\nCOPY --chown=1:1 --from=a /x /y\n",
}
REFUSED = {
    "id prefix": ("FROM cf\n", "FROM cf: images are named by repository (and tag), not by id"),
    "copy id prefix": ("FROM base:1\nCOPY --from=cf /s /l\n", "COPY cf: images are named"),
    "full id": ("FROM sha256:" + "c" * 64 + "\n", "not by id"),
    "own image": (f"FROM {TAG}\n", "deployments may not use the images SPEED builds"),
    "comment continued": (f"# just a comment \\\nFROM {TAG}\n", "line 2: deployments may not"),
    "backtick is no escape": (f"FROM base:1\nRUN true # `\nFROM {TAG}\n", "line 3: deployments"),
    "escape directive": (f"# escape=`\nFROM base:1\nRUN echo `\n  hi\nFROM {TAG}\n", "line 5:"),
    "arg indirection": (f"ARG I={TAG}\nFROM ${{I}}\n", "deployments may not"),
    "build arg": ("ARG I=base:1\nFROM $I\n", "deployments may not"),
    "onbuild": (f"FROM base:1 AS a\nONBUILD COPY --from={TAG} / /l\nFROM a\n", "deployments"),
    "byte order mark": (f"\ufeffFROM {TAG}\n", "deployments may not"),
    "unset variable": ("FROM $NOPE\n", "FROM $NOPE: a variable it needs has no value"),
    "default to an id": ("FROM ${NOPE:-cf}\n", "not by id"),
    "later stage": ("FROM base:1\nCOPY --from=cf /a /b\nFROM base:2 AS cf\n", "not by id"),
    "mount": (f"FROM base:1\nRUN --mount=type=bind,from={TAG},target=/v true\n", "deployments"),
    "upper case": (f"from {TAG.upper()}\n", "deployments may not"),
}


@pytest.mark.parametrize("name", ALLOWED)
def test_ordinary_dockerfiles_pass(name):
    refuse_unsafe_images(ALLOWED[name], {})


@pytest.mark.parametrize("name", REFUSED)
def test_ids_speeds_images_and_disguises_are_refused(name):
    """Attack: a build reaching another deployment's image by an id prefix (the engine takes any
    unique one) or by SPEED's name behind what a text match misses: a comment line ending in a
    backslash, a backtick that is no escape character, ARG indirection, ONBUILD, a byte order
    mark, upper case."""
    text, message = REFUSED[name]
    build_args = {"I": TAG} if name == "build arg" else {}
    with pytest.raises(BuildFailed, match=message.replace("$", r"\$").replace("(", r"\(")
                       .replace(")", r"\)")):
        refuse_unsafe_images(text, build_args)


def test_build_args_override_argument_defaults():
    found = references("ARG B=x:1\nFROM $B AS s\nCOPY --from=s /a /b\n", {"B": "y:2"})
    assert [(r.expanded, r.stage) for r in found] == [("y:2", False), ("s", True)]
