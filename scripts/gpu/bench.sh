#!/usr/bin/env bash
# sparsegen against spconv 2.3.8 side by side, same machine, same call, from a kit staged by
# scripts/gpu/stage.sh (on the GPU machine; no Rust, no internet):
#
#   bash .gpu-bench/bench.sh          (from the repository root; results go to $OUT, else ./gpu_out)
#
# 1. ours: examples/bench (staged, stripped) `--device $DEVICE --dtype D --workload DIR` per
#    workload and dtype, on the staged workloads (made by workloads.py at stage time; a missing
#    one is generated here), each run under `timeout`, all within OURS_BUDGET_S;
# 2. spconv: the staged copy of ../shared/bench/gpu_run.sh (wheels from $WHL, sm_90-pruned)
#    with the same WORKLOADS, SIZES, FP16, WARMUP and REPEATS, within the time left;
# 3. compare_gpu.py over both: the markdown tables, geomeans and the issue's targets.
#
# Files in $OUT (at most 7; TAG is prefixed to every name, e.g. TAG=s_):
#   ours_{cuda|cpu}_fp32.jsonl, ours_..._fp16.jsonl   one JSON line per (workload, layer)
#   ours_log.txt                                      the bench runs' console output
#   spconv_cuda_fp32.jsonl, spconv_cuda_fp16.jsonl    gpu_run.sh's records
#   spconv_log.txt                                    gpu_run.sh's env.txt (versions, smoke test) + logs
#   summary.md                                        step results + compare_gpu.py's tables
#
# Knobs (environment): PART=both|ours|spconv, WORKLOADS=lidar,room, SIZES=20000,120000,500000,
#   FP16=1 (0: float32 only), OURS_DTYPES (default float32[,float16] from FP16; may add
#   bfloat16), DEVICE=cuda (cpu for a dry run of the plumbing), WARMUP=5, REPEATS=20 (both
#   libraries), OURS_ARGS (extra bench flags, e.g. --cached-rulebook), BUDGET_S=570 (whole
#   script), OURS_BUDGET_S (default: 45% of BUDGET_S with PART=both), RUN_TIMEOUT_S=150 (one
#   bench run), VERIFY_MAX_N=0 (spconv's own --verify up to this size; gpu_run.sh's default is
#   20000, skipped here to save device time), WHL (default: .whl beside the kit, else ./.whl),
#   TAG= (file-name prefix), WORK=/tmp/sg-bench.
set -uo pipefail
KIT="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
T0=$(date +%s)
PART="${PART:-both}"
WORKLOADS="${WORKLOADS:-lidar,room}"
SIZES="${SIZES:-20000,120000,500000}"
FP16="${FP16:-1}"
DEVICE="${DEVICE:-cuda}"
WARMUP="${WARMUP:-5}"
REPEATS="${REPEATS:-20}"
OURS_ARGS="${OURS_ARGS:-}"
BUDGET_S="${BUDGET_S:-570}"
RUN_TIMEOUT_S="${RUN_TIMEOUT_S:-150}"
VERIFY_MAX_N="${VERIFY_MAX_N:-0}"
TAG="${TAG:-}"
WORK="${WORK:-/tmp/sg-bench}"
if [[ -z ${WHL:-} ]]; then
  if [[ -d $KIT/../.whl ]]; then WHL="$KIT/../.whl"; else WHL="$PWD/.whl"; fi
fi
if [[ -z ${OURS_DTYPES:-} ]]; then
  OURS_DTYPES=float32
  [[ $FP16 == 1 ]] && OURS_DTYPES=float32,float16
fi
case $PART in
  both) OURS_BUDGET_S="${OURS_BUDGET_S:-$((BUDGET_S * 45 / 100))}" ;;
  ours) OURS_BUDGET_S="${OURS_BUDGET_S:-$((BUDGET_S - 20))}" ;;
  spconv) OURS_BUDGET_S=0 ;;
  *) echo "PART must be both, ours or spconv (got $PART)" >&2; exit 2 ;;
