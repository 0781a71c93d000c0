#!/usr/bin/env bash
# A broker cluster of our own on loopback (RabbitMQ, or NATS with JetStream), for
# high-availability tests and `herald chaos`.
#
#   scripts/cluster.sh up            start 3 nodes, join them; last line: the URL list
#   scripts/cluster.sh down          kill every node of the cluster and delete its directory
#   scripts/cluster.sh urls          the comma-separated URL list
#   scripts/cluster.sh status        each node: running or down, its pid
#   scripts/cluster.sh kill N        kill -9 node N (1-based) by its pid
#   scripts/cluster.sh start N       start node N again (it rejoins the cluster from its data)
#   scripts/cluster.sh kill-random   kill -9 one running node, wait HERALD_CLUSTER_DOWNTIME s, start it
#   scripts/cluster.sh kill-leader Q kill -9 the node leading queue (or stream) Q, wait, start it
#   scripts/cluster.sh restart-all   kill -9 every node, start them all again
#   scripts/cluster.sh leader Q      the number of the node leading quorum queue (or stream) Q
#   scripts/cluster.sh ctl N ARGS..  rabbitmqctl against node N (with its own cookie)
#
# Environment (defaults in brackets):
#   HERALD_CLUSTER_BROKER    rabbitmq or nats [rabbitmq]
#   HERALD_CLUSTER_PORT      client port of node 1; node N listens on PORT+N-1 [5681 for
#                            RabbitMQ, whose Erlang distribution ports are those + 20000;
#                            14240 for NATS, whose route ports are +10 and monitoring ports +20]
#   HERALD_CLUSTER_NODES     how many nodes `up` starts [3]; 1 is a single node of our own
#   HERALD_CLUSTER_DIR       node data, logs and config [/tmp/herald-cluster-<PORT>]
#   HERALD_CLUSTER_DOWNTIME  seconds kill-random and kill-leader leave a node down [1]
#
# Each node has its own name, ports, data and log directories and config file; the machine's
# brokers (RabbitMQ on 5672, node rabbit@localhost with the default cookie; NATS on 4222) and
# their /etc files are never read or touched. RabbitMQ nodes run as the `rabbitmq` user (what
# rabbitmq-server drops to; their directories belong to it) with the cluster's own Erlang cookie
# in its own HOME. A node is only ever killed by the pid it wrote, after checking that this pid
# still runs that very node.
set -euo pipefail

BROKER=${HERALD_CLUSTER_BROKER:-rabbitmq}
case "$BROKER" in
  rabbitmq) DEFAULT_PORT=5681 ;;
  nats) DEFAULT_PORT=14240 ;;
  *) echo "cluster.sh: HERALD_CLUSTER_BROKER must be rabbitmq or nats, not $BROKER" >&2; exit 2 ;;
esac
PORT=${HERALD_CLUSTER_PORT:-$DEFAULT_PORT}
NODES=${HERALD_CLUSTER_NODES:-3}
DIR=${HERALD_CLUSTER_DIR:-/tmp/herald-cluster-$PORT}
DOWNTIME=${HERALD_CLUSTER_DOWNTIME:-1}
RABBIT_BIN=${HERALD_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
# Debian's nats-server (what the machine's shared NATS runs) unless told otherwise.
if [ -x /usr/sbin/nats-server ]; then DEFAULT_NATS_SERVER=/usr/sbin/nats-server; else DEFAULT_NATS_SERVER=$(command -v nats-server || true); fi
NATS_SERVER=${HERALD_NATS_SERVER:-$DEFAULT_NATS_SERVER}

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

case "$BROKER:$PORT" in
  rabbitmq:5672 | rabbitmq:25672 | nats:4222 | nats:6222 | nats:8222)
    die "port $PORT is the shared broker's; choose another HERALD_CLUSTER_PORT" ;;
esac
if [ "$BROKER" = rabbitmq ]; then
  [ -x "$RABBIT_BIN/rabbitmq-server" ] || die "no $RABBIT_BIN/rabbitmq-server; install rabbitmq-server (apt-get install rabbitmq-server) or set HERALD_RABBITMQ_BIN"
else
  [ -n "$NATS_SERVER" ] && [ -x "$NATS_SERVER" ] || die "no nats-server; install it (apt-get install nats-server) or set HERALD_NATS_SERVER"
  [ "$NODES" -le 10 ] || die "at most 10 NATS nodes (route ports are +10, monitoring ports +20)"
