#!/usr/bin/env bash
# As upstream's bin/tools.sh: runs a quickstart example by its Java class name, e.g.
#   export NAMESRV_ADDR=localhost:9876
#   scripts/tools.sh org.apache.rocketmq.example.quickstart.Producer
set -euo pipefail
cd "$(dirname "$0")/.."
# COREMQ_BIN_DIR: where the binaries are (default target/release, built if missing).
BIN="${COREMQ_BIN_DIR:-$PWD/target/release}/coremq-tools"
[ -x "$BIN" ] || cargo build --release --locked --bin coremq-tools >&2
exec "$BIN" "$@"
