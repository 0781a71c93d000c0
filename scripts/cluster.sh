#!/usr/bin/env bash
# A RabbitMQ cluster of our own on loopback, for high-availability tests and `herald chaos`.
#
#   scripts/cluster.sh up            start 3 nodes (5681-5683), join them; last line: the URL list
#   scripts/cluster.sh down          kill every node of the cluster and delete its directory
#   scripts/cluster.sh urls          the comma-separated amqp:// URL list
#   scripts/cluster.sh status        each node: running or down, its pid
#   scripts/cluster.sh kill N        kill -9 node N (1-based) by its pid
#   scripts/cluster.sh start N       start node N again (it rejoins the cluster from its data)
#   scripts/cluster.sh kill-random   kill -9 one running node, wait HERALD_CLUSTER_DOWNTIME s, start it
#   scripts/cluster.sh kill-leader Q kill -9 the node leading quorum queue Q, wait, start it
#   scripts/cluster.sh restart-all   kill -9 every node, start them all again
#   scripts/cluster.sh leader QUEUE  the number of the node leading quorum queue QUEUE
#   scripts/cluster.sh ctl N ARGS..  rabbitmqctl against node N (with its own cookie)
#
# Environment (defaults in brackets):
#   HERALD_CLUSTER_PORT      AMQP port of node 1; node N listens on PORT+N-1 and uses +20000
#                            for Erlang distribution [5681]
#   HERALD_CLUSTER_NODES     how many nodes `up` starts [3]; 1 is a single node of our own
#   HERALD_CLUSTER_DIR       node data, logs, config and cookie [/tmp/herald-cluster-<PORT>]
#   HERALD_CLUSTER_DOWNTIME  seconds kill-random leaves a node down [1]
#   HERALD_CLUSTER_BROKER    which broker the nodes run [rabbitmq]
#
# Each node has its own name (herald<port>@localhost), data and log directories owned by the
# `rabbitmq` user (the user rabbitmq-server runs as), a config file with its own
# `listeners.tcp.local`, its own env file (the machine's /etc/rabbitmq files are never read) and
# the cluster's own Erlang cookie in its own HOME. Nodes are only ever stopped by the pid they
# wrote, after checking that pid still runs that node: the machine's shared broker (port 5672,
# node rabbit@localhost, the default cookie) is never touched.
set -euo pipefail

PORT=${HERALD_CLUSTER_PORT:-5681}
NODES=${HERALD_CLUSTER_NODES:-3}
DIR=${HERALD_CLUSTER_DIR:-/tmp/herald-cluster-$PORT}
DOWNTIME=${HERALD_CLUSTER_DOWNTIME:-1}
RABBIT_BIN=${HERALD_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
BROKER=${HERALD_CLUSTER_BROKER:-rabbitmq}

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

[ "$BROKER" = rabbitmq ] || die "HERALD_CLUSTER_BROKER=$BROKER: only rabbitmq is supported"
[ -x "$RABBIT_BIN/rabbitmq-server" ] || die "no $RABBIT_BIN/rabbitmq-server; install rabbitmq-server (apt-get install rabbitmq-server) or set HERALD_RABBITMQ_BIN"
case "$PORT" in 5672 | 25672) die "port $PORT is the shared broker's; choose another HERALD_CLUSTER_PORT" ;; esac

