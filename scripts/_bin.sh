# Sourced by the wrappers: finds (or builds) a release binary. COREMQ_BIN_DIR overrides
# where the binaries are (default target/release of this checkout).
coremq_bin() {
  local root bin
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  bin="${COREMQ_BIN_DIR:-$root/target/release}/$1"
  if [ ! -x "$bin" ]; then
    (cd "$root" && cargo build --release --locked --bins >&2) || return 1
  fi
  echo "$bin"
}
