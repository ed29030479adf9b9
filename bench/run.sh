#!/usr/bin/env bash
# The benchmark runner: builds release, measures the host's limits, starts a do-nothing
# responder (the client's ceiling) and an ASYNC_FLUSH and a SYNC_FLUSH broker (each with its
# name server), runs the matrix (128 B, 1 KiB, 4 KiB; 1 and 64 connections; pipelined;
# batches) against the three interleaved, then end-to-end latency, many topics and the
# trouble cases on the ASYNC_FLUSH broker, and writes a markdown report with the targets
# checked, to bench/results/run-<UTC time>.md (raw JSON lines beside it).
#
#   bench/run.sh [--secs 5] [--reps 1] [--dir target/bench-run] [--quick]
#                [--other NAMESRV --other-name NAME]   # the same matrix against another broker
#                [--shards N]                          # broker shards (default: cores - 1)
#                [--broker-prop KEY=VALUE ...]         # more broker properties
#
# The client runs on the broker's host, so by default the brokers get one shard fewer than
# the host has cores (at least one): a shard is a pinned thread that wants its core, and with
# a shard on every core the client's thread and the shards take turns on them (bench/README.md,
# session 11: 64 x 1 at 19.9 us of broker CPU per message with 2 shards, 11.5 with 1).
# `--shards 0` gives the broker's own default, one shard per core.
#
# Everything runs on 127.0.0.1. The machine is shared: use --reps 3 (the median run of each
# cell is kept) for figures worth quoting.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=5 REPS=1 DIR=target/bench-run QUICK=0 OTHER="" OTHER_NAME=other EXTRA=()
SHARDS=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) SECS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --other) OTHER=$2; shift 2 ;;
    --other-name) OTHER_NAME=$2; shift 2 ;;
    --shards) SHARDS=$2; shift 2 ;;
    --broker-prop) EXTRA+=("$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

cargo build --release --locked --bins >&2
BIN="$PWD/target/release"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results "$DIR"
# The stores under $DIR keep everything a run writes (no retention during the matrix): about
# 4 GB per repeat and second of --secs for the three sizes, 1 GB with --quick, plus ~8 GB for
# the rest (session 10: a --secs 5 --reps 3 run filled 42 GB). Running out of space midway
# loses the run's cells and leaves errors that look like the broker's.
PER_GB=4
[ "$QUICK" = 1 ] && PER_GB=1
NEED_GB=${BENCH_MIN_FREE_GB:-$((8 + REPS * SECS * PER_GB))}
FREE_GB=$(df -Pk "$DIR" | awk 'NR==2 {print int($4 / 1048576)}')
if [ "$FREE_GB" -lt "$NEED_GB" ]; then
  echo "bench/run.sh: $DIR has $FREE_GB GB free; a run needs about $NEED_GB GB" \
    "(BENCH_MIN_FREE_GB=N to override)" >&2
  exit 1
fi
OUT="$PWD/bench/results/run-$STAMP.jsonl"
MD="$PWD/bench/results/run-$STAMP.md"
: >"$OUT"
PIDS=()
# On any exit: SIGTERM everything started, then SIGKILL what is still there after 10 s, so a
# failed run never leaves a broker behind.
cleanup() {
  local p left
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    left=0
    for p in "${PIDS[@]:-}"; do kill -0 "$p" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && return 0
    sleep 0.1
  done
  for p in "${PIDS[@]:-}"; do
    kill -0 "$p" 2>/dev/null && echo "pid $p did not stop on SIGTERM: killed" >&2
    kill -9 "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

log() { echo "== $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; return 1
}
MQB="$BIN/mqbench"

NS_PORT=$(free_port)
"$BIN/mqnamesrv" --listen-port "$NS_PORT" --log-dir "$DIR/logs" >"$DIR/namesrv.out" 2>&1 &
PIDS+=($!)
wait_port "$NS_PORT"
NS="127.0.0.1:$NS_PORT"

BROKER_PID="" BROKER_PORT=""
# start_broker STORE_DIR key=value...   (a restart keeps the port: KEEP_PORT=1)
start_broker() {
  local store=$1; shift
  [ "${KEEP_PORT:-0}" = 1 ] || BROKER_PORT=$(free_port)
  local props=(-p brokerIP1=127.0.0.1 -p "listenPort=$BROKER_PORT" -p "storePathRootDir=$store")
  for kv in "shards=$SHARDS" "$@" "${EXTRA[@]}"; do props+=(-p "$kv"); done
  "$BIN/mqbroker" -n "${BROKER_NS:-$NS}" "${props[@]}" --log-dir "${BROKER_LOGS:-$DIR/logs}" \
    >>"$DIR/broker.out" 2>&1 &
  BROKER_PID=$!
  PIDS+=("$BROKER_PID")
  wait_port "$BROKER_PORT"
}
stop_broker() {  # clean stop (SIGTERM) of $1 (default: the last broker started) and wait
  local pid=${1:-$BROKER_PID}
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

log "host limits"
"$MQB" limits --dir "$DIR/limits" --json "$OUT"

ONLY=()
[ "$QUICK" = 1 ] && ONLY=(--only 1KiB)

log "the matrix, interleaved: do-nothing responder (the client's ceiling), ASYNC_FLUSH, SYNC_FLUSH"
RESP_PORT=$(free_port)
"$MQB" responder --port "$RESP_PORT" >/dev/null &
PIDS+=($!)
wait_port "$RESP_PORT"
# The SYNC_FLUSH broker registers with a name server of its own, so each topic's route
# points at one broker.
NS2_PORT=$(free_port)
"$BIN/mqnamesrv" --listen-port "$NS2_PORT" --log-dir "$DIR/logs-sync" >"$DIR/namesrv2.out" 2>&1 &
PIDS+=($!)
wait_port "$NS2_PORT"
FLUSH=SYNC_FLUSH
rm -rf "$DIR/store-$FLUSH"
BROKER_NS="127.0.0.1:$NS2_PORT" BROKER_LOGS="$DIR/logs-sync" start_broker "$DIR/store-$FLUSH" "flushDiskType=$FLUSH"
SYNC_PID=$BROKER_PID
FLUSH=ASYNC_FLUSH
rm -rf "$DIR/store-$FLUSH"
# A retention tick every second, so trouble (a) starts deleting soon after mqadmin asks.
start_broker "$DIR/store-$FLUSH" "flushDiskType=$FLUSH" cleanResourceInterval=1000
# Each repeat runs every cell against all three in turn: the ratios between them compare
# figures of the same minutes on this shared machine.
"$MQB" matrix -t BenchmarkTest --queues 8 --create -d "$SECS" --reps "$REPS" --json "$OUT" \
  --leg "responder=addr:127.0.0.1:$RESP_PORT" --leg "ASYNC_FLUSH=ns:$NS" \
  --leg "SYNC_FLUSH=ns:127.0.0.1:$NS2_PORT" "${ONLY[@]}"
stop_broker "$SYNC_PID"
rm -rf "$DIR/store-SYNC_FLUSH"

log "end to end at 10,000 msg/s"
"$MQB" e2e -n "$NS" -t E2E --queues 8 --create -s 1024 -c 4 -m async -i 8 -r 10000 \
  -d "$SECS" -w 1 --quiet --label ASYNC_FLUSH --json "$OUT"
log "catch-up of a cold backlog"
"$MQB" catchup -n "$NS" -t Backlog --queues 8 --create --gib 1 --json "$OUT"
log "many topics: 10,000 x 8 idle, then 1,000 active vs 1"
"$MQB" topics -n "$NS" -t Many --count 10000 --queues 8
sleep 2
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$BROKER_PID/status")
echo "{\"kind\":\"rss\",\"topics\":10000,\"queues\":8,\"rss_kb\":$RSS}" >>"$OUT"
spread() { if [ "$1" = 1 ]; then SPREAD=(-t Many_0); else SPREAD=(-t Many --topics "$1"); fi; }
# A first pass creates the queues' files, once per queue as a topic is first used; the shard's
# flusher takes 9-13 s for these 8,000 (the broker logs it: "8000 consume queue(s) written
# ... in 10.2s"), so the measured passes wait for it: the row compares steady sends. Then
# they alternate, $REPS of each (one 3 s pass apiece moved the ratio between 77 and 97 %).
for T in 1000 1; do
  spread "$T"
  "$MQB" producer -n "$NS" "${SPREAD[@]}" -c 8 -i 16 -m async -d 2 -w 0 --quiet >/dev/null
done
sleep 15
for _ in $(seq "$REPS"); do
  for T in 1000 1; do
    spread "$T"
    "$MQB" producer -n "$NS" "${SPREAD[@]}" -c 8 -i 16 -m async -d "$SECS" -w 1 --quiet \
      --label "topics:$T" --json "$OUT"
  done
done

# Trouble: the same open-loop load (1 KiB, 4 conn x 8, 20,000 msg/s) quiet and in trouble.
LOAD=(-n "$NS" -t Trouble --queues 8 -s 1024 -c 4 -m async -i 8 -r 20000 -d "$SECS" -w 1 --quiet)
log "trouble: quiet (after an unmeasured run, so the many-topics work has settled)"
"$MQB" producer -n "$NS" -t Trouble --queues 8 --create -s 1024 -c 4 -m async -i 8 -r 20000 \
  -d 3 -w 0 --quiet >/dev/null
# Quiet and (b) alternate $REPS times (the backlog is read from its start each time, cold:
# reads bypass the page cache); the verdict takes the median p99.9 of each. A single 3 s
# pass apiece put (b) anywhere between 0.8 and 2.0 x in one day's runs.
for _ in $(seq "$REPS"); do
  "$MQB" producer "${LOAD[@]}" --label trouble:quiet --json "$OUT"
  log "trouble (b): a consumer catches up the cold backlog meanwhile"
  "$MQB" catchup -n "$NS" -t Backlog --gib 0 >/dev/null &
  CATCHUP=$!
  PIDS+=("$CATCHUP")
  "$MQB" producer "${LOAD[@]}" --label trouble:catchup --json "$OUT" || true
  wait "$CATCHUP" || true
done
log "trouble (a): expired files deleted while the load runs (fileReservedTime=0 through mqadmin)"
EVERY_HOUR=$(seq -f %02g -s ';' 0 23)
( sleep 1
  "$BIN/mqadmin" updateBrokerConfig -b "127.0.0.1:$BROKER_PORT" -k deleteWhen -v "$EVERY_HOUR"
  "$BIN/mqadmin" updateBrokerConfig -b "127.0.0.1:$BROKER_PORT" -k fileReservedTime -v 0
) >&2 &
PIDS+=($!)
"$MQB" producer "${LOAD[@]}" --label trouble:delete --json "$OUT" || true
grep -h "retention deleted\|deleting expired" "$DIR"/logs/broker*.log | tail -3 >&2 || true
"$BIN/mqadmin" updateBrokerConfig -b "127.0.0.1:$BROKER_PORT" -k fileReservedTime -v 72 >&2
log "trouble (c): restart after a clean stop, then after SIGKILL"
stop_broker
KEEP_PORT=1 start_broker "$DIR/store-$FLUSH" "flushDiskType=$FLUSH"
"$MQB" producer "${LOAD[@]}" --label trouble:restart --json "$OUT" || true
"$MQB" producer -n "$NS" -t Trouble -s 1024 -c 4 -m async -i 8 -d 3 -w 0 --quiet >/dev/null 2>&1 &
LOADER=$!
PIDS+=("$LOADER")
sleep 1.5
kill -9 "$BROKER_PID"
wait "$LOADER" 2>/dev/null || true
KEEP_PORT=1 start_broker "$DIR/store-$FLUSH" "flushDiskType=$FLUSH"
"$MQB" producer "${LOAD[@]}" --label trouble:recover --json "$OUT" || true
stop_broker
rm -rf "$DIR/store-$FLUSH"

if [ -n "$OTHER" ]; then
  log "the same matrix against $OTHER_NAME ($OTHER)"
  OTHER_OUT="$PWD/bench/results/run-$STAMP-$OTHER_NAME.jsonl"
  "$MQB" matrix -n "$OTHER" -t BenchmarkTest --queues 8 --create -d "$SECS" --reps "$REPS" \
    --label ASYNC_FLUSH --json "$OTHER_OUT" "${ONLY[@]}"
fi

{
  echo "# Benchmark run $STAMP"
  echo
  echo "\`bench/run.sh --secs $SECS --reps $REPS$([ "$QUICK" = 1 ] && echo " --quick") --shards $SHARDS$(for kv in "${EXTRA[@]}"; do printf ' --broker-prop %s' "$kv"; done)\` on $(nproc) cores, $(uname -r)."
  echo "Client and broker share the host; the brokers run $([ "$SHARDS" = 0 ] && echo "one shard per core" || echo "$SHARDS shard(s)"). Raw figures: \`$(basename "$OUT")\`."
  echo
  echo "## Limits (same run)"
  echo
  python3 - "$OUT" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    v = json.loads(l)
    if v.get("kind") == "limits":
        print(f"- disk: O_DIRECT write {v['disk_write_mbps']:.0f} MB/s, read {v['disk_read_mbps']:.0f} MB/s; fdatasync p50 {v['fsync_p50_us']:.0f} µs, p99 {v['fsync_p99_us']:.0f} µs")
        print(f"- loopback TCP {v['loopback_mbps']:.0f} MB/s; 64 B round trip p50 {v['rtt_p50_us']:.0f} µs, p99 {v['rtt_p99_us']:.0f} µs")
    if v.get("kind") == "catchup":
        print(f"- catch-up of a cold backlog: {v['gib']:.2f} GiB read at {v['mbps']:.0f} MB/s")
PY
  echo
  echo "## Targets"
  echo
  "$MQB" verdict "$OUT"
  echo
  echo "## Matrix"
  echo
  "$MQB" report "$OUT"
  if [ -n "$OTHER" ]; then
    echo
    echo "## Against $OTHER_NAME"
    echo
    "$MQB" report "$OUT" "$OTHER_OUT" --other-name "$OTHER_NAME"
  fi
} >"$MD"
cat "$MD"
echo "report: $MD" >&2
