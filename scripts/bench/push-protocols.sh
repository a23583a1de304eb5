#!/usr/bin/env bash
# Remote-write 2.0 against 1.0 on the same registry: bytes per sample (protobuf before
# snappy, and on the wire) and CPU per sample of a steady-state conversion (series,
# encoding, compression: everything that differs between the protocols; the snapshot
# before it and the HTTP request after it are the same work for both).
#
#   scripts/bench/push-protocols.sh [rounds for SMALL] [rounds for LARGE]   (default 300 10)
#
# Sets as in push-cost.sh (examples/push_bench.rs): SMALL, the ~2,800 series of
# scripts/bench/promclient/workload.json; LARGE, ~190,000 synthetic series.
set -euo pipefail
cd "$(dirname "$0")/../.."
SMALL_ROUNDS=${1:-300}
LARGE_ROUNDS=${2:-10}

cargo build --release --example push_bench
BIN=$PWD/target/release/examples/push_bench

row() { # name rounds registry arguments...
  local name=$1 rounds=$2
  shift 2
  "$BIN" protocols "$@" --rounds "$rounds" | python3 -c '
import json, sys
name = sys.argv[1]
v1, v2, ratio = (json.loads(l) for l in sys.stdin)
print(f"| {name} | {v1[\"samples\"] // max(1, int(sys.argv[2]))} "
      f"| {v1[\"uncompressed_bytes_per_sample\"]} | {v2[\"uncompressed_bytes_per_sample\"]} | **{ratio[\"v2_to_v1_uncompressed\"]:.2}** "
      f"| {v1[\"snappy_bytes_per_sample\"]} | {v2[\"snappy_bytes_per_sample\"]} | {ratio[\"v2_to_v1_snappy\"]:.2} "
      f"| {v1[\"convert_cpu_ns_per_sample\"]} | {v2[\"convert_cpu_ns_per_sample\"]} | **{ratio[\"v2_to_v1_cpu\"]:.2}** |")
' "$name" "$rounds"
}

echo "| set | series | 1.0 bytes/sample | 2.0 bytes/sample | 2.0 / 1.0 | 1.0 snappy bytes/sample | 2.0 snappy bytes/sample | 2.0 / 1.0 | 1.0 CPU ns/sample | 2.0 CPU ns/sample | 2.0 / 1.0 |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
row SMALL "$SMALL_ROUNDS" --workload scripts/bench/promclient/workload.json
row LARGE "$LARGE_ROUNDS" --series 190000
