#!/usr/bin/env python3
"""Side-by-side tables of spconv_bench.py (CUDA) and examples/bench.rs (--device cuda) results.

  python3 scripts/compare_gpu.py SPCONV.jsonl OURS.jsonl
  python3 scripts/compare_gpu.py --spconv A.jsonl B.jsonl --ours C.jsonl D.jsonl [--stat median|min]
        [--rulebook fresh|cached] [--exclude-failed-verify]
  python3 scripts/compare_gpu.py --self-test [SPCONV_RESULTS_DIR]

Every file may hold several dtypes and workloads (the GPU kit's calls each bring back one
file per library and dtype); rows are grouped by dtype and paired by (workload, layer).

spconv writes one record per (workload, layer, algorithm) (`native` = gather-GEMM-scatter,
`implicit` = MaskImplicitGemm); its column for a row is the better algorithm: each of
map/conv/layer is the minimum over the algorithms of that metric, and `algo` names the one
with the faster layer. Ours: `map_ms`, `conv_ms`, `layer_ms` (wall clock, synchronised, as
spconv measures), plus `kernel_ms` (CUDA events) for information; only `rulebook: fresh`
records unless --rulebook cached. When a key appears more than once, the last record wins.
spconv records whose own --verify failed are listed under the table (spconv 2.3.8's
MaskImplicitGemm SubM k=5 is wrong on an H100, fp32 and fp16); --exclude-failed-verify leaves
such an algorithm out of every row of that dtype and layer.

A ratio is spconv time / sparsegen time (> 1: we are faster). Per dtype: the table, the
geometric means, the slowest row, and the issue's targets: whole layer >= 2x (geomean),
no row slower (layer), room_500000 subm3_c128 fp16 conv <= 0.4 ms.
"""
import json
import math
import os
import sys
import tempfile

LAYER_ORDER = ["subm3_c16", "subm3_c32", "subm3_c64", "subm3_c128", "spconv3_s2_c32_64",
               "invconv3_c64_32", "subm5_c32"]
DTYPE_NAMES = {"f32": "float32", "float32": "float32", "f16": "float16", "float16": "float16",
               "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}
LAYER_TARGET = 2.0                      # geomean of whole-layer ratios
FP16_CONV_TARGET = ("room_500000", "subm3_c128", "float16", 0.4)   # ours conv_ms <= 0.4
# spconv's own --verify against the float64 reference (max error / max |ref|): a record above
# this is listed as a problem (spconv 2.3.8's fp32 MaskImplicitGemm SubM k=5 gives wrong rows
# on an H100); its time still counts in the min over algorithms, as the definition says.
VERIFY_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 1e-2}


def dtype_of(r):
    return DTYPE_NAMES.get(str(r.get("dtype", "float32")).lower(), r.get("dtype"))


def stat(v, which):
    """A timing field: a number (ours' medians) or spconv's {median, min, ...}."""
    if v is None:
        return None
    if isinstance(v, dict):
        return v.get(which)
    return float(v)


def read_jsonl(paths):
    for path in paths:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or not line.startswith("{"):
                    continue
                try:
                    yield json.loads(line)
                except ValueError as e:
                    print(f"warning: {path}:{n}: {e}", file=sys.stderr)


def failed_verify(dtype, r):
    v = r.get("verify")
    return isinstance(v, dict) and (v.get("coords_match") is False
                                    or (v.get("max_rel_err") or 0) > VERIFY_TOLERANCE.get(dtype, 1e-2))


def load_spconv(paths, which, exclude_failed_verify=False):
    """(dtype, workload, layer) -> best-of-algorithms row. With exclude_failed_verify, an
    algorithm that failed spconv's own --verify on a (dtype, layer) at any size (it verifies
    only small sizes) is left out of every row of that (dtype, layer)."""
    per = {}
    for r in read_jsonl(paths):
        if r.get("error") or r.get("lib", "spconv") != "spconv":
            continue
        per.setdefault((dtype_of(r), r["workload"], r["layer"]), {})[r.get("algo", "default")] = r
    failed = {(k[0], k[2], a) for k, algos in per.items() for a, r in algos.items() if failed_verify(k[0], r)}
    rows = {}
    for key, algos in per.items():
        if exclude_failed_verify:
            kept = {a: r for a, r in algos.items() if (key[0], key[2], a) not in failed}
            algos = kept or algos
        def best(field):
            vals = [stat(a.get(field), which) for a in algos.values()]
            vals = [v for v in vals if v is not None]
            return min(vals) if vals else None
        by_layer = min(algos.items(), key=lambda kv: stat(kv[1].get("layer_ms"), which) or math.inf)
        any_row = by_layer[1]
        bad_verify = [a for a, r in algos.items() if failed_verify(key[0], r)]
        rows[key] = dict(map=best("indice_ms"), conv=best("compute_ms"), layer=best("layer_ms"),
                         algo=by_layer[0], n_in=any_row.get("n_in"), n_out=any_row.get("n_out"),
                         bad_verify=bad_verify)
    return rows


