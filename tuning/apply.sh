#!/usr/bin/env bash
# Checks this host against tuning/README.md and prints what differs.
#
#   tuning/apply.sh [--store DIR]     check only (exit 1 if something differs)
#   tuning/apply.sh --dry-run         print the commands --apply would run
#   tuning/apply.sh --apply           set the sysctl values (root); writes and prints a
#                                     script that restores the old values
#
# Only sysctls are changed. CPU isolation, IRQ affinity, the I/O scheduler, THP and mount
# options are reported with the command to fix them: they are boot-time, per-device or
# fstab decisions. Running --apply twice is safe: the second run finds nothing to change.
set -uo pipefail

MODE=check
STORE="${HOME}/store"
while [ $# -gt 0 ]; do
  case "$1" in
    --apply) MODE=apply; shift ;;
    --dry-run) MODE=dry; shift ;;
    --store) STORE=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

if [ "$MODE" = apply ] && [ "$(id -u)" != 0 ]; then
  echo "--apply needs root (sysctl -w)" >&2
  exit 2
fi

DIFFS=0
CHANGES=()   # "key|old|new"
ok()   { printf '  ok    %-38s %s\n' "$1" "$2"; }
diff_() { printf '  DIFF  %-38s %s\n' "$1" "$2"; DIFFS=$((DIFFS + 1)); }
info() { printf '  info  %-38s %s\n' "$1" "$2"; }

sysctl_get() { sysctl -n "$1" 2>/dev/null | tr -s '\t ' ' '; }

# want_sysctl KEY WANT CMP   (CMP: eq = equal, ge = numeric at least, max3 = third field at least)
want_sysctl() {
  local key=$1 want=$2 cmp=$3 cur
  cur=$(sysctl_get "$key")
  if [ -z "$cur" ]; then
    info "$key" "not present on this kernel"
    return
  fi
  local good=0
  case "$cmp" in
    eq) [ "$cur" = "$want" ] && good=1 ;;
    le) [ "$cur" -le "$want" ] 2>/dev/null && good=1 ;;
    ge) [ "$cur" -ge "$want" ] 2>/dev/null && good=1 ;;
    max3)
      local c3 w3
      c3=$(echo "$cur" | awk '{print $3}'); w3=$(echo "$want" | awk '{print $3}')
      [ "$c3" -ge "$w3" ] 2>/dev/null && good=1 ;;
  esac
  if [ $good = 1 ]; then
    ok "$key" "$cur"
  else
    diff_ "$key" "is '$cur', want '$want'"
    CHANGES+=("$key|$cur|$want")
  fi
}

echo "CPU"
GOVS=$(cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor 2>/dev/null | sort -u | tr '\n' ' ')
if [ -z "$GOVS" ]; then
  info "scaling_governor" "no cpufreq (VM or fixed clock)"
elif [ "$GOVS" = "performance " ]; then
  ok "scaling_governor" "performance"
else
  diff_ "scaling_governor" "is '$GOVS', want performance: cpupower frequency-set -g performance"
fi
ISOL=$(cat /sys/devices/system/cpu/isolated 2>/dev/null)
NOHZ=$(cat /sys/devices/system/cpu/nohz_full 2>/dev/null)
info "isolated cores" "${ISOL:-none}; nohz_full ${NOHZ:-none} (see the guide: isolcpus/nohz_full for shard cores)"
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet irqbalance 2>/dev/null; then
  info "irqbalance" "running: ban the shard cores (IRQBALANCE_BANNED_CPULIST) or pin IRQs by hand"
fi

echo "Memory"
want_sysctl vm.swappiness 1 le
THP=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)
case "$THP" in
  "") info "transparent_hugepage" "not present" ;;
  always) diff_ "transparent_hugepage" "is always, want madvise: echo madvise > /sys/kernel/mm/transparent_hugepage/enabled" ;;
  *) ok "transparent_hugepage" "$THP" ;;
esac
MEMLOCK=$(ulimit -l)
if [ "$MEMLOCK" = unlimited ] || [ "$MEMLOCK" -ge 8192 ] 2>/dev/null; then
  ok "ulimit -l (KiB)" "$MEMLOCK"
else
  diff_ "ulimit -l (KiB)" "is $MEMLOCK, want >= shards x 1024 + 1024, or unlimited (LimitMEMLOCK=infinity)"
fi

echo "Storage (store: $STORE)"
PROBE="$STORE"
while [ ! -e "$PROBE" ] && [ "$PROBE" != / ]; do PROBE=$(dirname "$PROBE"); done
FS=$(findmnt -no FSTYPE -T "$PROBE" 2>/dev/null)
OPTS=$(findmnt -no OPTIONS -T "$PROBE" 2>/dev/null)
SRC=$(findmnt -no SOURCE -T "$PROBE" 2>/dev/null)
case "$FS" in
  xfs|ext4) ok "filesystem" "$FS on $SRC" ;;
  tmpfs|overlay) diff_ "filesystem" "$FS has no O_DIRECT: put the store on XFS or ext4" ;;
  "") info "filesystem" "unknown (findmnt missing?)" ;;
  *) info "filesystem" "$FS (tested: XFS, ext4)" ;;
