#!/usr/bin/env bash
# Stage the GPU session kit: release builds and data for a CUDA machine that has no Rust and no
# internet, small enough for the device tool's 64 MiB per call (working tree + carried paths).
#
#   scripts/gpu/stage.sh [TESTS_DIR [BENCH_DIR]]      (defaults: .gpu-stage .gpu-bench)
#
# Relative dirs are taken from the repository root. Both must be git-ignored in the checkout
# they sit in (that checkout is what the device tool sends: for a helper's worktree, pass
# /path/to/main/.gpu-stage /path/to/main/.gpu-bench). Two kits, because the spconv dumps
# (31 MiB) and the spconv wheels (.whl, ~39 MiB) do not fit in one call together:
#
#   TESTS_DIR  tests.sh, MANIFEST.txt, payload.tar.xz = bin/test-* (the test binaries whose
#              tests touch CUDA: facade tests with cuda/nvrtc tests but cuda_emulated, and the
#              runtime's unit tests, run with filter `cuda::`), bin/tests.txt (name, filter),
#              bin/demo, bin/conformance, bin/spconv_model, conformance/ (../shared/conformance),
#              kitti/000000.bin (../shared/data/kitti, for the demo)
#              → carried alone:            carry [".gpu-stage"]
#   BENCH_DIR  bench.sh, compare_gpu.py, MANIFEST.txt, spconv/ (copies of ../shared/bench's
#              workloads.py spconv_bench.py refconv.py summarize.py gpu_run.sh check_dump.py),
#              payload.tar.xz = bin/bench + workloads/{lidar,room}_{20000,120000,500000}/
#              → carried with the wheels:  carry [".gpu-bench", ".whl"]
#
# Binaries are stripped of debug info (symbols kept, for backtraces) and everything big is
# xz-compressed; the runners unpack into /tmp there. Fails when either call would exceed
# LIMIT_MIB (60) with the working tree that travels.
#
# Knobs (environment): SHARED (<repo>/../shared), WHL (.whl beside TESTS_DIR), LIMIT_MIB=60,
#   EXCLUDE_TESTS="cuda_emulated" (CPU emulation with g++: CI runs it), GEN_WORKLOADS=lidar,room,
#   GEN_SIZES=20000,120000,500000, NO_BUILD=1 (stage the existing target/release).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
SHARED="${SHARED:-$ROOT/../shared}"
LIMIT_MIB="${LIMIT_MIB:-60}"
EXCLUDE_TESTS="${EXCLUDE_TESTS:-cuda_emulated}"
GEN_WORKLOADS="${GEN_WORKLOADS:-lidar,room}"
GEN_SIZES="${GEN_SIZES:-20000,120000,500000}"
TESTS_DIR="$(realpath -m "${1:-.gpu-stage}")"
BENCH_DIR="$(realpath -m "${2:-.gpu-bench}")"
SEND_ROOT="$(git -C "$(dirname "$TESTS_DIR")" rev-parse --show-toplevel)"
WHL="$(realpath -m "${WHL:-$SEND_ROOT/.whl}")"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

