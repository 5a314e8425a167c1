#!/usr/bin/env bash
# The CPU side-by-side benchmark in one command: sparsegen's CPU backend against spconv 2.3.8
# (CPU, torch/MKL) on the same workloads, same machine, one run.
#
#   scripts/bench_cpu.sh OUT_DIR
#
# Writes OUT_DIR/workloads/{lidar,room}_{20000,120000}/ (workloads.py), OUT_DIR/spconv_cpu.jsonl
# (spconv_bench.py through $SPVENV), OUT_DIR/sparsegen_cpu.jsonl (examples/bench.rs) and
# OUT_DIR/compare.md (scripts/compare_cpu.py: per-row ratios, geometric means, targets).
# Knobs (environment): THREADS (2), WORKLOADS (lidar,room), SIZES (20000,120000), WARMUP (3),
# REPEATS (10), SPVENV (/tmp/spvenv), SHARED (<repo>/../shared), STRATEGY (auto).
# Run it on a quiet machine: `uptime` before and after is recorded in OUT_DIR/load.txt.
set -euo pipefail

OUT=${1:?usage: scripts/bench_cpu.sh OUT_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
SPVENV=${SPVENV:-/tmp/spvenv}
THREADS=${THREADS:-2}
WORKLOADS=${WORKLOADS:-lidar,room}
SIZES=${SIZES:-20000,120000}
WARMUP=${WARMUP:-3}
REPEATS=${REPEATS:-10}
STRATEGY=${STRATEGY:-auto}

mkdir -p "$OUT/workloads"
OUT=$(cd "$OUT" && pwd)
echo "before: $(uptime)" > "$OUT/load.txt"

echo "== workloads" >&2
dirs=()
for kind in ${WORKLOADS//,/ }; do
  for n in ${SIZES//,/ }; do
    dir="$OUT/workloads/${kind}_${n}"
    python3 "$SHARED/bench/workloads.py" --kind "$kind" --n "$n" --out "$dir" >/dev/null
    dirs+=("$dir")
  done
done

echo "== building examples/bench (release)" >&2
(cd "$ROOT" && cargo build --release --example bench)
BENCH="$ROOT/target/release/examples/bench"

rm -f "$OUT/spconv_cpu.jsonl" "$OUT/sparsegen_cpu.jsonl"

echo "== spconv (CPU, $THREADS threads)" >&2
OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$SPVENV/bin/python" "$SHARED/bench/spconv_bench.py" \
  --device cpu --threads "$THREADS" --workloads "$WORKLOADS" --sizes "$SIZES" \
  --warmup "$WARMUP" --repeats "$REPEATS" --out "$OUT/spconv_cpu.jsonl" >&2

echo "== sparsegen (CPU, $THREADS threads)" >&2
for dir in "${dirs[@]}"; do
  "$BENCH" --device cpu --threads "$THREADS" --strategy "$STRATEGY" --workload "$dir" \
    --warmup "$WARMUP" --repeats "$REPEATS" --json "$OUT/sparsegen_cpu.jsonl" >/dev/null
done

echo "after: $(uptime)" >> "$OUT/load.txt"
python3 "$ROOT/scripts/compare_cpu.py" "$OUT/spconv_cpu.jsonl" "$OUT/sparsegen_cpu.jsonl" | tee "$OUT/compare.md"
python3 "$ROOT/scripts/compare_cpu.py" "$OUT/spconv_cpu.jsonl" "$OUT/sparsegen_cpu.jsonl" --stat min > "$OUT/compare_min.md"
cat "$OUT/load.txt"
