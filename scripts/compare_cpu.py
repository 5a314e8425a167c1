#!/usr/bin/env python3
"""Side-by-side table of spconv_bench.py (CPU) and examples/bench.rs results.

  python3 scripts/compare_cpu.py spconv_cpu.jsonl sparsegen_cpu.jsonl [--stat median|min]

--stat min compares the fastest call of each side instead of the medians: more robust when
the machine is shared (noise only ever adds time), but not the issue's definition.

Rows are paired by (workload, layer); a ratio is spconv time / sparsegen time (> 1: we are
faster). Prints the table, the geometric means and the issue's targets: layer >= 3x
(geomean), map >= 5x (geomean), conv >= 1.0x on every 64/128-channel row, never slower on
any row (layer).
"""
import json
import math
import sys


def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if "error" in r:
                continue
            rows[(r["workload"], r["layer"])] = r
    return rows


STAT = "median"


def med(v):
    if v is None:
        return None
    if isinstance(v, dict):
        return v.get(STAT)
    return v


def ratio(a, b):
    return None if a in (None, 0) or b in (None, 0) else a / b


def fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def geomean(vs):
    vs = [v for v in vs if v]
    return math.exp(sum(math.log(v) for v in vs) / len(vs)) if vs else None


def main():
    global STAT
    args = [a for a in sys.argv[1:] if not a.startswith("--stat")]
    if "--stat" in sys.argv:
        STAT = sys.argv[sys.argv.index("--stat") + 1]
        args = [a for a in args if a != STAT]
    spconv, ours = load(args[0]), load(args[1])
    print(f"statistic: {STAT}")
    print()
    print("| workload | layer | N_in | N_out | spconv map | ours map | map × | spconv conv | ours conv | conv × "
          "| spconv layer | ours layer | layer × | variant |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    maps, convs_wide, layers, all_conv = [], [], [], []
    problems = []
    for key in sorted(set(spconv) & set(ours)):
        s, o = spconv[key], ours[key]
        # spconv reports the workload size as n_in of the inverse conv; compare outputs there.
        if s["n_out"] != o["n_out"] or (s["n_in"] != o["n_in"] and "invconv" not in key[1]):
            problems.append(f"{key}: sizes differ (spconv {s['n_in']}→{s['n_out']}, ours {o['n_in']}→{o['n_out']})")
        sm, sc, sl = med(s.get("indice_ms")), med(s.get("compute_ms")), med(s.get("layer_ms"))
        if STAT == "median":
            om, oc, ol = o.get("map_ms"), o.get("conv_ms"), o.get("layer_ms")
        else:
            om, oc, ol = (med(o.get(k)) for k in ("map_stats", "conv_stats", "layer_stats"))
        rm, rc, rl = ratio(sm, om), ratio(sc, oc), ratio(sl, ol)
        if rm:
            maps.append(rm)
        if rl:
            layers.append(rl)
            if rl < 1.0:
                problems.append(f"{key}: layer slower than spconv ({rl:.2f}x)")
        if rc:
            all_conv.append(rc)
            if any(c in key[1] for c in ("c64", "c128")):
                convs_wide.append(rc)
                if rc < 1.0:
                    problems.append(f"{key}: conv slower than spconv at 64/128 channels ({rc:.2f}x)")
        print(f"| {key[0]} | {key[1]} | {o['n_in']} | {o['n_out']} | {fmt(sm)} | {fmt(om)} | {fmt(rm)} | "
              f"{fmt(sc)} | {fmt(oc)} | {fmt(rc)} | {fmt(sl)} | {fmt(ol)} | {fmt(rl)} | {o.get('variant', '-')} |")
    missing = sorted(set(spconv) ^ set(ours))
    print()
    g = lambda v: fmt(geomean(v))
    print(f"geomean speedup: layer {g(layers)}x (target >= 3), map {g(maps)}x (target >= 5), "
          f"conv {g(all_conv)}x (all rows), conv at 64/128 channels min "
          f"{fmt(min(convs_wide) if convs_wide else None)}x (target >= 1.0)")
    print(f"threads: spconv {sorted({r.get('env', {}).get('torch_threads') for r in spconv.values()})}, "
          f"ours {sorted({r.get('threads') for r in ours.values()})}")
    if missing:
        print(f"unpaired rows: {missing}")
    for p in problems:
        print(f"- {p}")


if __name__ == "__main__":
    main()
