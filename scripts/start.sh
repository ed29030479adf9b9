#!/usr/bin/env bash
# Builds CoreMQ (release) and starts a name server and a broker in the background, as the
# seed's quickstart does (`mqnamesrv`, `mqbroker -n localhost:9876`). Store: ~/store.
# Logs: ~/logs/rocketmqlogs/{namesrv,broker}.log. Stop with scripts/stop.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --locked
BIN="$PWD/target/release"
LOGS="${COREMQ_LOG_DIR:-$HOME/logs/rocketmqlogs}"
mkdir -p "$LOGS"

wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1; see $2" >&2
  return 1
}

nohup "$BIN/mqnamesrv" --log-dir "$LOGS" >"$LOGS/namesrv.out" 2>&1 &
wait_port 9876 "$LOGS/namesrv.out"
nohup "$BIN/mqbroker" -n localhost:9876 -p brokerIP1=127.0.0.1 --log-dir "$LOGS" \
  >"$LOGS/broker.out" 2>&1 &
wait_port 10911 "$LOGS/broker.out"

echo "name server: 127.0.0.1:9876   log: $LOGS/namesrv.log"
echo "broker:      127.0.0.1:10911  log: $LOGS/broker.log   store: $HOME/store"
echo "stop with:   scripts/stop.sh   (target/release/mqshutdown broker; ... namesrv)"
