"""Shared by the spconv fixture scripts: reading an exported input, timing spconv."""

import os
import time

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
import spconv as spconv_package
import spconv.pytorch as spconv


def read_input(path):
    """`io.coords`, `io.features`, spatial shape and batch size of a file as
    `cargo run --example spconv_model -- --export-input` writes it."""
    with safe_open(path, "np") as f:
        meta = f.metadata()
        coords = f.get_tensor("io.coords").astype(np.int32)
        features = f.get_tensor("io.features").astype(np.float32)
    shape = [int(v) for v in meta["spatial_shape"].split(",")]
    return coords, features, shape, int(meta["batch_size"])


def median_forward_ms(model, features, coords, shape, batch, calls):
    """spconv's median and fastest time of `calls` forward passes, each on a fresh tensor
    (so its index pairs are built every time, as in a deployed forward)."""
    times = []
    with torch.no_grad():
        for _ in range(calls):
            x = spconv.SparseConvTensor(torch.from_numpy(features), torch.from_numpy(coords), shape, batch)
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2], times[0]


def median_bev_ms(out, calls):
    """spconv's median time of OpenPCDet's HeightCompression on a backbone output `out`:
    `out.dense()` read as `[N, C * D, H, W]`."""
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        dense = out.dense()
        n, c, d, h, w = dense.shape
        dense.view(n, c * d, h, w)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def write_test_fixture(script, name, tensors, meta):
    """Writes `tests/fixtures/<name>` with `meta` and a `made_by` entry naming the script
    (pass `__file__`) and spconv's version."""
    meta = dict(meta, made_by=f"scripts/{os.path.basename(script)}, spconv {spconv_package.__version__}")
    path = os.path.join(os.path.dirname(os.path.abspath(script)), "..", "tests", "fixtures", name)
    save_file(tensors, path, metadata=meta)
    print(f"{path}: {os.path.getsize(path)} bytes")
