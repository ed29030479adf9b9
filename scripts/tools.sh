#!/usr/bin/env bash
# As upstream's bin/tools.sh: runs a quickstart example by its Java class name, e.g.
#   export NAMESRV_ADDR=localhost:9876
#   scripts/tools.sh org.apache.rocketmq.example.quickstart.Producer
set -euo pipefail
source "$(dirname "$0")/_bin.sh"
BIN=$(coremq_bin coremq-tools)
exec "$BIN" "$@"
