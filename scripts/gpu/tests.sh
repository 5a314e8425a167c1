#!/usr/bin/env bash
# The CUDA tests of a kit staged by scripts/gpu/stage.sh, on the GPU machine (no Rust needed):
#
#   bash .gpu-stage/tests.sh          (from the repository root; logs go to $OUT, else ./gpu_out)
#
# Steps, each under `timeout` and all within BUDGET_S: unpack payload.tar.xz into $WORK;
# nvidia-smi; every staged test binary with --include-ignored and SPARSEGEN_REQUIRE_GPU=1 (a
# GPU test that finds no GPU fails instead of skipping) and SPARSEGEN_CONFORMANCE pointing at
# the staged spconv dumps; the demo on CUDA on the staged KITTI frame; the conformance
# example; compute-sanitizer memcheck and racecheck over a subset of cuda_conv's tests.
# Ends with one `PASS|FAIL|SKIP|TIMEOUT step` line per step (also in summary.txt); the exit
# status is 1 when any step failed or timed out.
#
# Where nvidia-smi finds no GPU it is a dry run (REQUIRE_GPU=auto → 0): GPU tests skip with
# their printed reason and the sanitizer steps are skipped; useful to check the plumbing.
#
# Files in $OUT (3): summary.txt, tests_log.txt, sanitizer_log.txt.
#
# Knobs (environment): BUDGET_S=480 (whole script), TEST_TIMEOUT_S=240 (per test binary),
#   EX_TIMEOUT_S=90 (per example), SAN_TIMEOUT_S=120 (per sanitizer tool; 2× this is kept
#   back from the earlier steps so the sanitizer always runs), REQUIRE_GPU=auto|0|1,
#   TEST_FILTER= (libtest name filter for every binary; default: all of a binary's tests, the
#   runtime's unit tests only `cuda::`), SAN_BIN=cuda_conv,
#   MEMCHECK_TESTS="cuda_f32_matches_reference cuda_f16_matches_reference cuda_device_rulebook",
#   RACECHECK_TESTS="cuda_f16_matches_reference cuda_f32_matches_reference", SANITIZER=(path),
#   WORK=/tmp/sg-tests, SKIP_SANITIZER=0, TEST_ARGS=--nocapture (the tests print one line per
#   case and tile: error against the reference, kernel time).
set -uo pipefail
KIT="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
T0=$(date +%s)
BUDGET_S="${BUDGET_S:-480}"
TEST_TIMEOUT_S="${TEST_TIMEOUT_S:-240}"
EX_TIMEOUT_S="${EX_TIMEOUT_S:-90}"
SAN_TIMEOUT_S="${SAN_TIMEOUT_S:-120}"
REQUIRE_GPU="${REQUIRE_GPU:-auto}"
SAN_BIN="${SAN_BIN:-cuda_conv}"
MEMCHECK_TESTS="${MEMCHECK_TESTS:-cuda_f32_matches_reference cuda_f16_matches_reference cuda_device_rulebook}"
RACECHECK_TESTS="${RACECHECK_TESTS:-cuda_f16_matches_reference cuda_f32_matches_reference}"
WORK="${WORK:-/tmp/sg-tests}"
SKIP_SANITIZER="${SKIP_SANITIZER:-0}"
TEST_ARGS="${TEST_ARGS---nocapture}"
SUMMARY="$OUT/summary.txt"
LOG="$OUT/tests_log.txt"
SANLOG="$OUT/sanitizer_log.txt"
: >"$LOG"
: >"$SANLOG"
RESULTS=()
FAILED=0