port_of() { echo $((PORT + $1 - 1)); }
name_of() { echo "herald$(port_of "$1")@localhost"; }
node_dir() { echo "$DIR/n$1"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The number of nodes of an existing cluster (its directories), else HERALD_CLUSTER_NODES.
node_count() {
  local n=0
  while [ -d "$(node_dir $((n + 1)))" ]; do n=$((n + 1)); done
  if [ "$n" -gt 0 ]; then echo "$n"; else echo "$NODES"; fi
}

# Run as the rabbitmq user when we are root (as rabbitmq-server itself would), else as we are.
if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
  OWNER=rabbitmq
  AS_OWNER="setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups"
else
  OWNER=$(id -un)
  AS_OWNER=""
fi

# A clean environment for one node: its env file, its HOME (with the cluster's cookie), nothing
# inherited from the caller's RABBITMQ_* or the machine's /etc/rabbitmq/rabbitmq-env.conf.
node_env() {
  local d
  d=$(node_dir "$1")
  echo env -i "HOME=$DIR/home" "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "LANG=C.UTF-8" "LC_ALL=C.UTF-8" "RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf"
}

pid_of() {
  local f
  f="$(node_dir "$1")/pid"
  [ -s "$f" ] || return 1
  local pid
  pid=$(tr -dc '0-9' <"$f")
  [ -n "$pid" ] || return 1
  # Only a live process that runs this very node counts (pids get reused): the node's command
  # line carries `-herald_node <name>` (see write_node_files).
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "-herald_node $(name_of "$1") " || return 1
  echo "$pid"
}

is_running() { pid_of "$1" >/dev/null 2>&1; }

write_node_files() {
  local i=$1 n=$2 d
  d=$(node_dir "$i")
  mkdir -p "$d/data" "$d/log"
  {
    echo "listeners.tcp.local = 127.0.0.1:$(port_of "$i")"
    echo "cluster_formation.peer_discovery_backend = classic_config"
    for j in $(seq "$n"); do echo "cluster_formation.classic_config.nodes.$j = $(name_of "$j")"; done
    # Four brokers share this machine: keep each one's alarms where they only fire for real.
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

make_cluster_dir() {
  local n=$1
  [ ! -e "$DIR" ] || die "$DIR exists: the cluster is up already (scripts/cluster.sh down first)"
  mkdir -p "$DIR/home"
  # The cluster's own cookie in its own HOME: the default cookie (/var/lib/rabbitmq) is never
  # read or written.
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$DIR/home/.erlang.cookie"
  chmod 400 "$DIR/home/.erlang.cookie"
  for i in $(seq "$n"); do write_node_files "$i" "$n"; done
  chown -R "$OWNER" "$DIR"
}

start_node() {
  local i=$1 d
  d=$(node_dir "$i")
  [ -d "$d" ] || die "node $i does not exist (scripts/cluster.sh up first)"
  if is_running "$i"; then return 0; fi
  port_open "$(port_of "$i")" && die "port $(port_of "$i") is taken by another process"
  rm -f "$d/pid"
  # setsid: the node outlives this script and the shell of whoever called it.
  # shellcheck disable=SC2046
  setsid $(node_env "$i") $AS_OWNER "$RABBIT_BIN/rabbitmq-server" >>"$d/log/console.log" 2>&1 </dev/null &
}

wait_node() {
  local i=$1 tries=${2:-180}
  for _ in $(seq "$tries"); do
    if port_open "$(port_of "$i")" && is_running "$i"; then return 0; fi
    sleep 0.5
  done
  die "node $i ($(name_of "$i")) did not open port $(port_of "$i"); see $(node_dir "$i")/log"
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
  # shellcheck disable=SC2046
  $(node_env "$i") "$RABBIT_BIN/rabbitmqctl" -n "$(name_of "$i")" "$@"
}

urls() {
  local n out=""
  n=$(node_count)
  for i in $(seq "$n"); do
    out="$out${out:+,}amqp://guest:guest@127.0.0.1:$(port_of "$i")/%2f"
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

cmd=${1:-}
shift || true
case "$cmd" in
  up)
    n=$NODES
    [ "$n" -ge 1 ] || die "HERALD_CLUSTER_NODES must be at least 1"
    for i in $(seq "$n"); do
      p=$(port_of "$i")
      if port_open "$p" || port_open $((p + 20000)); then
        die "port $p or $((p + 20000)) is in use (a cluster already up? scripts/cluster.sh down)"
      fi
    done
    make_cluster_dir "$n"
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
    log "$n node(s) up in $DIR"
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
    victim=$(bash "$0" leader "$queue")
    started=$(date +%s%N)
    kill_node "$victim"
    sleep "$DOWNTIME"
    start_node "$victim"
    wait_node "$victim"
    log "node $victim (the leader of $queue) back after $(( ($(date +%s%N) - started) / 1000000 )) ms"
    ;;
  kill-random)
    running=()
    for i in $(seq "$(node_count)"); do is_running "$i" && running+=("$i"); done
    [ "${#running[@]}" -gt 0 ] || die "no node of the cluster is running"
    victim=${running[$((RANDOM % ${#running[@]}))]}
    started=$(date +%s%N)
    kill_node "$victim"
    sleep "$DOWNTIME"
    start_node "$victim"
    wait_node "$victim"
    log "node $victim back after $(( ($(date +%s%N) - started) / 1000000 )) ms"
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
    leader=$(ctl "$(any_running)" -q list_queues name leader --no-table-headers 2>/dev/null |
      awk -v q="$queue" '$1 == q { print $2 }')
    [ -n "$leader" ] || die "no quorum queue $queue (or no leader now)"
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
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || die "unknown command: $cmd"
    exit 2
    ;;
esac
