#!/usr/bin/env bash
# The peer servers signalcast is measured against, on loopback only.
#
#   peers.sh install            apt-get (nats-server, nginx + nchan) and npm ci (ws)
#   peers.sh start PEER|all     start in the background; waits until the port accepts
#   peers.sh stop PEER|all      TERM only the pids this script started (KILL after 10 s)
#   peers.sh status
#   PEERS_TLS_DIR=DIR peers.sh start PEER   the same over TLS (DIR/cert.pem, DIR/key.pem):
#                               nats wss://…:8081, nchan wss://…:8092, node-ws wss://…:8084
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
  # Running already: fine if it serves the same way (plain, or TLS from the same
  # folder); otherwise restarted, so a --tls run never meets a plain server.
  local mode="plain:${PEERS_TLS_DIR:-}"
  if [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null; then
    if [ "$(cat "$run/mode" 2>/dev/null)" = "$mode" ]; then return 0; fi
    stop "$p"
  fi
  echo "$mode" >"$run/mode"
  # PEERS_TLS_DIR (cert.pem, key.pem): serve WSS. nats on its port, nginx on 8092
  # beside the plain 8082 (its publisher stays plain HTTP), node-ws on its port.
  local tls="${PEERS_TLS_DIR:-}"
  case "$p" in
    nats)
      local conf="$here/nats/nats.conf"
      if [ -n "$tls" ]; then
        conf="$run/nats-tls.conf"
        sed "s|no_tls: true|tls { cert_file: \"$tls/cert.pem\", key_file: \"$tls/key.pem\" }|" "$here/nats/nats.conf" >"$conf"
      fi
      nohup nats-server -c "$conf" >"$run/log" 2>&1 & echo $! >"$run/pid" ;;
    nchan)
      mkdir -p "$run/tmp"
      local conf=nginx.conf
      if [ -n "$tls" ]; then
        conf=run/nginx-tls.conf
        sed "s|listen 127.0.0.1:8082;|listen 127.0.0.1:8082;\n    listen 127.0.0.1:8092 ssl;\n    ssl_certificate $tls/cert.pem;\n    ssl_certificate_key $tls/key.pem;\n    ssl_protocols TLSv1.3;\n    ssl_session_tickets off;|" \
          "$here/nchan/nginx.conf" >"$here/nchan/$conf"
      fi
      nohup nginx -p "$here/nchan/" -c "$conf" >"$run/log" 2>&1 & echo $! >"$run/pid" ;;
    node-ws)
      TLS_CERT="${tls:+$tls/cert.pem}" TLS_KEY="${tls:+$tls/key.pem}" \
        nohup node "$here/node-ws/server.js" >"$run/log" 2>&1 & echo $! >"$run/pid" ;;
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