left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
# cap N: the smaller of N and the time left minus RESERVE (kept for the later steps), at least 1
RESERVE=10
cap() { local l=$(($(left) - RESERVE)); ((l < 1)) && l=1; ((l < $1)) && echo "$l" || echo "$1"; }
record() { # record STATUS NAME DETAIL
  RESULTS+=("$1 $2${3:+  ($3)}")
  [[ $1 == FAIL || $1 == TIMEOUT || ${3:-} == "budget spent" ]] && FAILED=1
  echo "== $1 $2${3:+  ($3)}"
}
# run_step NAME TIMEOUT LOGFILE CMD...: runs CMD under timeout, appends to LOGFILE, records.
run_step() {
  local name=$1 limit=$2 logf=$3 t rc
  shift 3
  if (($(left) - RESERVE < 20)); then
    record SKIP "$name" "budget spent"
    return
  fi
  limit=$(cap "$limit")
  t=$(date +%s)
  echo "===== $name (timeout ${limit}s): $*" >>"$logf"
  local from
  from=$(wc -l <"$logf")
  timeout --kill-after=10 "$limit" "$@" >>"$logf" 2>&1
  rc=$?
  t=$(($(date +%s) - t))
  # libtest's own totals of this step, to make the summary line informative
  local totals
  totals=$(tail -n +"$((from + 1))" "$logf" | grep -E '^test result:' | tail -1 |
    sed 's/^test result: //; s/; finished in.*//; s/ 0 measured;//')
  echo "===== $name: rc=$rc after ${t}s" >>"$logf"
  if ((rc == 124 || rc == 137)); then
    record TIMEOUT "$name" "${t}s, limit ${limit}s"
  elif ((rc == 0)); then
    record PASS "$name" "${t}s${totals:+; $totals}"
  else
    record FAIL "$name" "rc=$rc, ${t}s${totals:+; $totals}"
  fi
}

{
  echo "== tests.sh $(date -u +%FT%TZ) on $(hostname) ($(nproc) cores)"
  [[ -f $KIT/MANIFEST.txt ]] && cat "$KIT/MANIFEST.txt"
  echo "== nvidia-smi"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,compute_cap --format=csv 2>&1 || true
} >"$SUMMARY"
cat "$SUMMARY"

if [[ $REQUIRE_GPU == auto ]]; then
  if nvidia-smi -L >/dev/null 2>&1; then REQUIRE_GPU=1; else REQUIRE_GPU=0; fi
fi
if [[ $REQUIRE_GPU != 1 ]]; then
  echo "NOTE: no GPU required (REQUIRE_GPU=$REQUIRE_GPU): a dry run, GPU tests skip" | tee -a "$SUMMARY"
fi

# 1. unpack (xz via tar, or Python's lzma where tar has no xz)
rm -rf "$WORK" && mkdir -p "$WORK"
if tar -xJf "$KIT/payload.tar.xz" -C "$WORK" 2>>"$LOG" ||
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
    "$KIT/payload.tar.xz" "$WORK" 2>>"$LOG"; then
  record PASS unpack "$(du -sh "$WORK" | cut -f1) in $(($(date +%s) - T0))s"
else
  record FAIL unpack "see tests_log.txt"
fi

export SPARSEGEN_REQUIRE_GPU="$REQUIRE_GPU"
export SPARSEGEN_CONFORMANCE="$WORK/conformance"
export RUST_BACKTRACE=1
export XDG_CACHE_HOME="$WORK/cache"
export TMPDIR="$WORK/tmp"
mkdir -p "$TMPDIR" "$XDG_CACHE_HOME"
# cudarc loads libcuda / libnvrtc at run time: the toolkit's libraries first
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
BIN="$WORK/bin"
SANITIZER="${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}"
# the sanitizer steps come last; keep their time from the tests and examples
if [[ $SKIP_SANITIZER != 1 && $REQUIRE_GPU == 1 && -x $SANITIZER ]]; then
  RESERVE=$((2 * SAN_TIMEOUT_S + 10))
fi

# 2. the staged test binaries (bin/tests.txt: name<TAB>default filter; most important first)
if [[ -f $BIN/tests.txt ]]; then
  while IFS=$'\t' read -r name filter; do
    [[ -z $name ]] && continue
    f="${TEST_FILTER-$filter}"
    # shellcheck disable=SC2086  # an empty filter must vanish
    run_step "test $name${f:+ [$f]}" "$TEST_TIMEOUT_S" "$LOG" "$BIN/test-$name" --include-ignored $TEST_ARGS $f
  done <"$BIN/tests.txt"
