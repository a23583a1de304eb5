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
  local name=$1 rounds=$2 out
  shift 2
  out=$("$BIN" protocols "$@" --rounds "$rounds")
  python3 - "$name" "$rounds" "$out" <<'PY'
import json, sys
name, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
v1, v2, ratio = (json.loads(l) for l in out.splitlines())
cells = [name, str(v1["samples"] // max(1, rounds)),
         str(v1["uncompressed_bytes_per_sample"]), str(v2["uncompressed_bytes_per_sample"]),
         f"**{ratio['v2_to_v1_uncompressed']:.2f}**",
         str(v1["snappy_bytes_per_sample"]), str(v2["snappy_bytes_per_sample"]),
         f"{ratio['v2_to_v1_snappy']:.2f}",
         str(v1["convert_cpu_ns_per_sample"]), str(v2["convert_cpu_ns_per_sample"]),
         f"**{ratio['v2_to_v1_cpu']:.2f}**"]
print("| " + " | ".join(cells) + " |")
PY
}

echo "| set | series | 1.0 bytes/sample | 2.0 bytes/sample | 2.0 / 1.0 | 1.0 snappy bytes/sample | 2.0 snappy bytes/sample | 2.0 / 1.0 | 1.0 CPU ns/sample | 2.0 CPU ns/sample | 2.0 / 1.0 |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
row SMALL "$SMALL_ROUNDS" --workload scripts/bench/promclient/workload.json
row LARGE "$LARGE_ROUNDS" --series 190000
