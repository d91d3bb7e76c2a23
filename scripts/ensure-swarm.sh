#!/usr/bin/env bash
# A two-node Docker Swarm and an image registry on this one machine, for runner.backend: swarm.
# Usage: ensure-swarm.sh [up|down|status]   (up: idempotent, safe to run several at once)
#
# The machine's own engine runs with --live-restore, which swarm mode refuses: the manager is a
# dockerd of its own (own data root, exec root, socket, bridge) on the host's network; the worker
# is another dockerd in a network namespace, joined over a veth pair. The registry is Debian's
# docker-registry with a self-signed certificate that every engine trusts through certs.d.
# Prints the settings SPEED needs (manager URL, registry, callback host) on stdout.
set -euo pipefail

RUN=/run/speed-swarm
STATE=/var/lib/speed-swarm
NETNS=speed-swarm-w1
HOST_IF=speedsw-h        # the host's end of the veth pair
NODE_IF=speedsw-w1       # the worker's end, inside the namespace
HOST_IP=10.231.0.1       # manager advertise address, registry address, callback host
NODE_IP=10.231.0.2
MANAGER_BRIDGE=speedsw-br0
MANAGER_BRIDGE_IP=10.232.0.1/24
MANAGER_GATEWAY_SUBNET=10.233.0.0/24
REGISTRY="$HOST_IP:5443"
# Deployments' network: a bridge on each node with inter-container traffic off (one deployment
# must not reach another's container), made swarm-wide from a config of each node's own.
NETWORK=speed-deployments
MANAGER="unix://$RUN/manager.sock"
WORKER="unix://$RUN/worker.sock"