esac
SUMMARY="$OUT/${TAG}summary.md"
OURS_LOG="$OUT/${TAG}ours_log.txt"
SP_LOG="$OUT/${TAG}spconv_log.txt"
RESULTS=()
FAILED=0

left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
record() {
  RESULTS+=("$1 $2${3:+  ($3)}")
  [[ $1 == FAIL || $1 == TIMEOUT ]] && FAILED=1
  echo "== $1 $2${3:+  ($3)}"
}
short() { case $1 in float32) echo fp32 ;; float16) echo fp16 ;; bfloat16) echo bf16 ;; *) echo "$1" ;; esac; }

rm -rf "$WORK" && mkdir -p "$WORK"
export XDG_CACHE_HOME="$WORK/cache" PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
{
  echo "# GPU bench $(date -u +%FT%TZ) on $(hostname) ($(nproc) cores)"
  echo
  echo '```'
  [[ -f $KIT/MANIFEST.txt ]] && cat "$KIT/MANIFEST.txt"
  echo "PART=$PART WORKLOADS=$WORKLOADS SIZES=$SIZES FP16=$FP16 OURS_DTYPES=$OURS_DTYPES DEVICE=$DEVICE"
  echo "WARMUP=$WARMUP REPEATS=$REPEATS OURS_ARGS=$OURS_ARGS BUDGET_S=$BUDGET_S OURS_BUDGET_S=$OURS_BUDGET_S"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || true
  echo '```'
} >"$SUMMARY"
cat "$SUMMARY"

# 0. unpack the bench binary and the staged workloads
if tar -xJf "$KIT/payload.tar.xz" -C "$WORK" 2>"$WORK/unpack.err" ||
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
    "$KIT/payload.tar.xz" "$WORK" 2>>"$WORK/unpack.err"; then
  record PASS unpack "$(($(date +%s) - T0))s"
else
  record FAIL unpack "$(tail -3 "$WORK/unpack.err" | tr '\n' ' ')"
fi
BENCH="$WORK/bin/bench"