fi

port_of() { echo $((PORT + $1 - 1)); }
node_dir() { echo "$DIR/n$1"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The ports a node uses besides its client port (for the "in use" check).
other_ports_of() {
  case "$BROKER" in
    rabbitmq) echo $(($(port_of "$1") + 20000)) ;;
    nats) echo $(($(port_of "$1") + 10)) $(($(port_of "$1") + 20)) ;;
  esac
}
name_of() {
  case "$BROKER" in
    rabbitmq) echo "herald$(port_of "$1")@localhost" ;;
    nats) echo "herald$(port_of "$1")" ;;
  esac
}

# The number of nodes of an existing cluster (its directories), else HERALD_CLUSTER_NODES.
node_count() {
  local n=0
  while [ -d "$(node_dir $((n + 1)))" ]; do n=$((n + 1)); done
  if [ "$n" -gt 0 ]; then echo "$n"; else echo "$NODES"; fi
}

# RabbitMQ runs as the rabbitmq user when we are root (as rabbitmq-server itself would).
if [ "$BROKER" = rabbitmq ] && [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
  OWNER=rabbitmq
  AS_OWNER="setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups"
else
  OWNER=$(id -un)
  AS_OWNER=""
fi

# A clean environment for one RabbitMQ node: its env file, its HOME (with the cluster's
# cookie), nothing inherited from the caller's RABBITMQ_* or /etc/rabbitmq/rabbitmq-env.conf.
rabbit_env() {
  local d
  d=$(node_dir "$1")
  echo env -i "HOME=$DIR/home" "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "LANG=C.UTF-8" "LC_ALL=C.UTF-8" "RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf"
}

# What the node's command line carries that no other process's does (pids get reused).
identity_of() {
  case "$BROKER" in
    rabbitmq) echo "-herald_node $(name_of "$1") " ;; # see write_rabbit_files
    nats) echo "$(node_dir "$1")/nats.conf" ;;
  esac
}

pid_of() {
  local f pid
  f="$(node_dir "$1")/pid"
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [ -n "$pid" ] || return 1
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$(identity_of "$1")" || return 1
  echo "$pid"
}

is_running() { pid_of "$1" >/dev/null 2>&1; }

write_rabbit_files() {
  local i=$1 n=$2 d
  d=$(node_dir "$i")
  mkdir -p "$d/data" "$d/log"
  {
    echo "listeners.tcp.local = 127.0.0.1:$(port_of "$i")"
    echo "cluster_formation.peer_discovery_backend = classic_config"
    for j in $(seq "$n"); do echo "cluster_formation.classic_config.nodes.$j = $(name_of "$j")"; done
    # Several brokers share this machine: keep each one's alarms where they only fire for real.
    echo "vm_memory_high_watermark.relative = 0.2"
    echo "disk_free_limit.absolute = 50MB"
    echo "log.console = false"
    echo "log.file.level = info"
  } >"$d/rabbitmq.conf"
  echo "[]." >"$d/enabled_plugins"
  cat >"$d/rabbitmq-env.conf" <<EOF
NODENAME=$(name_of "$i")
NODE_PORT=$(port_of "$i")
DIST_PORT=$(($(port_of "$i") + 20000))
CONFIG_FILE=$d/rabbitmq.conf
ADVANCED_CONFIG_FILE=$d/advanced.config
ENABLED_PLUGINS_FILE=$d/enabled_plugins
MNESIA_BASE=$d/data
LOG_BASE=$d/log
PID_FILE=$d/pid
SERVER_ADDITIONAL_ERL_ARGS="-herald_node $(name_of "$i")"
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
}

write_nats_files() {
  local i=$1 n=$2 d p
  d=$(node_dir "$i")
  p=$(port_of "$i")
  mkdir -p "$d/data" "$d/log"
  {
    echo "server_name: \"$(name_of "$i")\""
    echo "listen: \"127.0.0.1:$p\""
    echo "http: \"127.0.0.1:$((p + 20))\""
    echo "jetstream { store_dir: \"$d/data\", max_memory_store: 268435456, max_file_store: 4294967296 }"
    if [ "$n" -gt 1 ]; then
      echo "cluster {"
      echo "  name: \"herald$PORT\""
      echo "  listen: \"127.0.0.1:$((p + 10))\""
      echo "  routes: ["
      for j in $(seq "$n"); do echo "    \"nats-route://127.0.0.1:$(($(port_of "$j") + 10))\""; done
      echo "  ]"
      echo "}"
    fi
  } >"$d/nats.conf"
}