die() { echo "stage.sh: $*" >&2; exit 1; }
[[ -d $SHARED/conformance && -f $SHARED/bench/gpu_run.sh ]] || die "no $SHARED/{conformance,bench}: set SHARED"
for d in "$TESTS_DIR" "$BENCH_DIR"; do
  [[ $(git -C "$(dirname "$d")" rev-parse --show-toplevel) == "$SEND_ROOT" ]] ||
    die "$TESTS_DIR and $BENCH_DIR must sit in the same checkout"
  [[ $d != "$SEND_ROOT" && $d == "$SEND_ROOT"/* ]] || die "$d must be inside $SEND_ROOT"
  mkdir -p "$d" # a pattern like /.gpu-stage/ matches directories only
  git -C "$SEND_ROOT" check-ignore -q "$d" ||
    die "$d is not git-ignored: add '/${d#"$SEND_ROOT"/}/' to $SEND_ROOT/.git/info/exclude"
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 1. build (release): the examples and every workspace test binary
if [[ ${NO_BUILD:-0} != 1 ]]; then
  cargo build --release --examples
fi
cargo test --release --workspace --no-run --message-format=json >"$tmp/build.json"
python3 - "$tmp/build.json" >"$tmp/test_exes.txt" <<'EOF'
import json, sys
seen = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        t = m["target"]
        seen[(t["name"], t["kind"][0])] = m["executable"]
for (name, kind), exe in sorted(seen.items()):
    print(f"{name}\t{kind}\t{exe}")
EOF

# 2. tests kit
mkdir -p "$tmp/t/bin"
: >"$tmp/t/bin/tests.txt"
manifest_tests=""
while IFS=$'\t' read -r name kind exe; do
  filter=""
  if [[ $kind == lib && $name == sparsegen_runtime ]]; then
    filter="cuda::"
  elif [[ $kind != test ]] || [[ " $EXCLUDE_TESTS " == *" $name "* ]]; then
    continue
  fi
  count=$("$exe" --list 2>/dev/null | grep ': test$' | grep -cE "${filter:-cuda|nvrtc}" || true)
  ((count > 0)) || continue
  total=$("$exe" --list 2>/dev/null | grep -c ': test$' || true)
  strip --strip-debug -o "$tmp/t/bin/test-$name" "$exe"
  printf '%s\t%s\n' "$name" "$filter" >>"$tmp/t/bin/tests.txt"
  manifest_tests+="  test-$name: $total tests ($count cuda/nvrtc), run with filter '${filter}'"$'\n'
done <"$tmp/test_exes.txt"
[[ -s $tmp/t/bin/tests.txt ]] || die "no CUDA test binaries found"
# run order there (the budget may run out): the conv tests first, NVRTC-only compiles last
sort -t$'\t' -k1,1 "$tmp/t/bin/tests.txt" | awk -F'\t' '
  { r = ($1 == "cuda_conv") ? 0 : ($1 == "cuda_nvrtc") ? 3 : ($1 == "sparsegen_runtime") ? 2 : 1; print r "\t" $0 }' |
  sort -s -t$'\t' -k1,1n | cut -f2- >"$tmp/t/bin/tests.sorted" && mv "$tmp/t/bin/tests.sorted" "$tmp/t/bin/tests.txt"
for ex in demo conformance spconv_model; do
  strip --strip-debug -o "$tmp/t/bin/$ex" "$TARGET/release/examples/$ex"
done
mkdir -p "$tmp/t/kitti"
[[ -f $SHARED/data/kitti/000000.bin ]] && cp "$SHARED/data/kitti/000000.bin" "$tmp/t/kitti/"
cp -r "$SHARED/conformance" "$tmp/t/conformance"
chmod -R u+w "$tmp/t"

commit="$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD 2>/dev/null || echo '-dirty')"
manifest() {
  echo "kit $1 staged $(date -u +%FT%TZ) from $(git rev-parse --abbrev-ref HEAD)@$commit"
  echo "  $(git log -1 --format=%s | cut -c1-150)"
}
rm -rf "$TESTS_DIR" && mkdir -p "$TESTS_DIR"
echo "== compressing the tests kit (xz -9)"
tar -cf - -C "$tmp/t" . | xz -9 -T1 >"$TESTS_DIR/payload.tar.xz"
cp scripts/gpu/tests.sh "$TESTS_DIR/"
{
  manifest tests
  printf '%s' "$manifest_tests"
  echo "  demo, conformance, spconv_model examples; conformance dumps: $(cd "$SHARED/conformance" && echo *)"
} >"$TESTS_DIR/MANIFEST.txt"

# 3. bench kit: the bench example, the staged workloads (cached by workloads.py's hash)
mkdir -p "$tmp/b/bin" "$tmp/b/workloads"
strip --strip-debug -o "$tmp/b/bin/bench" "$TARGET/release/examples/bench"
wl_cache="$TARGET/gpu-kit-workloads/$(sha256sum "$SHARED/bench/workloads.py" | cut -c1-16)"
for kind in ${GEN_WORKLOADS//,/ }; do
  for n in ${GEN_SIZES//,/ }; do
    if [[ ! -f $wl_cache/${kind}_$n/coords.npy ]]; then
      echo "== generating workload ${kind}_$n"
      python3 "$SHARED/bench/workloads.py" --kind "$kind" --n "$n" --seed 0 --out "$wl_cache/${kind}_$n" >/dev/null
    fi
    cp -r "$wl_cache/${kind}_$n" "$tmp/b/workloads/"
  done
done
rm -rf "$BENCH_DIR" && mkdir -p "$BENCH_DIR/spconv"
echo "== compressing the bench kit (xz -9)"
tar -cf - -C "$tmp/b" . | xz -9 -T1 >"$BENCH_DIR/payload.tar.xz"
cp scripts/gpu/bench.sh scripts/compare_gpu.py "$BENCH_DIR/"
for f in workloads.py spconv_bench.py refconv.py summarize.py gpu_run.sh check_dump.py; do
  cp "$SHARED/bench/$f" "$BENCH_DIR/spconv/"
done
chmod -R u+w "$BENCH_DIR"
{
  manifest bench
  echo "  bench example; workloads $(cd "$tmp/b/workloads" && echo *)"
} >"$BENCH_DIR/MANIFEST.txt"

# 4. sizes: what each device call sends (the checkout's tracked + untracked-not-ignored files,
#    plus the carried paths)
bytes() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
tree=$(cd "$SEND_ROOT" && git ls-files -z -co --exclude-standard |
  python3 -c 'import os, sys; print(sum(os.lstat(p).st_size for p in sys.stdin.buffer.read().decode().split("\0") if p and os.path.lexists(p)))')
t=$(bytes "$TESTS_DIR")
b=$(bytes "$BENCH_DIR")
w=$(bytes "$WHL")
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
call1=$((tree + t))
call2=$((tree + b + w))
echo
echo "staged: $TESTS_DIR $(mib "$t"), $BENCH_DIR $(mib "$b"); $WHL $(mib "$w"); working tree $(mib "$tree")"
echo "tests call  (carry [\"${TESTS_DIR#"$SEND_ROOT"/}\"]):                  $(mib "$call1")"
echo "bench calls (carry [\"${BENCH_DIR#"$SEND_ROOT"/}\", \"${WHL#"$SEND_ROOT"/}\"]):  $(mib "$call2")"
echo "(all of it at once would be $(mib $((tree + t + b + w))): over the 64 MiB a call may send)"
ls -la "$TESTS_DIR" "$BENCH_DIR"
cat "$TESTS_DIR/MANIFEST.txt" "$BENCH_DIR/MANIFEST.txt"
((w > 0)) || echo "WARNING: no wheels in $WHL (see ../shared/bench/README.md): the bench calls need them"
limit=$((LIMIT_MIB * 1048576))
((call1 <= limit)) || die "the tests call would send $(mib "$call1") > $LIMIT_MIB MiB"
((call2 <= limit)) || die "the bench calls would send $(mib "$call2") > $LIMIT_MIB MiB"
echo "OK: both calls within $LIMIT_MIB MiB"
