#!/usr/bin/env python3
"""Writes tests/fixtures/spconv_maxpool.safetensors: spconv 2.3.8's SparseMaxPool3d (CPU)
on a random two-batch input with negative and positive features, for tests/network.rs.

spconv's pooled features start at zero, so a window whose inputs are all negative pools to
0, not to its maximum: the fixture has such windows, and the test checks we agree.

    /tmp/spvenv/bin/python scripts/spconv_maxpool_fixture.py
"""

import json

import numpy as np
import torch
import spconv.pytorch as spconv

from spconv_io import write_test_fixture

SHAPE = [9, 14, 11]
CASES = [  # kernel, stride, padding
    (3, 2, 1),
    (2, 2, 0),
    ([3, 1, 3], [2, 1, 2], [1, 0, 0]),
]


def main():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    cells = set()
    while len(cells) < 500:
        cells.add((int(rng.integers(0, 2)), *(int(rng.integers(0, s)) for s in SHAPE)))
    coords = np.array(sorted(cells), dtype=np.int32)
    rng.shuffle(coords)
    features = rng.uniform(-1, 0.3, (len(coords), 5)).astype(np.float32)
    tensors = {"io.coords": torch.from_numpy(coords), "io.features": torch.from_numpy(features)}
    for n, (k, s, p) in enumerate(CASES):
        x = spconv.SparseConvTensor(torch.from_numpy(features), torch.from_numpy(coords), SHAPE, 2)
        y = spconv.SparseMaxPool3d(k, s, p)(x)
        tensors[f"case{n}.output_coords"] = y.indices.to(torch.int32).clone()
        tensors[f"case{n}.output"] = y.features.clone()
        print(f"case {n}: kernel {k} stride {s} padding {p}: {y.features.shape[0]} sites, "
              f"{int((y.features == 0).sum())} zero values")
    meta = {"spatial_shape": ",".join(map(str, SHAPE)), "batch_size": "2", "cases": json.dumps(CASES)}
    write_test_fixture(__file__, "spconv_maxpool.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
