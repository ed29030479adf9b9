#!/usr/bin/env bash
# The test command (README, .ci/run): unit, integration and property tests.
# Benchmarks are not run here (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --lib --bins --tests "$@"