make_cluster_dir() {
  local n=$1
  [ ! -e "$DIR" ] || die "$DIR exists: the cluster is up already (scripts/cluster.sh down first)"
  mkdir -p "$DIR"
  if [ "$BROKER" = rabbitmq ]; then
    mkdir -p "$DIR/home"
    # The cluster's own cookie in its own HOME: the default cookie (/var/lib/rabbitmq) is
    # never read or written.
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$DIR/home/.erlang.cookie"
    chmod 400 "$DIR/home/.erlang.cookie"
    for i in $(seq "$n"); do write_rabbit_files "$i" "$n"; done
  else
    for i in $(seq "$n"); do write_nats_files "$i" "$n"; done
  fi
  chown -R "$OWNER" "$DIR"
}

start_node() {
  local i=$1 d
  d=$(node_dir "$i")
  [ -d "$d" ] || die "node $i does not exist (scripts/cluster.sh up first)"
  if is_running "$i"; then return 0; fi
  if port_open "$(port_of "$i")"; then die "port $(port_of "$i") is taken by another process"; fi
  rm -f "$d/pid"
  # setsid: the node outlives this script and the shell of whoever called it.
  case "$BROKER" in
    rabbitmq)
      # shellcheck disable=SC2046
      setsid $(rabbit_env "$i") $AS_OWNER "$RABBIT_BIN/rabbitmq-server" >>"$d/log/console.log" 2>&1 </dev/null &
      ;;
    nats)
      setsid "$NATS_SERVER" -c "$d/nats.conf" -P "$d/pid" -l "$d/log/nats.log" >>"$d/log/console.log" 2>&1 </dev/null &
      ;;
  esac
}

# Ready: RabbitMQ once its client port is open (it opens last); NATS once its monitoring
# endpoint says JetStream is healthy.
is_ready() {
  port_open "$(port_of "$1")" && is_running "$1" || return 1
  if [ "$BROKER" = nats ]; then
    curl -sf "http://127.0.0.1:$(($(port_of "$1") + 20))/healthz" >/dev/null 2>&1 || return 1
  fi
}

wait_node() {
  local i=$1 tries=${2:-180}
  for _ in $(seq "$tries"); do
    if is_ready "$i"; then return 0; fi
    sleep 0.5
  done
  die "node $i ($(name_of "$i")) did not become ready on port $(port_of "$i"); see $(node_dir "$i")/log"
}

kill_node() {
  local i=$1 pid
  if ! pid=$(pid_of "$i"); then
    log "node $i is not running"
    return 0
  fi
  kill -9 "$pid"
  for _ in $(seq 100); do
    [ -e "/proc/$pid" ] || break
    sleep 0.05
  done
  rm -f "$(node_dir "$i")/pid"
  log "killed node $i ($(name_of "$i"), pid $pid)"
}

ctl() {
  local i=$1
  shift
  [ "$BROKER" = rabbitmq ] || die "ctl is for RabbitMQ; a NATS node's state is at http://127.0.0.1:$(($(port_of "$i") + 20))/"
  # shellcheck disable=SC2046
  $(rabbit_env "$i") "$RABBIT_BIN/rabbitmqctl" -n "$(name_of "$i")" "$@"
}

urls() {
  local n out="" url
  n=$(node_count)
  for i in $(seq "$n"); do
    case "$BROKER" in
      rabbitmq) url="amqp://guest:guest@127.0.0.1:$(port_of "$i")/%2f" ;;
      nats) url="nats://127.0.0.1:$(port_of "$i")" ;;
    esac
    out="$out${out:+,}$url"
  done
  echo "$out"
}

# The first running node, for cluster-wide questions.
any_running() {
  for i in $(seq "$(node_count)"); do
    if is_running "$i"; then echo "$i"; return 0; fi
  done
  die "no node of the cluster is running"
}

# The name of the node leading quorum queue or stream $1, as the cluster reports it.
leader_name() {
  case "$BROKER" in
    rabbitmq)
      ctl "$(any_running)" -q list_queues name leader --no-table-headers 2>/dev/null |
        awk -v q="$1" '$1 == q { print $2 }'
      ;;
    nats)
      curl -sf "http://127.0.0.1:$(($(port_of "$(any_running)") + 20))/jsz?accounts=true&streams=true" |
        python3 -c '
