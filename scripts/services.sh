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

ensure_python_pika() {
  if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-pip
  fi
  if ! python3 -c 'import pika' >/dev/null 2>&1; then
    echo "services: installing pika (Python AMQP client, for the interop test)" >&2
    python3 -m pip install --quiet pika || apt_install python3-pika
  fi
}

ensure_rabbitmq
ensure_python_pika
