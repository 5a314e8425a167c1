#!/usr/bin/env python3
"""Writes tests/fixtures/spconv_voxelize.safetensors: spconv 2.3.8's PointToVoxel (CPU, as
OpenPCDet's data processor runs it at test time) and OpenPCDet's MeanVFE on a synthetic
cloud, for tests/voxelize.rs.

The cloud has a uniform background, tight clusters (voxels with more points than the
per-voxel limit), points outside the range and on its edges, and more occupied voxels than
the voxel limit, so every rule shows: first points kept per voxel, first voxels kept, the
rest dropped, voxels in order of their first point.

    /tmp/spvenv/bin/python scripts/spconv_voxelize_fixture.py

With `--scan` it instead runs OpenPCDet's KITTI test-time configuration (SECOND's grid, 5
points per voxel, 40,000 voxels) on a real KITTI scan, times it (median of `--time` calls),
and with `--compare` checks, value for value, the input that
`cargo run --release --example spconv_model -- --scan S --export-input F --openpcdet` wrote:

    /tmp/spvenv/bin/python scripts/spconv_voxelize_fixture.py --scan ../shared/data/kitti/000000.bin \
        --compare /tmp/in.safetensors --time 21
"""

import argparse
import json
import time

import numpy as np
import torch
import spconv as spconv_package
from spconv.pytorch.utils import PointToVoxel

from spconv_io import write_test_fixture

VOXEL_SIZE = [0.2, 0.2, 0.25]
RANGE = [0.0, -4.0, -1.0, 6.4, 4.0, 1.0]
CASES = {"capped": (5, 300), "uncapped": (16, 100000)}  # max points per voxel, max voxels


def cloud(rng):
    lo, hi = np.array(RANGE[:3]), np.array(RANGE[3:])
    background = rng.uniform(lo - 0.5, hi + 0.5, (700, 3))  # some outside the range
    centres = rng.uniform(lo, hi, (40, 3))
    clusters = (centres[:, None, :] + rng.normal(0, 0.05, (40, 12, 3))).reshape(-1, 3)
    edges = np.array([[lo[0], 0.1, 0.1], [hi[0], 0.1, 0.1], [1.0, hi[1], 0.0], [1.0, 0.0, lo[2]],
                      [np.nextafter(np.float32(lo[0]), np.float32(-1)), 0.1, 0.1]])
    xyz = np.concatenate([background, clusters, edges])
    points = np.concatenate([xyz, rng.uniform(0, 1, (len(xyz), 1))], axis=1).astype(np.float32)
    return points[rng.permutation(len(points))]


def mean_vfe(voxels, num_points):
    """OpenPCDet's MeanVFE, verbatim in effect."""
    points_mean = voxels[:, :, :].sum(dim=1, keepdim=False)
    normalizer = torch.clamp_min(num_points.view(-1, 1), min=1.0).type_as(voxels)
    return points_mean / normalizer


def scan(args):
    """OpenPCDet's KITTI voxelization of a real scan: timed, and compared with ours."""
    torch.set_num_threads(args.threads)
    points = np.fromfile(args.scan, dtype=np.float32).reshape(-1, 4)
    gen = PointToVoxel([0.05, 0.05, 0.1], [0, -40, -3, 70.4, 40, 1], 4, max_num_voxels=40000,
                       max_num_points_per_voxel=5)
    times = []
    for _ in range(max(args.time, 1)):
        t = time.perf_counter()
        voxels, coords, num_points = gen(torch.from_numpy(points))
        mean = mean_vfe(voxels, num_points)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    print(f"spconv {spconv_package.__version__} PointToVoxel + MeanVFE, {args.threads} thread(s): "
          f"{coords.shape[0]} voxels from {len(points)} points, median {times[len(times) // 2]:.2f} ms")
    if args.compare:
        from safetensors import safe_open
        with safe_open(args.compare, "np") as f:
            ours_coords = f.get_tensor("io.coords")[:, 1:]
            ours_features = f.get_tensor("io.features")
        same_coords = np.array_equal(ours_coords, coords.numpy())
        same_bits = np.array_equal(ours_features.view(np.uint32), mean.numpy().view(np.uint32))
        print(f"{args.compare}: coordinates {'equal' if same_coords else 'DIFFER'}, "
              f"features {'bitwise equal' if same_bits else 'DIFFER'}")
        if not (same_coords and same_bits):
            raise SystemExit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scan")
    ap.add_argument("--compare")
    ap.add_argument("--time", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.scan:
        return scan(args)
    rng = np.random.default_rng(3)
    points = cloud(rng)
    tensors = {"points": torch.from_numpy(points)}
    for name, (max_points, max_voxels) in CASES.items():
        gen = PointToVoxel(VOXEL_SIZE, RANGE, 4, max_num_voxels=max_voxels, max_num_points_per_voxel=max_points)
        voxels, coords, num_points = gen(torch.from_numpy(points))
        tensors[f"{name}.coords_zyx"] = coords.to(torch.int32).contiguous()
        tensors[f"{name}.num_points"] = num_points.to(torch.int32).contiguous()
        if name == "capped":  # the padded [V, max points, C] buffer, to check point selection
            tensors[f"{name}.voxels"] = voxels.contiguous()
        tensors[f"{name}.mean"] = mean_vfe(voxels, num_points).contiguous()
        print(f"{name}: {coords.shape[0]} voxels, {int(num_points.sum())} of {len(points)} points, "
              f"{int((num_points == max_points).sum())} full")
    meta = {"voxel_size": json.dumps(VOXEL_SIZE), "range": json.dumps(RANGE), "cases": json.dumps(CASES)}
    write_test_fixture(__file__, "spconv_voxelize.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
