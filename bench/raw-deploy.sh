#!/bin/sh
# One deployment by hand, as a user would script it: clone a branch's newest commit, build it,
# run it once. Usage: raw-deploy.sh URL BRANCH DIRECTORY TAG (bench/deploys.py runs it
# through xargs -P4 for 20 commits at a time).
set -e
git clone -q --depth 1 --single-branch --branch "$2" -- "$1" "$3"
docker build -q -t "$4" "$3" >/dev/null 2>&1
docker run --rm "$4" >/dev/null
