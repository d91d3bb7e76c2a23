#!/usr/bin/env bash
# Make sure a Docker engine answers: as root, install Debian's docker.io and start dockerd when missing.
set -euo pipefail

engine_answers() { docker info >/dev/null 2>&1; }

engine_answers && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "ensure-docker: no Docker engine answers and this is not root." >&2
  echo "  Install docker.io (apt-get install docker.io), start dockerd, and add yourself to the docker group." >&2
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-docker: dockerd is missing and apt-get is not available; install a Docker engine." >&2
    exit 1
  fi
  echo "ensure-docker: installing docker.io from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
command -v docker >/dev/null 2>&1 || { echo "ensure-docker: the docker client is missing" >&2; exit 1; }

mkdir -p /var/log
echo "ensure-docker: starting dockerd (log: /var/log/dockerd.log)" >&2
# setsid: the engine must outlive this script and the make that called it.
# --live-restore: containers keep running while the engine restarts (an upgrade, a crash), so
# SPEED follows its deployments on once the engine is back instead of losing them.
flags=(--live-restore)
grep -qs '"live-restore"' /etc/docker/daemon.json && flags=()  # the flag may not repeat the file
setsid nohup dockerd "${flags[@]}" >>/var/log/dockerd.log 2>&1 < /dev/null &

for _ in $(seq 1 120); do
  engine_answers && { echo "ensure-docker: engine is up" >&2; exit 0; }
  sleep 0.5
done
echo "ensure-docker: dockerd did not answer within 60 s; see /var/log/dockerd.log:" >&2
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
