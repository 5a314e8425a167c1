#!/usr/bin/env python3
"""Writes tests/fixtures/spconv_dense.safetensors: spconv 2.3.8's SparseConvTensor.dense()
(both layouts), OpenPCDet's HeightCompression (dense().view(N, C * D, H, W)) and
SparseConvTensor.from_dense on small random tensors, for tests/dense_grid.rs.

The from_dense grid has sites whose channels are all zero (dropped), sites with one zero
channel (kept), -0.0 values (zero to torch) and a NaN (not zero).

    /tmp/spvenv/bin/python scripts/spconv_dense_fixture.py
"""


import numpy as np
import torch
import spconv.pytorch as spconv

from spconv_io import write_test_fixture

CASES = {"3d": [5, 6, 7], "2d": [6, 9]}  # spatial shapes; batch 2, 3 channels


def main():
    rng = np.random.default_rng(7)
    tensors = {}
    for name, shape in CASES.items():
        cells = set()
        while len(cells) < 40:
            cells.add((int(rng.integers(0, 2)), *(int(rng.integers(0, s)) for s in shape)))
        coords = np.array(sorted(cells), dtype=np.int32)
        rng.shuffle(coords)  # rows need not be in grid order
        features = rng.uniform(-1, 1, (len(coords), 3)).astype(np.float32)
        x = spconv.SparseConvTensor(torch.from_numpy(features), torch.from_numpy(coords), shape, 2)
        tensors[f"{name}.coords"] = torch.from_numpy(coords)
        tensors[f"{name}.features"] = torch.from_numpy(features)
        tensors[f"{name}.channels_first"] = x.dense().contiguous()
        tensors[f"{name}.channels_last"] = x.dense(channels_first=False).contiguous()
        if len(shape) == 3:
            n, c, d, h, w = x.dense().shape
            tensors[f"{name}.bev"] = x.dense().view(n, c * d, h, w).contiguous()

    grid = rng.uniform(-1, 1, (2, 4, 5, 3)).astype(np.float32)
    grid[rng.uniform(size=(2, 4, 5)) < 0.6] = 0.0  # empty sites
    grid[0, 1, 2, 1] = 0.0  # one zero channel: kept
    grid[1, 3, 0] = [-0.0, 0.0, -0.0]  # negative zeros: dropped
    grid[1, 2, 4, 2] = np.nan  # NaN: kept
    y = spconv.SparseConvTensor.from_dense(torch.from_numpy(grid))
    tensors["from_dense.grid"] = torch.from_numpy(grid)
    tensors["from_dense.coords"] = y.indices.to(torch.int32).contiguous()
    tensors["from_dense.features"] = y.features.contiguous()
    print(f"from_dense: {y.indices.shape[0]} of {2 * 4 * 5} sites")

    meta = {"spatial_shape.3d": "5,6,7", "spatial_shape.2d": "6,9", "batch_size": "2"}
    write_test_fixture(__file__, "spconv_dense.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
