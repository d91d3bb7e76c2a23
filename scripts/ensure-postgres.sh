#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:PORT with a role and a database for SPEED,
# and print its URL (for database.url). When nothing answers there: install Debian's postgresql
# when missing, initdb a private cluster (as the postgres user when root: initdb refuses root)
# and start it. Idempotent; when it runs already, one login and the URL.
#
# Usage: ensure-postgres.sh [PORT]            (default $SPEED_PG_PORT, else 15432)
#   SPEED_PG_DIR       the cluster's folder (data/, run/ for the socket, postgres.log, password)
#                      default /var/lib/speed-postgres/PORT as root, else ~/.local/share/...
#   SPEED_PG_USER      the role made for SPEED (default speed; it may create databases)
#   SPEED_PG_DATABASE  the database made for it (default speed)
#   SPEED_PG_PASSWORD  its password (default: made once, random, kept in SPEED_PG_DIR/password)
#   SPEED_PG_OPTIONS   more server options when it starts here (the tests: -c fsync=off)
set -euo pipefail

port="${1:-${SPEED_PG_PORT:-15432}}"
case "$port" in
  ''|*[!0-9]*) echo "ensure-postgres: the port must be a number, not '$port'" >&2; exit 1 ;;
esac
if [ "$(id -u)" = 0 ]; then
  dir="${SPEED_PG_DIR:-/var/lib/speed-postgres/$port}"
else
  dir="${SPEED_PG_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/speed-postgres/$port}"
fi
user="${SPEED_PG_USER:-speed}"
db="${SPEED_PG_DATABASE:-speed}"
for name in "$user" "$db"; do  # they go into a URL and SQL: plain names only
  case "$name" in
    ''|*[!a-z0-9_]*) echo "ensure-postgres: '$name': role and database names are [a-z0-9_]" >&2; exit 1 ;;
  esac
done

case "$dir" in
  *[[:space:]]*) echo "ensure-postgres: SPEED_PG_DIR may not contain spaces: '$dir'" >&2; exit 1 ;;
esac
mkdir -p "$dir"
# One caller at a time (the tests' workers start side by side): the second finds it running.
exec 9>"$dir/lock"
flock 9

if [ -n "${SPEED_PG_PASSWORD:-}" ]; then
  password="$SPEED_PG_PASSWORD"
else
  [ -s "$dir/password" ] || (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$dir/password")
  password="$(cat "$dir/password")"
fi
case "$password" in  # playhouse.db_url does not unquote passwords
  *[!A-Za-z0-9._~-]*) echo "ensure-postgres: SPEED_PG_PASSWORD may hold only A-Z a-z 0-9 . _ ~ -" >&2; exit 1 ;;
esac
url="postgresql://$user:$password@127.0.0.1:$port/$db"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
logs_in() {
  local psql
  psql="$(command -v psql || echo "$(bindir)/psql")"
  [ -x "$psql" ] && PGPASSWORD="$password" PGCONNECT_TIMEOUT=5 "$psql" -X -h 127.0.0.1 -p "$port" \
    -U "$user" -d "$db" -Atqc 'SELECT 1' >/dev/null 2>&1
}

if answers && logs_in; then
  echo "$url"
  exit 0
fi

if [ -z "$(bindir)" ] || [ ! -x "$(bindir)/initdb" ]; then
  "$(dirname "$0")/ensure-packages.sh" initdb:postgresql
fi
bin="$(bindir)"
[ -n "$bin" ] && [ -x "$bin/initdb" ] || { echo "ensure-postgres: no initdb under /usr/lib/postgresql/*/bin" >&2; exit 1; }

data="$dir/data" run="$dir/run" log="$dir/postgres.log"
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "ensure-postgres: Debian's postgres user is missing" >&2; exit 1; }
  as_owner() { (cd / && runuser -u postgres -- "$@"); }
  superuser=postgres
  mkdir -p "$data" "$run"
  touch "$log"
  chown postgres: "$data" "$run" "$log"
  chmod 755 "$dir"  # the postgres user reaches data/ and run/ through it
else
  as_owner() { (cd / && "$@"); }
  superuser="$(id -un)"
  mkdir -p "$data" "$run"
fi
chmod 700 "$data" "$run"

if answers; then
  # Something answers but SPEED's role cannot log in: ours (made by an earlier run with another
  # password or role), or someone else's, which this script must not touch.
  [ -S "$run/.s.PGSQL.$port" ] || {
    echo "ensure-postgres: something else answers on 127.0.0.1:$port and $user cannot log in" >&2
    exit 1; }
else
  if [ ! -s "$data/PG_VERSION" ]; then
    echo "ensure-postgres: initdb in $data" >&2
    as_owner "$bin/initdb" -D "$data" -U "$superuser" --auth-local=peer --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C >>"$log" 2>&1 || {
      echo "ensure-postgres: initdb failed; see $log:" >&2; tail -n 20 "$log" >&2; exit 1; }
  fi
  echo "ensure-postgres: starting PostgreSQL on 127.0.0.1:$port (log: $log)" >&2
  # setsid: the server must outlive this script and whatever called it; 9>&-: it must not
  # hold the lock, or the next caller waits for ever.
  as_owner setsid "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 \
    -o "-p $port -k $run -c listen_addresses=127.0.0.1 ${SPEED_PG_OPTIONS:-}" start >/dev/null 9>&- || {
    echo "ensure-postgres: PostgreSQL did not start; see $log:" >&2; tail -n 20 "$log" >&2; exit 1; }
fi

# The role (with this password, allowed to create the tests' databases) and its database. The
# password goes in on standard input: a command line is anyone's to read.
{ echo "\\set password $password"; cat <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'user', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
} | as_owner "$bin/psql" -h "$run" -p "$port" -U "$superuser" -d postgres -X -q -v ON_ERROR_STOP=1 \
  -v user="$user" -v db="$db" >/dev/null

logs_in || { echo "ensure-postgres: PostgreSQL runs but $user cannot log in at $url" >&2; exit 1; }
echo "$url"