esac
if [ -n "$OPTS" ]; then
  if echo "$OPTS" | grep -qw noatime; then ok "mount noatime" "yes"; else diff_ "mount noatime" "missing: add noatime in /etc/fstab, mount -o remount,noatime"; fi
  if echo "$OPTS" | grep -qw discard; then diff_ "mount discard" "online discard: remove it, enable fstrim.timer"; else ok "mount discard" "off"; fi
fi
DEV=$(basename "$(readlink -f "$SRC" 2>/dev/null)" 2>/dev/null)
# A partition's queue settings live on its disk.
BLK=""
for cand in "$DEV" "$(echo "$DEV" | sed -E 's/p?[0-9]+$//')"; do
  [ -n "$cand" ] && [ -e "/sys/block/$cand/queue/scheduler" ] && { BLK=$cand; break; }
done
if [ -n "$BLK" ]; then
  SCHED=$(sed -n 's/.*\[\(.*\)\].*/\1/p' "/sys/block/$BLK/queue/scheduler")
  if [ "$SCHED" = none ] || [ -z "$SCHED" ]; then ok "$BLK scheduler" "${SCHED:-none}"; else diff_ "$BLK scheduler" "is $SCHED, want none: echo none > /sys/block/$BLK/queue/scheduler"; fi
  NR=$(cat "/sys/block/$BLK/queue/nr_requests")
  if [ "$NR" -ge 256 ]; then ok "$BLK nr_requests" "$NR"; else diff_ "$BLK nr_requests" "is $NR, want >= 256"; fi
  # Hardware, not a setting: reported, never a difference (see the guide, "Write cache").
  WC=$(cat "/sys/block/$BLK/queue/write_cache" 2>/dev/null)
  FUA=$(cat "/sys/block/$BLK/queue/fua" 2>/dev/null)
  case "$WC" in
    "write back") info "$BLK write_cache" "write back, fua ${FUA:-?}: each SYNC_FLUSH round also flushes the device cache" ;;
    "write through") info "$BLK write_cache" "write through: SYNC_FLUSH rounds need no cache flush" ;;
    *) info "$BLK write_cache" "unknown" ;;
  esac
else
  info "block device" "not found for ${SRC:-$PROBE}"
fi

echo "Network"
want_sysctl net.core.somaxconn 4096 ge
want_sysctl net.ipv4.tcp_max_syn_backlog 8192 ge
want_sysctl net.core.rmem_max 16777216 ge
want_sysctl net.core.wmem_max 16777216 ge
want_sysctl net.ipv4.tcp_rmem "4096 131072 16777216" max3
want_sysctl net.ipv4.tcp_wmem "4096 131072 16777216" max3
info "net.core.busy_read/busy_poll" "$(sysctl_get net.core.busy_read)/$(sysctl_get net.core.busy_poll) (optional: 50/50 on isolated cores)"

echo "io_uring"
want_sysctl kernel.io_uring_disabled 0 eq
if grep -q '^Seccomp:[[:space:]]*2' /proc/self/status 2>/dev/null; then
  info "seccomp" "filter active: make sure it allows io_uring_setup/enter/register"
fi

echo "Files"
NOFILE=$(ulimit -n)
if [ "$NOFILE" = unlimited ] || [ "$NOFILE" -ge 1048576 ] 2>/dev/null; then ok "ulimit -n" "$NOFILE"; else diff_ "ulimit -n" "is $NOFILE, want >= topics x queues + clients + 1024 (LimitNOFILE=1048576)"; fi
FSIZE=$(ulimit -f)
if [ "$FSIZE" = unlimited ]; then ok "ulimit -f" "$FSIZE"; else diff_ "ulimit -f" "is $FSIZE blocks, want unlimited: a commitlog segment is 1 GiB, and writes past the limit fail (LimitFSIZE=infinity)"; fi
want_sysctl fs.file-max 2000000 ge

echo
if [ ${#CHANGES[@]} -eq 0 ]; then
  echo "sysctls: nothing to change"
  [ $DIFFS -gt 0 ] && echo "$DIFFS other setting(s) differ: see above and tuning/README.md"
  [ $DIFFS -gt 0 ] && exit 1
  exit 0
fi

case "$MODE" in
  check)
    echo "$DIFFS setting(s) differ; tuning/apply.sh --dry-run shows the sysctl commands, --apply runs them"
    exit 1 ;;
  dry)
    for c in "${CHANGES[@]}"; do
      IFS='|' read -r k old new <<<"$c"
      echo "sysctl -w $k=\"$new\"    # was \"$old\""
    done
    exit 0 ;;
  apply)
    REVERT="/var/tmp/coremq-tuning-revert-$(date +%Y%m%d%H%M%S).sh"
    { echo "#!/bin/sh"; echo "# Restores the values tuning/apply.sh --apply changed."; } >"$REVERT"
    FAILED=0
    for c in "${CHANGES[@]}"; do
      IFS='|' read -r k old new <<<"$c"
      if sysctl -w "$k=$new" >/dev/null; then
        echo "set $k = $new (was $old)"
        echo "sysctl -w $k=\"$old\"" >>"$REVERT"
      else
        echo "could not set $k" >&2
        FAILED=1
      fi
    done
    chmod +x "$REVERT"
    echo
    echo "revert with: sh $REVERT"
    echo "persist: add to /etc/sysctl.d/90-coremq.conf:"
    for c in "${CHANGES[@]}"; do
      IFS='|' read -r k old new <<<"$c"
      echo "  $k = $new"
    done
    exit $FAILED ;;
esac
