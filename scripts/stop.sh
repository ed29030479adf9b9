#!/usr/bin/env bash
# Stops the broker, then the name server (clean stops: SIGTERM), as `mqshutdown` does.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/target/release"
"$BIN/mqshutdown" broker
for _ in $(seq 1 100); do pgrep -x mqbroker >/dev/null || break; sleep 0.1; done
"$BIN/mqshutdown" namesrv