else
  record FAIL tests "no bin/tests.txt in the payload"
fi

# 3. examples: the demo on the staged KITTI frame (on CUDA when a GPU is required), and the
#    conformance example on the staged dumps (on CUDA if the example offers it, else the CPU)
if [[ -x $BIN/demo ]]; then
  demo_dev=auto
  [[ $REQUIRE_GPU == 1 ]] && demo_dev=cuda
  scan=()
  [[ -f $WORK/kitti/000000.bin ]] && scan=("$WORK/kitti/000000.bin")
  run_step "demo --device $demo_dev" "$EX_TIMEOUT_S" "$LOG" "$BIN/demo" --device "$demo_dev" "${scan[@]}"
fi
if [[ -x $BIN/conformance ]]; then
  conf_dev=cpu
  if [[ $REQUIRE_GPU == 1 ]] && "$BIN/conformance" --help 2>/dev/null | grep -q cuda; then conf_dev=cuda; fi
  run_step "conformance example --device $conf_dev" "$EX_TIMEOUT_S" "$LOG" \
    "$BIN/conformance" --device "$conf_dev" "$WORK/conformance"
fi

# the spconv backbone from its checkpoint (tests/fixtures, read from the repository root this
# runs in), on the CPU and, when usable, on CUDA, each checked against spconv's output
if [[ -x $BIN/spconv_model ]]; then
  run_step "spconv_model example" "$EX_TIMEOUT_S" "$LOG" "$BIN/spconv_model"
fi

# 4. compute-sanitizer over a subset of cuda_conv (kernels launched under memcheck / racecheck)
RESERVE=10
if [[ $SKIP_SANITIZER == 1 ]]; then
  record SKIP sanitizer "SKIP_SANITIZER=1"
elif [[ $REQUIRE_GPU != 1 ]]; then
  record SKIP sanitizer "no GPU"
elif [[ ! -x $SANITIZER ]]; then
  record SKIP sanitizer "no compute-sanitizer at $SANITIZER"
elif [[ ! -x $BIN/test-$SAN_BIN ]]; then
  record FAIL sanitizer "no staged test-$SAN_BIN"
else
  "$SANITIZER" --version >>"$SANLOG" 2>&1
  # shellcheck disable=SC2086  # the test lists are word lists (libtest takes several filters)
  run_step "memcheck $SAN_BIN [$MEMCHECK_TESTS]" "$SAN_TIMEOUT_S" "$SANLOG" \
    "$SANITIZER" --tool memcheck --error-exitcode 86 --print-limit 20 --target-processes all \
    "$BIN/test-$SAN_BIN" --include-ignored $MEMCHECK_TESTS
  # shellcheck disable=SC2086
  run_step "racecheck $SAN_BIN [$RACECHECK_TESTS]" "$SAN_TIMEOUT_S" "$SANLOG" \
    "$SANITIZER" --tool racecheck --racecheck-report all --error-exitcode 86 --print-limit 20 \
    --target-processes all "$BIN/test-$SAN_BIN" --include-ignored $RACECHECK_TESTS
fi

{
  echo
  echo "== summary after $(($(date +%s) - T0))s (REQUIRE_GPU=$REQUIRE_GPU)"
  printf '%s\n' "${RESULTS[@]}"
  # sanitizer verdict lines, if any
  grep -E '^========= (ERROR SUMMARY|RACECHECK SUMMARY)' "$SANLOG" 2>/dev/null | sed 's/^/  /'
  # failing test names, if any
  grep -E '^test .* FAILED$' "$LOG" 2>/dev/null | sed 's/^/  /' | head -40
} | tee -a "$SUMMARY"
ls -la "$OUT"
exit $FAILED
