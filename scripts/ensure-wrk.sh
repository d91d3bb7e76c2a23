#!/usr/bin/env bash
# The bench's HTTP load generator: wrk (Debian's package), installed when missing.
set -euo pipefail
exec "$(dirname "$0")/ensure-packages.sh" wrk:wrk
