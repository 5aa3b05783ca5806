#!/usr/bin/env bash
# The throughput cost of replication: one sensor-window job (RECORDS readings, default 100M,
# unthrottled) until it finishes, either `plain` (agent a alone, no [replication], no
# node.toml) or `sync` (the example as shipped: witness w, agents a and b). Each call is a
# fresh copy in a temporary folder, with certificates made by `weir cert`. Compare the two:
#   farm-bench -n 5 --timeout 600 --vs "examples/ha/bench.sh plain" -- examples/ha/bench.sh sync
# WEIR: the weir binary (default target/release/weir). Uses the example's ports.
set -euo pipefail
mode=${1:?usage: bench.sh plain|sync}
here=$(cd "$(dirname "$0")" && pwd)
weir=${WEIR:-$here/../../target/release/weir}
work=$(mktemp -d)
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cp -r "$here/a" "$here/b" "$here/w" "$work"/
rm -rf "$work"/*/data "$work"/*/out "$work"/*/node-data
for agent in a b w; do "$weir" cert "$agent" --out "$work/certs" >/dev/null; done
export WEIR_RECORDS=${RECORDS:-100000000} WEIR_RATE=1000000000
case $mode in
  plain)
    rm "$work/a/node.toml"
    # The same job without its [replication] table.
    sed -i '/^\[replication\]/,/^$/d' "$work/a/sensor-window.toml"
    "$weir" agent --config-dir "$work/a" --http 127.0.0.1:9465 2>"$work/a.err" & pids+=($!)
    ports="9465" ;;
  sync)
    "$weir" witness --config-dir "$work/w" 2>"$work/w.err" & pids+=($!)
    "$weir" agent --config-dir "$work/a" 2>"$work/a.err" & pids+=($!)
    "$weir" agent --config-dir "$work/b" 2>"$work/b.err" & pids+=($!)
    ports="9465 9466" ;;
  *) echo "bench.sh: plain or sync, not $mode" >&2; exit 2 ;;
esac
while :; do
  for port in $ports; do
    if "$weir" status --http "127.0.0.1:$port" 2>/dev/null | grep -q ' finished '; then exit 0; fi
  done
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "bench.sh: a weir process exited" >&2; cat "$work"/*.err >&2; exit 1; }
  done
  sleep 0.05
done