manager() { docker -H "$MANAGER" "$@"; }
worker() { docker -H "$WORKER" "$@"; }
say() { echo "ensure-swarm: $*" >&2; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until the command succeeds
  local seconds=$1 what=$2; shift 2
  for _ in $(seq 1 $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  say "$what did not come up within $seconds s"
  return 1
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

links_up() {
  ip netns list | grep -qw "$NETNS" || ip netns add "$NETNS"
  if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    ip link add "$HOST_IF" type veth peer name "$NODE_IF"
    ip link set "$NODE_IF" netns "$NETNS"
    ip addr add "$HOST_IP/24" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    ip netns exec "$NETNS" ip addr add "$NODE_IP/24" dev "$NODE_IF"
    ip netns exec "$NETNS" ip link set "$NODE_IF" up
    ip netns exec "$NETNS" ip link set lo up
    ip netns exec "$NETNS" ip route add default via "$HOST_IP"
  fi
  # The manager's default bridge, made here: dockerd would name its own docker0, which the
  # machine's engine already has.
  if ! ip link show "$MANAGER_BRIDGE" >/dev/null 2>&1; then
    ip link add "$MANAGER_BRIDGE" type bridge
    ip addr add "$MANAGER_BRIDGE_IP" dev "$MANAGER_BRIDGE"
    ip link set "$MANAGER_BRIDGE" up
  fi
}

certificate_up() {
  local dir=$STATE/registry
  mkdir -p "$dir"
  if [ ! -s "$dir/cert.pem" ]; then
    # Self-signed, a CA of its own: engines trust it as the registry's ca.crt.
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=speed-swarm-registry" \
      -addext "subjectAltName=IP:$HOST_IP" -addext "basicConstraints=critical,CA:TRUE" \
      -keyout "$dir/key.pem.new" -out "$dir/cert.pem.new" 2>/dev/null
    mv "$dir/key.pem.new" "$dir/key.pem" && mv "$dir/cert.pem.new" "$dir/cert.pem"
  fi
  # One file system for all three engines (the namespace shares it): one certs.d entry.
  mkdir -p "/etc/docker/certs.d/$REGISTRY"
  cmp -s "$dir/cert.pem" "/etc/docker/certs.d/$REGISTRY/ca.crt" ||
    cp "$dir/cert.pem" "/etc/docker/certs.d/$REGISTRY/ca.crt"
}

registry_answers() { curl -sf --max-time 2 --cacert "$STATE/registry/cert.pem" "https://$REGISTRY/v2/"; }

registry_up() {
  registry_answers >/dev/null 2>&1 && return 0
  cat >"$STATE/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE/registry/data}
  delete: {enabled: true}
http:
  addr: $REGISTRY
  tls: {certificate: $STATE/registry/cert.pem, key: $STATE/registry/key.pem}
EOF
  say "starting the registry at $REGISTRY (log: $RUN/registry.log)"
  setsid nohup docker-registry serve "$STATE/registry/config.yml" >>"$RUN/registry.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/registry.pid"
  wait_for 30 "the registry" registry_answers
}

engine_up() {  # engine_up NAME [nsenter args...]: a dockerd of the swarm, started if it does not answer
  local name=$1; shift
  docker -H "unix://$RUN/$name.sock" info >/dev/null 2>&1 && return 0
  # Alive but not answering: shutting down, or hung. It must end first: a new one refuses to
  # start beside its pid file.
  stop_pid "$RUN/$name.pid"
  rm -f "$RUN/$name.pid"
  local flags=(--data-root "$STATE/$name" --exec-root "$RUN/$name-exec"
               -H "unix://$RUN/$name.sock" --pidfile "$RUN/$name.pid"
               --cgroup-parent "/speed-swarm-$name" --log-level warn)
  if [ "$name" = manager ]; then
    # On the host's network: the machine's engine owns the host's iptables chains (and flushes
    # them when it restarts), so this one keeps out of them; published ports go through
    # docker-proxy, which needs none. No --default-address-pool here: with one, and without
    # live-restore (which swarm mode refuses), dockerd deletes the interface named docker0 each
    # time it starts again, and on the host's network that is the machine's engine's bridge
    # (moby daemon_unix.go, removeDefaultBridgeInterface). swarm_up gives docker_gwbridge its
    # subnet instead.
    flags+=(--bridge "$MANAGER_BRIDGE" --iptables=false --ip-masq=false)
  else
    # In its own namespace, with iptables of its own: NAT for its containers' way out.
    flags+=(--default-address-pool base=10.234.0.0/16,size=24 --bip 10.235.0.1/24)
  fi
  say "starting the swarm's $name engine (log: $RUN/$name.log)"
  setsid nohup "$@" dockerd "${flags[@]}" >>"$RUN/$name.log" 2>&1 </dev/null 9>&- &
  wait_for 60 "the $name engine" docker -H "unix://$RUN/$name.sock" info
}

swarm_state() { docker -H "$1" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null; }

swarm_up() {
  if [ "$(swarm_state "$MANAGER")" != active ]; then
    # The manager's gateway bridge, before the swarm makes one from Docker's default pools,
    # which the machine's engine draws its networks from too.
    manager network inspect docker_gwbridge >/dev/null 2>&1 ||
      manager network create --subnet "$MANAGER_GATEWAY_SUBNET" \
        --opt com.docker.network.bridge.name=docker_gwbridge \
        --opt com.docker.network.bridge.enable_icc=false docker_gwbridge >/dev/null
    say "making the swarm (manager at $HOST_IP:2377)"
    manager swarm init --advertise-addr "$HOST_IP" --listen-addr "$HOST_IP:2377" >/dev/null
  fi
  if [ "$(swarm_state "$WORKER")" != active ]; then
    # A worker that left a swarm made anew (the manager's state was reset) must leave first.
    worker swarm leave --force >/dev/null 2>&1 || true
    say "joining the worker ($NODE_IP)"
    worker swarm join --token "$(manager swarm join-token -q worker)" \
      --advertise-addr "$NODE_IP" --listen-addr "$NODE_IP:2377" "$HOST_IP:2377" >/dev/null
  fi
  # Nodes of one machine share a hostname: tests place tasks by this label instead.
  manager node update --label-add speed.node=manager "$(manager info --format '{{.Swarm.NodeID}}')" >/dev/null
  manager node update --label-add speed.node=worker "$(worker info --format '{{.Swarm.NodeID}}')" >/dev/null
  # Nodes of a worker gone for good (a data root wiped) stay listed as down: remove them.
  for node in $(manager node ls --filter role=worker --format '{{.ID}} {{.Status}}' | awk '$2=="Down"{print $1}'); do
    manager node rm --force "$node" >/dev/null 2>&1 || true
  done
  wait_for 60 "both nodes ready" nodes_ready
}

network_up() {  # after the swarm: the swarm-scoped network needs each node's config first
  local engine subnet=1
  for engine in "$MANAGER" "$WORKER"; do
    docker -H "$engine" network inspect "$NETWORK-config" >/dev/null 2>&1 ||
      docker -H "$engine" network create --config-only --subnet "10.236.$subnet.0/24" \
        --opt com.docker.network.bridge.enable_icc=false \
        --opt com.docker.network.bridge.name=speedsw-deploy "$NETWORK-config" >/dev/null
    subnet=$((subnet + 1))
  done
  manager network inspect "$NETWORK" >/dev/null 2>&1 ||
    manager network create --driver bridge --scope swarm --config-from "$NETWORK-config" \
      "$NETWORK" >/dev/null
}

nodes_ready() {
  [ "$(manager node ls --format '{{.Status}} {{.Availability}}' | grep -c '^Ready Active$')" -ge 2 ]
}

healthy() {
  registry_answers >/dev/null 2>&1 && [ "$(swarm_state "$MANAGER")" = active ] &&
    [ "$(swarm_state "$WORKER")" = active ] && nodes_ready &&
    manager network inspect "$NETWORK" >/dev/null 2>&1
}

print_settings() {
  echo "swarm_host=$MANAGER"
  echo "registry=$REGISTRY"
  echo "callback_host=$HOST_IP"
  echo "network=$NETWORK"
  echo "worker_host=$WORKER"
  echo "manager_node=$(manager info --format '{{.Swarm.NodeID}}')"
  echo "worker_node=$(worker info --format '{{.Swarm.NodeID}}')"
}

up() {
  if ! healthy; then
    command -v docker-registry >/dev/null || "$(dirname "$0")/ensure-packages.sh" docker-registry:docker-registry
    command -v dockerd >/dev/null || "$(dirname "$0")/ensure-packages.sh" dockerd:docker.io
    links_up
    certificate_up
    registry_up
    engine_up manager
    engine_up worker nsenter --net="/var/run/netns/$NETNS"
    swarm_up
    network_up
  fi
  print_settings
}

stop_pid() {  # stop_pid FILE: end the process this script started, and wait for it
  alive "$1" || return 0
  local pid; pid=$(cat "$1")
  kill "$pid"
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

down() {
  worker swarm leave --force >/dev/null 2>&1 || true
  manager swarm leave --force >/dev/null 2>&1 || true
  stop_pid "$RUN/worker.pid"
  stop_pid "$RUN/manager.pid"
  stop_pid "$RUN/registry.pid"
  ip link del "$HOST_IF" 2>/dev/null || true
  ip link del "$MANAGER_BRIDGE" 2>/dev/null || true
  ip netns del "$NETNS" 2>/dev/null || true
  say "down (data kept in $STATE; remove it for a fresh start)"
}

[ "$(id -u)" = 0 ] || { say "must run as root (it starts engines and makes network namespaces)"; exit 1; }
mkdir -p "$RUN" "$STATE"
# One at a time: test workers of one session ask for the swarm at once.
exec 9>"$RUN/lock"
flock 9
case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) healthy && print_settings ;;
  *) say "usage: $0 [up|down|status]"; exit 2 ;;
esac