import json, sys
want = sys.argv[1]
for account in json.load(sys.stdin).get("account_details", []):
    for stream in account.get("stream_detail", []):
        if stream.get("name") == want and stream.get("cluster", {}).get("leader"):
            print(stream["cluster"]["leader"])
' "$1"
      ;;
  esac
}

# Kill node $1 with -9, leave it down for DOWNTIME seconds, start it, wait until it is ready.
bounce() {
  local victim=$1 what=$2 started
  started=$(date +%s%N)
  kill_node "$victim"
  sleep "$DOWNTIME"
  start_node "$victim"
  wait_node "$victim"
  log "node $victim$what back after $(( ($(date +%s%N) - started) / 1000000 )) ms"
}

cmd=${1:-}
shift || true
case "$cmd" in
  up)
    n=$NODES
    [ "$n" -ge 1 ] || die "HERALD_CLUSTER_NODES must be at least 1"
    for i in $(seq "$n"); do
      for p in $(port_of "$i") $(other_ports_of "$i"); do
        if port_open "$p"; then die "port $p is in use (a cluster already up? scripts/cluster.sh down)"; fi
      done
    done
    make_cluster_dir "$n"
    if [ "$BROKER" = rabbitmq ]; then
      # Node 1 first; the others find it through classic peer discovery and join it as they boot.
      start_node 1
      wait_node 1
      for i in $(seq 2 "$n"); do start_node "$i"; done
      for i in $(seq 2 "$n"); do wait_node "$i"; done
      if [ "$n" -gt 1 ]; then
        running=$(ctl 1 -q cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]' || true)
        for i in $(seq "$n"); do
          echo "$running" | grep -q "$(name_of "$i")" || die "node $i did not join the cluster: $running"
        done
      fi
    else
      # All at once: JetStream elects its meta leader once a majority of the routes is up.
      for i in $(seq "$n"); do start_node "$i"; done
      for i in $(seq "$n"); do wait_node "$i"; done
    fi
    log "$n $BROKER node(s) up in $DIR"
    urls
    ;;
  down)
    if [ -d "$DIR" ]; then
      for i in $(seq "$(node_count)"); do kill_node "$i" 2>/dev/null || true; done
      rm -rf "$DIR"
    fi
    ;;
  urls) urls ;;
  status)
    for i in $(seq "$(node_count)"); do
      if pid=$(pid_of "$i"); then
        echo "node $i $(name_of "$i") port $(port_of "$i") running pid $pid"
      else
        echo "node $i $(name_of "$i") port $(port_of "$i") down"
      fi
    done
    ;;
  kill) kill_node "${1:?usage: cluster.sh kill N}" ;;
  start)
    start_node "${1:?usage: cluster.sh start N}"
    wait_node "$1"
    ;;
  kill-leader)
    queue=${1:?usage: cluster.sh kill-leader QUEUE}
    bounce "$(bash "$0" leader "$queue")" " (the leader of $queue)"
    ;;
  kill-random)
    running=()
    for i in $(seq "$(node_count)"); do
      if is_running "$i"; then running+=("$i"); fi
    done
    [ "${#running[@]}" -gt 0 ] || die "no node of the cluster is running"
    bounce "${running[$((RANDOM % ${#running[@]}))]}" ""
    ;;
  restart-all)
    n=$(node_count)
    for i in $(seq "$n"); do kill_node "$i"; done
    sleep "$DOWNTIME"
    # All at once: each node waits at boot for the others it last saw running.
    for i in $(seq "$n"); do start_node "$i"; done
    for i in $(seq "$n"); do wait_node "$i" 360; done
    log "all $n node(s) back"
    ;;
  leader)
    queue=${1:?usage: cluster.sh leader QUEUE}
    leader=$(leader_name "$queue")
    [ -n "$leader" ] || die "no quorum queue or stream $queue (or no leader now)"
    for i in $(seq "$(node_count)"); do
      if [ "$(name_of "$i")" = "$leader" ]; then echo "$i"; exit 0; fi
    done
    die "the leader $leader is not a node of this cluster"
    ;;
  ctl)
    i=${1:?usage: cluster.sh ctl N ARGS...}
    shift
    ctl "$i" "$@"
    ;;
  *)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || die "unknown command: $cmd"
    exit 2
    ;;
esac