def load_ours(paths, which, rulebook):
    rows = {}
    for r in read_jsonl(paths):
        if r.get("error") or r.get("lib", "sparsegen") != "sparsegen":
            continue
        if r.get("rulebook", "fresh") != rulebook:
            continue
        if which == "median":
            m, c, lay, k = r.get("map_ms"), r.get("conv_ms"), r.get("layer_ms"), r.get("kernel_ms")
        else:
            m, c, lay = (stat(r.get(f), which) for f in ("map_stats", "conv_stats", "layer_stats"))
            k = stat(r.get("kernel_stats"), which) if r.get("kernel_stats") else r.get("kernel_ms")
        rows[(dtype_of(r), r["workload"], r["layer"])] = dict(
            map=m, conv=c, layer=lay, kernel=k, n_in=r.get("n_in"), n_out=r.get("n_out"),
            variant=r.get("variant", "-"), device=r.get("device"), gpu=r.get("gpu"))
    return rows


def ratio(a, b):
    return None if not a or not b else a / b


def fmt(v, nd=3):
    return "-" if v is None else f"{v:.{nd}f}"


def geomean(vs):
    vs = [v for v in vs if v]
    return math.exp(sum(math.log(v) for v in vs) / len(vs)) if vs else None


def sort_key(key):
    _dtype, workload, layer = key
    kind, _, n = workload.rpartition("_")
    return (kind, int(n) if n.isdigit() else 0, workload,
            LAYER_ORDER.index(layer) if layer in LAYER_ORDER else 99, layer)