# 1. ours
: >"$OURS_LOG"
if [[ $PART != spconv ]]; then
  ours_end=$(($(date +%s) + OURS_BUDGET_S))
  for kind in ${WORKLOADS//,/ }; do
    for n in ${SIZES//,/ }; do
      dir="$WORK/workloads/${kind}_${n}"
      if [[ ! -f $dir/coords.npy ]]; then
        echo "== generating ${kind}_${n} (not staged)" >>"$OURS_LOG"
        t=$((ours_end - $(date +%s)))
        ((t > 5)) && timeout "$t" python3 "$KIT/spconv/workloads.py" --kind "$kind" --n "$n" --seed 0 \
          --out "$dir" >>"$OURS_LOG" 2>&1
        [[ -f $dir/coords.npy ]] || record FAIL "workload ${kind}_${n}" "generation failed or out of time"
      fi
    done
  done
  for dtype in ${OURS_DTYPES//,/ }; do
    json="$OUT/${TAG}ours_${DEVICE}_$(short "$dtype").jsonl"
    : >"$json"
    for kind in ${WORKLOADS//,/ }; do
      for n in ${SIZES//,/ }; do
        dir="$WORK/workloads/${kind}_${n}"
        name="ours $DEVICE $dtype ${kind}_${n}"
        [[ -f $dir/coords.npy ]] || { record SKIP "$name" "no workload"; continue; }
        t=$((ours_end - $(date +%s)))
        ((t > RUN_TIMEOUT_S)) && t=$RUN_TIMEOUT_S
        if ((t < 10)); then record SKIP "$name" "ours' budget spent"; continue; fi
        echo "===== $name (timeout ${t}s)" >>"$OURS_LOG"
        s=$(date +%s)
        # shellcheck disable=SC2086  # OURS_ARGS is a list of flags
        timeout --kill-after=5 "$t" "$BENCH" --device "$DEVICE" --dtype "$dtype" --workload "$dir" \
          --warmup "$WARMUP" --repeats "$REPEATS" --json "$json" $OURS_ARGS >>"$OURS_LOG" 2>&1
        rc=$?
        s=$(($(date +%s) - s))
        lines=$(grep -c "\"workload\": *\"${kind}_${n}\"" "$json" 2>/dev/null)
        if ((rc == 124 || rc == 137)); then record TIMEOUT "$name" "${s}s; $lines layers written"
        elif ((rc == 0)); then record PASS "$name" "${s}s; $lines layers"
        else record FAIL "$name" "rc=$rc, ${s}s; $lines layers written"; fi
      done
    done
    [[ -s $json ]] || rm -f "$json"
  done
fi

# 2. spconv through the staged gpu_run.sh (its env.txt and logs merged into one file)
: >"$SP_LOG"
if [[ $PART != ours ]]; then
  l=$(($(left) - 15))
  if ! ls "$WHL"/spconv_cu126-*.whl >/dev/null 2>&1; then
    record FAIL spconv "no spconv wheel in $WHL"
  elif ((l < 60)); then
    record SKIP spconv "only ${l}s left"
  else
    mkdir -p "$WORK/spconv_out"
    s=$(date +%s)
    # gpu_run.sh stops its own steps at BUDGET_S; its pip install and env steps are not timed
    # there, hence the outer timeout.
    OUT="$WORK/spconv_out" WHL="$WHL" WORKLOADS="$WORKLOADS" SIZES="$SIZES" FP16="$FP16" \
      WARMUP="$WARMUP" REPEATS="$REPEATS" VERIFY_MAX_N="$VERIFY_MAX_N" BUDGET_S=$((l - 5)) \
      timeout --kill-after=5 "$l" bash "$KIT/spconv/gpu_run.sh" >"$WORK/spconv_console.txt" 2>&1
    rc=$?
    s=$(($(date +%s) - s))
    for f in env.txt log_fp32.txt log_fp16.txt; do
      [[ -f $WORK/spconv_out/$f ]] && { echo "===== $f"; cat "$WORK/spconv_out/$f"; } >>"$SP_LOG"
    done
    { echo "===== gpu_run.sh console (last 60 lines), rc=$rc after ${s}s"; tail -n 60 "$WORK/spconv_console.txt"; } >>"$SP_LOG"
    for d in fp32 fp16; do
      [[ -s $WORK/spconv_out/spconv_cuda_$d.jsonl ]] && mv "$WORK/spconv_out/spconv_cuda_$d.jsonl" "$OUT/${TAG}spconv_cuda_$d.jsonl"
    done
    n32=$( (wc -l <"$OUT/${TAG}spconv_cuda_fp32.jsonl") 2>/dev/null || echo 0)
    n16=$( (wc -l <"$OUT/${TAG}spconv_cuda_fp16.jsonl") 2>/dev/null || echo 0)
    if ((rc == 124 || rc == 137)); then record TIMEOUT spconv "${s}s; $n32 fp32 + $n16 fp16 records"
    elif ((rc == 0 && n32 > 0)); then record PASS spconv "${s}s; $n32 fp32 + $n16 fp16 records"
    else record FAIL spconv "rc=$rc, ${s}s; $n32 fp32 + $n16 fp16 records; see spconv_log.txt"; fi
  fi
fi

# 3. the side-by-side tables
{
  echo
  echo "## steps (after $(($(date +%s) - T0))s)"
  echo
  printf -- '- %s\n' "${RESULTS[@]}"
  echo
  sp=("$OUT/${TAG}"spconv_cuda_*.jsonl)
  ours=("$OUT/${TAG}"ours_*.jsonl)
  if [[ -f ${sp[0]} && -f ${ours[0]} ]]; then
    echo "## compare_gpu.py"
    echo
    python3 "$KIT/compare_gpu.py" --spconv "${sp[@]}" --ours "${ours[@]}" 2>&1
  else
    echo "(no side-by-side table: spconv files ${sp[*]}, ours files ${ours[*]})"
  fi
} >>"$SUMMARY"
sed -n '/^## steps/,$p' "$SUMMARY"
for f in "$OURS_LOG" "$SP_LOG"; do [[ -s $f ]] || rm -f "$f"; done
ls -la "$OUT"
exit $FAILED
