#!/usr/bin/env bash
# Make sure Caddy's admin API answers at SPEED_PROXY_ADMIN (default http://localhost:2019):
# install Debian's caddy when missing and start `caddy run` with an admin-only JSON config.
set -euo pipefail

admin="${SPEED_PROXY_ADMIN:-http://localhost:2019}"
admin="${admin%/}"
case "$admin" in
  http://*) listen="${admin#http://}" ;;
  *) echo "ensure-caddy: SPEED_PROXY_ADMIN must be http://host:port, not $admin" >&2; exit 1 ;;
esac
case "$listen" in
  */*|*@*|"") echo "ensure-caddy: SPEED_PROXY_ADMIN must be http://host:port, not $admin" >&2; exit 1 ;;
esac

# The admin API itself, not just an open port: something else may hold it.
admin_answers() {
  python3 - "$admin" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/config/", timeout=2).read()
EOF
}

admin_answers && exit 0

"$(dirname "$0")/ensure-packages.sh" caddy:caddy
# Installing Debian's package starts its own Caddy where systemd runs; that one may answer now.
admin_answers && exit 0

if [ "$(id -u)" = 0 ]; then
  log=/var/log/speed-caddy.log
  config_dir=/var/lib/speed-caddy
else
  log="${TMPDIR:-/tmp}/speed-caddy-$(id -u).log"
  config_dir="${XDG_CONFIG_HOME:-$HOME/.config}/speed-caddy"
fi
mkdir -p "$config_dir" "$(dirname "$log")"
config="$config_dir/caddy.json"
# Only the admin endpoint: SPEED adds its server through the API. Caddy 2.6 ignores CADDY_ADMIN,
# so the address must be in the config; nothing is persisted, since SPEED rebuilds its routes
# from its database whenever Caddy comes back empty.
printf '{"admin": {"listen": "%s", "config": {"persist": false}}}\n' "$listen" > "$config"

echo "ensure-caddy: starting caddy, admin on $listen (log: $log)" >&2
# setsid: Caddy must outlive this script and the make that called it. cd /: an explicit
# --config already keeps `caddy run` from picking up a Caddyfile, and no cwd is held open.
(cd / && exec setsid nohup caddy run --config "$config" >>"$log" 2>&1 < /dev/null) &
pid=$!

for _ in $(seq 1 60); do
  admin_answers && { echo "ensure-caddy: caddy is up (pid $pid)" >&2; exit 0; }
  kill -0 "$pid" 2>/dev/null || break  # it exited: e.g. the admin address is taken
  sleep 0.25
done
echo "ensure-caddy: caddy's admin API did not answer at $admin; see $log:" >&2
tail -n 20 "$log" >&2 || true
exit 1
