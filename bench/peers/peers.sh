#!/usr/bin/env bash
# The peer servers signalcast is measured against, on loopback only.
#
#   peers.sh install            apt-get (nats-server, nginx + nchan) and npm ci (ws)
#   peers.sh start PEER|all     start in the background; waits until the port accepts
#   peers.sh stop PEER|all      TERM only the pids this script started (KILL after 10 s)
#   peers.sh status
#
# PEER: nats (ws://127.0.0.1:8081, publish tcp 4222), nchan (ws://127.0.0.1:8082/sub/CH,
# publish POST /pub/CH), node-ws (ws://127.0.0.1:8084/CH, publish tcp 9084 lines).
# Logs and pid files go to bench/peers/<peer>/run/. Facts and caveats:
# docs/PERFORMANCE.md, "The peers on these machines".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PEERS=(nats nchan node-ws)

port_of() { case "$1" in nats) echo 8081;; nchan) echo 8082;; node-ws) echo 8084;; esac; }

installed() {
  case "$1" in
    nats) command -v nats-server >/dev/null ;;
    nchan) command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] ;;
    node-ws) command -v node >/dev/null && [ -d "$here/node-ws/node_modules/ws" ] ;;
  esac
}

install() {
  if ! installed nats || ! installed nchan; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        nats-server nginx-light libnginx-mod-nchan >/dev/null
    else
      echo "peers.sh: installing nats-server and nginx needs root" >&2
    fi
  fi
  if command -v npm >/dev/null && ! installed node-ws; then
    (cd "$here/node-ws" && npm ci --silent --no-audit --no-fund)
  fi
}

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "peers.sh: port $1 did not open" >&2
  return 1
}

start() {
  local p=$1 run="$here/$1/run"
  installed "$p" || { echo "peers.sh: $p is not installed (peers.sh install)" >&2; return 1; }
  mkdir -p "$run"
  if [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null; then return 0; fi
  case "$p" in
    nats) nohup nats-server -c "$here/nats/nats.conf" >"$run/log" 2>&1 & echo $! >"$run/pid" ;;
    nchan)
      mkdir -p "$run/tmp"
      nohup nginx -p "$here/nchan/" -c nginx.conf >"$run/log" 2>&1 & echo $! >"$run/pid" ;;
    node-ws) nohup node "$here/node-ws/server.js" >"$run/log" 2>&1 & echo $! >"$run/pid" ;;
  esac
  wait_port "$(port_of "$p")"
}

stop() {
  local run="$here/$1/run"
  [ -f "$run/pid" ] || return 0
  local pid; pid=$(cat "$run/pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$run/pid"
}

each() {
  local verb=$1 target=${2:-all}
  if [ "$target" = all ]; then for p in "${PEERS[@]}"; do "$verb" "$p" || true; done; else "$verb" "$target"; fi
}

case "${1:-}" in
  install) install ;;
  start) each start "${2:-all}" ;;
  stop) each stop "${2:-all}" ;;
  status)
    for p in "${PEERS[@]}"; do
      if installed "$p"; then s=installed; else s=missing; fi
      if [ -f "$here/$p/run/pid" ] && kill -0 "$(cat "$here/$p/run/pid")" 2>/dev/null; then s="$s, running"; fi
      echo "$p: $s"
    done ;;
  *) echo "usage: peers.sh install|start|stop|status [peer|all]" >&2; exit 2 ;;
esac