def compare(spconv, ours):
    """Markdown report (a string) and a summary dict per dtype (for the self-test)."""
    out, summary = [], {}
    dtypes = sorted({k[0] for k in spconv} | {k[0] for k in ours},
                    key=lambda d: ["float32", "float16", "bfloat16"].index(d)
                    if d in ("float32", "float16", "bfloat16") else 9)
    for dtype in dtypes:
        s_keys = {k for k in spconv if k[0] == dtype}
        o_keys = {k for k in ours if k[0] == dtype}
        paired = sorted(s_keys & o_keys, key=sort_key)
        gpus = sorted({ours[k]["gpu"] for k in o_keys if ours[k].get("gpu")})
        devices = sorted({str(ours[k]["device"]) for k in o_keys if ours[k].get("device") != "cuda"})
        out.append(f"### {dtype}" + (f" ({', '.join(gpus)})" if gpus else "")
                   + (f" — NOTE: ours ran on {', '.join(devices)}, not cuda" if devices else ""))
        out.append("")
        out.append("| workload | layer | N_in | N_out | spconv algo | spconv map | spconv conv | spconv layer "
                   "| ours map | ours conv | ours kernel | ours layer | map × | conv × | layer × | variant |")
        out.append("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        maps, convs, layers, problems = [], [], [], []
        slowest = None
        for key in paired:
            s, o = spconv[key], ours[key]
            _, wl, layer = key
            if s["n_out"] != o["n_out"] or (s["n_in"] != o["n_in"] and "invconv" not in layer):
                problems.append(f"{wl} {layer}: sizes differ (spconv {s['n_in']}→{s['n_out']}, "
                                f"ours {o['n_in']}→{o['n_out']})")
            if s["bad_verify"]:
                problems.append(f"{wl} {layer}: spconv's own --verify failed for algo {'/'.join(s['bad_verify'])} "
                                "(its time still counts in the spconv columns)")
            rm, rc, rl = ratio(s["map"], o["map"]), ratio(s["conv"], o["conv"]), ratio(s["layer"], o["layer"])
            maps += [rm] if rm else []
            convs += [rc] if rc else []
            if rl:
                layers.append(rl)
                if slowest is None or rl < slowest[0]:
                    slowest = (rl, wl, layer)
                if rl < 1.0:
                    problems.append(f"{wl} {layer}: whole layer slower than spconv ({rl:.2f}x)")
            out.append(f"| {wl} | {layer} | {o['n_in']} | {o['n_out']} | {s['algo']} | {fmt(s['map'])} | "
                       f"{fmt(s['conv'])} | {fmt(s['layer'])} | {fmt(o['map'])} | {fmt(o['conv'])} | "
                       f"{fmt(o['kernel'])} | {fmt(o['layer'])} | {fmt(rm, 2)} | {fmt(rc, 2)} | "
                       f"{fmt(rl, 2)} | {o['variant']} |")
        g_layer, g_map, g_conv = geomean(layers), geomean(maps), geomean(convs)
        out.append("")
        out.append(f"**{dtype}: {len(paired)} rows; geomean speedup: layer {fmt(g_layer, 2)}x "
                   f"(target >= {LAYER_TARGET:g}), map {fmt(g_map, 2)}x, conv {fmt(g_conv, 2)}x**")
        if slowest:
            out.append(f"- slowest row (layer): {slowest[1]} {slowest[2]} at {slowest[0]:.2f}x")
        checks = []
        if layers:
            checks.append(("whole layer >= 2x (geomean)", g_layer >= LAYER_TARGET, f"{g_layer:.2f}x"))
            checks.append(("no row slower (layer >= 1x)", slowest[0] >= 1.0,
                           f"min {slowest[0]:.2f}x ({slowest[1]} {slowest[2]})"))
        wl_t, layer_t, dtype_t, ms_t = FP16_CONV_TARGET
        if dtype == dtype_t:
            o = ours.get((dtype, wl_t, layer_t))
            if o is None or o["conv"] is None:
                checks.append((f"{wl_t} {layer_t} fp16 conv <= {ms_t} ms", None, "not measured"))
            else:
                checks.append((f"{wl_t} {layer_t} fp16 conv <= {ms_t} ms", o["conv"] <= ms_t,
                               f"{o['conv']:.3f} ms (kernel {fmt(o['kernel'])} ms)"))
        for name, ok, detail in checks:
            mark = "PASS" if ok else ("n/a" if ok is None else "FAIL")
            out.append(f"- target {mark}: {name}: {detail}")
        unpaired = sorted((s_keys ^ o_keys), key=sort_key)
        if unpaired:
            only_s = [f"{k[1]} {k[2]}" for k in unpaired if k in s_keys]
            only_o = [f"{k[1]} {k[2]}" for k in unpaired if k in o_keys]
            for who, names in (("spconv", only_s), ("ours", only_o)):
                if names:
                    more = f", … ({len(names) - 14} more)" if len(names) > 14 else ""
                    out.append(f"- only {who} ({len(names)}): {', '.join(names[:14])}{more}")
        for p in problems:
            out.append(f"- {p}")
        out.append("")
        summary[dtype] = dict(rows=len(paired), geomean_layer=g_layer, geomean_map=g_map,
                              geomean_conv=g_conv, slowest=slowest, checks=checks, problems=problems,
                              unpaired=len(unpaired))
    return "\n".join(out), summary


def main(argv):
    which, rulebook, exclude = "median", "fresh", False
    spconv_files, ours_files, positional, mode = [], [], [], None
    it = iter(argv)
    for a in it:
        if a == "--stat":
            which = next(it)
        elif a == "--rulebook":
            rulebook = next(it)
        elif a == "--exclude-failed-verify":
            exclude = True
        elif a == "--spconv":
            mode = spconv_files
        elif a == "--ours":
            mode = ours_files
        elif a.startswith("--"):
            sys.exit(f"unknown option {a}\n{__doc__}")
        else:
            (mode if mode is not None else positional).append(a)
    if positional:
        if len(positional) != 2 or spconv_files or ours_files:
            sys.exit(__doc__)
        spconv_files, ours_files = [positional[0]], [positional[1]]
    if not spconv_files and not ours_files:
        sys.exit(__doc__)
    text, _ = compare(load_spconv(spconv_files, which, exclude), load_ours(ours_files, which, rulebook))
    print(f"statistic: {which}; ours' rulebook: {rulebook}; spconv = better of its algorithms per metric"
          + (" (algorithms that failed spconv's own --verify for a dtype and layer left out)" if exclude else ""))
    print()
    print(text)


# ---------------------------------------------------------------------------------------------
# self-test: fabricated ours-files against synthetic spconv records and, when present, the real
# spconv H100 records of ../shared/bench/results (nothing is written outside a temp folder).

def _spconv_record(wl, layer, algo, dtype, m, c, lay, n_in=1000, n_out=1000):
    st = lambda v: None if v is None else {"median": v, "min": v * 0.9, "all": [v]}
    return dict(lib="spconv", workload=wl, layer=layer, algo=algo, dtype=dtype, device="cuda",
                n_in=n_in, n_out=n_out, indice_ms=st(m), compute_ms=st(c), layer_ms=st(lay))


def _ours_record(wl, layer, dtype, m, c, lay, n_in=1000, n_out=1000, rulebook="fresh"):
    return dict(lib="sparsegen", workload=wl, layer=layer, dtype=dtype, device="cuda", gpu="TEST GPU",
                n_in=n_in, n_out=n_out, map_ms=m, conv_ms=c, layer_ms=lay, kernel_ms=c and c * 0.8,
                variant="t", rulebook=rulebook,
                map_stats=None if m is None else {"median": m, "min": m / 2},
                conv_stats={"median": c, "min": c / 2}, layer_stats={"median": lay, "min": lay / 2})


def _write(dir_, name, records):
    path = os.path.join(dir_, name)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def self_test(results_dir):
    def check(cond, what):
        if not cond:
            raise AssertionError(what)
        print(f"ok  {what}")

    with tempfile.TemporaryDirectory() as tmp:
        # 1. synthetic: exact numbers.
        s = [
            _spconv_record("room_500000", "subm3_c128", "native", "float16", 0.33, 3.6, 3.9),
            _spconv_record("room_500000", "subm3_c128", "implicit", "float16", 0.37, 1.2, 1.6),
            _spconv_record("room_500000", "invconv3_c64_32", "native", "float16", None, 0.5, 0.6, 166, 500),
            _spconv_record("room_500000", "invconv3_c64_32", "implicit", "float16", None, 0.2, 0.25, 166, 500),
            _spconv_record("lidar_20000", "subm3_c16", "native", "float32", 0.1, 0.3, 0.5),
            _spconv_record("lidar_20000", "subm3_c16", "implicit", "float32", 0.12, 0.2, 0.4),
            _spconv_record("lidar_20000", "subm3_c32", "native", "float32", 0.1, 0.3, 0.4),
            _spconv_record("lidar_20000", "subm5_c32", "native", "float32", 0.1, 0.3, 0.4),
            dict(lib="spconv", workload="lidar_20000", layer="subm3_c64", algo="native", error="boom"),
        ]
        o = [
            _ours_record("room_500000", "subm3_c128", "float16", 0.1, 0.35, 0.4),         # 4x
            _ours_record("room_500000", "invconv3_c64_32", "float16", None, 0.1, 0.125, 166, 500),  # 2x
            _ours_record("lidar_20000", "subm3_c16", "float32", 0.05, 0.1, 0.9),           # stale: replaced below
            _ours_record("lidar_20000", "subm3_c16", "float32", 0.05, 0.1, 0.1),           # 4x
            _ours_record("lidar_20000", "subm3_c32", "float32", 0.05, 0.1, 0.5, n_out=999),  # 0.8x, size mismatch
            _ours_record("lidar_20000", "subm3_c32", "float32", 0.01, 0.01, 0.01, rulebook="cached"),  # ignored
            _ours_record("lidar_20000", "subm3_c128", "float32", 0.05, 0.1, 0.2),          # unpaired
        ]
        sp, op = _write(tmp, "s.jsonl", s), _write(tmp, "o.jsonl", o)
        spconv, ours = load_spconv([sp], "median"), load_ours([op], "median", "fresh")
        check(spconv[("float16", "room_500000", "subm3_c128")]["conv"] == 1.2, "spconv conv = min over algorithms")
        check(spconv[("float16", "room_500000", "subm3_c128")]["map"] == 0.33, "spconv map = min over algorithms")
        check(spconv[("float16", "room_500000", "subm3_c128")]["algo"] == "implicit", "algo = faster layer")
        check(("float32", "lidar_20000", "subm3_c64") not in spconv, "error records are skipped")
        check(ours[("float32", "lidar_20000", "subm3_c16")]["layer"] == 0.1, "last record of a key wins")
        check(ours[("float32", "lidar_20000", "subm3_c32")]["layer"] == 0.5, "cached-rulebook records ignored")
        text, summ = compare(spconv, ours)
        f16, f32 = summ["float16"], summ["float32"]
        check(f16["rows"] == 2 and abs(f16["geomean_layer"] - math.sqrt(4.0 * 2.0)) < 1e-9, "fp16 geomean of layer ratios")
        check(f16["slowest"][2] == "invconv3_c64_32", "fp16 slowest row")
        check([c[1] for c in f16["checks"]] == [True, True, True], "fp16 targets pass (2.83x, min 2x, conv 0.35 ms)")
        check(f32["rows"] == 2 and abs(f32["geomean_layer"] - math.sqrt(4.0 * 0.8)) < 1e-9, "fp32 geomean")
        check([c[1] for c in f32["checks"]] == [False, False], "fp32 targets fail (1.79x; a row at 0.80x)")
        check(any("sizes differ" in p for p in f32["problems"]), "size mismatch reported")
        check(not any("invconv" in p for p in f16["problems"]), "inverse conv may differ in n_in")
        check(f32["unpaired"] == 2, "unpaired rows counted (subm5_c32 spconv-only, subm3_c128 ours-only)")
        check("| lidar_20000 | subm3_c16 | 1000 | 1000 | implicit | 0.100 | 0.200 | 0.400 | 0.050 | 0.100 |"
              in text, "table row")
        _, summ_min = compare(load_spconv([sp], "min"), load_ours([op], "min", "fresh"))
        check(abs(summ_min["float16"]["geomean_layer"] - 0.9 * math.sqrt(4.0 * 2.0) * 2) < 1e-9,
              "--stat min uses the min of both sides")
        # the fp16 target when conv is too slow / missing
        o2 = [_ours_record("room_500000", "subm3_c128", "float16", 0.1, 0.5, 0.6)]
        _, summ2 = compare(spconv, load_ours([_write(tmp, "o2.jsonl", o2)], "median", "fresh"))
        check(summ2["float16"]["checks"][-1][1] is False, "fp16 conv target fails at 0.5 ms")
        _, summ3 = compare(spconv, {})
        check(summ3["float16"]["checks"][-1][1] is None, "fp16 conv target n/a when not measured")

        # 2. real spconv H100 records with a fabricated ours-file (every row 3x faster, one 0.9x).
        files = sorted(os.path.join(results_dir, f) for f in os.listdir(results_dir)
                       if f.startswith("spconv_h100") and f.endswith(".jsonl")) if os.path.isdir(results_dir) else []
        if not files:
            print(f"skip real-record check: no spconv_h100*.jsonl in {results_dir}")
        else:
            spconv = load_spconv(files, "median")
            fab = []
            for (dtype, wl, layer), r in sorted(spconv.items()):
                f = 0.9 if (wl, layer) == ("lidar_120000", "subm5_c32") else 3.0
                fab.append(_ours_record(wl, layer, dtype, r["map"] and r["map"] / 3, r["conv"] / 3,
                                        r["layer"] / f, r["n_in"], r["n_out"]))
            ours = load_ours([_write(tmp, "ours_fab.jsonl", fab)], "median", "fresh")
            text, summ = compare(spconv, ours)
            check(set(summ) == {"float32", "float16"}, "real records: fp32 and fp16 groups")
            check(summ["float16"]["rows"] == 42 and summ["float32"]["rows"] >= 42, "real records: rows paired")
            for d in summ.values():
                check(d["slowest"][1:] == ("lidar_120000", "subm5_c32") and abs(d["slowest"][0] - 0.9) < 1e-9,
                      "real records: slowest row found")
                check(d["checks"][0][1] is True and d["checks"][1][1] is False, "real records: targets")
            for d in summ.values():
                check(sorted(p.split(":")[0] for p in d["problems"])
                      == ["lidar_120000 subm5_c32", "lidar_20000 subm5_c32", "room_20000 subm5_c32"],
                      "real records: the slow row, and subm5 implicit failing spconv's own verify at 20k")
            excl = load_spconv(files, "median", exclude_failed_verify=True)
            check(excl[("float16", "room_500000", "subm5_c32")]["algo"] == "native"
                  and spconv[("float16", "room_500000", "subm5_c32")]["algo"] == "implicit",
                  "--exclude-failed-verify drops implicit from every subm5_c32 row of that dtype")
            print()
            print(text.split("\n\n")[0].split("\n")[0])
            print("\n".join(text.split("\n")[2:7]))
    print("self-test passed")


if __name__ == "__main__":
    if "--self-test" in sys.argv:
        rest = [a for a in sys.argv[1:] if a != "--self-test"]
        here = os.path.dirname(os.path.abspath(__file__))
        self_test(rest[0] if rest else os.path.join(here, "..", "..", "shared", "bench", "results"))
    else:
        main(sys.argv[1:])
