#!/usr/bin/env python3
"""Writes tests/fixtures/spconv_backbone.safetensors: a small spconv 2.3.8 backbone's
weights and one forward pass of it, for tests/network.rs.

The backbone has what real ones have: a SubM stem with BatchNorm and ReLU, a residual
block, a strided conv, a dilated SubM conv, an inverse conv back to the stem's sites, a
U-Net concatenation and a 1x1 head with bias. Weights are PyTorch's default init, the batch
norms get random statistics (so folding them is tested), and the input is a synthetic scan
of two batches (ground planes and walls; no licensed data). spconv runs on the CPU with one
thread (its CPU conv is racy with more; see ../shared/bench/README.md).

The file holds the state dict under `model.` exactly as `safetensors.torch.save_file`
writes it, the input under `io.coords` (int32 [N, 4], batch first) and `io.features`,
and spconv's output under `io.output_coords` and `io.output`; the spatial shape and batch
size are in the metadata.

    /tmp/spvenv/bin/pip install safetensors   # next to torch and spconv (CPU)
    /tmp/spvenv/bin/python scripts/spconv_network_fixture.py
    /tmp/spvenv/bin/python scripts/spconv_network_fixture.py --time 21 [--threads 2]

With `--time N` it also prints spconv's median time of N forward calls on a fresh tensor
each (so the index pairs are built each time, as in a deployed forward), to set beside
`cargo run --release --example spconv_model`. With `--input FILE` (a safetensors file with
`io.coords`, `io.features` and the metadata, as `spconv_model --export-input` writes from
a real scan) it runs the same model on that input instead of the synthetic one; `--out`
names the file to write (default: the test fixture).
"""

import argparse
import os

import numpy as np
import torch
from safetensors.torch import save_file
import spconv as spconv_package
import spconv.pytorch as spconv
from torch import nn

from spconv_io import median_forward_ms, read_input

SHAPE = [24, 48, 48]  # z, y, x
BATCH = 2


def bn(c):
    return nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = spconv.SparseSequential(
            spconv.SubMConv3d(4, 8, 3, bias=False, indice_key="subm1"), bn(8), nn.ReLU()
        )
        self.res_conv1 = spconv.SubMConv3d(8, 8, 3, bias=False, indice_key="subm1")
        self.res_bn1 = bn(8)
        self.res_conv2 = spconv.SubMConv3d(8, 8, 3, bias=False, indice_key="subm1")
        self.res_bn2 = bn(8)
        self.down = spconv.SparseSequential(
            spconv.SparseConv3d(8, 16, 3, 2, 1, bias=False, indice_key="down1"), bn(16), nn.ReLU()
        )
        self.mid = spconv.SparseSequential(
            spconv.SubMConv3d(16, 16, 3, dilation=2, bias=False, indice_key="subm2"), bn(16), nn.ReLU()
        )
        self.up = spconv.SparseSequential(
            spconv.SparseInverseConv3d(16, 8, 3, bias=False, indice_key="down1"), bn(8), nn.ReLU()
        )
        self.head = spconv.SubMConv3d(16, 4, 1, bias=True, indice_key="head")

    def forward(self, x):
        x = self.stem(x)
        y = self.res_conv1(x)
        y = y.replace_feature(torch.relu(self.res_bn1(y.features)))
        y = self.res_conv2(y)
        y = y.replace_feature(torch.relu(self.res_bn2(y.features) + x.features))
        u = self.up(self.mid(self.down(y)))
        u = u.replace_feature(torch.cat([u.features, y.features], 1))
        return self.head(u)


def scan(rng, batch):
    """Ground planes with steps and two walls, as voxel cells (z, y, x)."""
    cells = set()
    for _ in range(900):
        y, x = rng.integers(0, SHAPE[1]), rng.integers(0, SHAPE[2])
        cells.add((2 + (x // 12) % 2, y, x))
    for _ in range(350):
        cells.add((rng.integers(0, SHAPE[0]), rng.integers(0, SHAPE[1]), 30 + batch))
        cells.add((rng.integers(0, 12), 7, rng.integers(0, SHAPE[2])))
    return [(batch, *c) for c in sorted(cells)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=int, default=0, help="also time N forward calls")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--input", help="io.coords / io.features / metadata to run on")
    ap.add_argument("--out", default=os.path.join(
        os.path.dirname(__file__), "..", "tests", "fixtures", "spconv_backbone.safetensors"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    model = Backbone()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            c = m.num_features
            m.weight.data = torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32))
            m.bias.data = torch.from_numpy(rng.normal(0, 0.2, c).astype(np.float32))
            m.running_mean = torch.from_numpy(rng.normal(0, 0.2, c).astype(np.float32))
            m.running_var = torch.from_numpy(rng.uniform(0.2, 2.0, c).astype(np.float32))
            m.num_batches_tracked.fill_(1000)
    model.eval()

    shape, batch = SHAPE, BATCH
    coords = np.array(scan(rng, 0) + scan(rng, 1), dtype=np.int32)
    rng.shuffle(coords)  # row order is the user's, not sorted
    features = rng.uniform(-1, 1, (len(coords), 4)).astype(np.float32)
    if args.input:
        coords, features, shape, batch = read_input(args.input)
    x = spconv.SparseConvTensor(
        torch.from_numpy(features), torch.from_numpy(coords), shape, batch
    )
    with torch.no_grad():
        out = model(x)
    if args.time:
        median, fastest = median_forward_ms(model, features, coords, shape, batch, args.time)
        print(f"spconv {spconv_package.__version__} cpu, {args.threads} thread(s): "
              f"median {median:.2f} ms over {args.time} calls (min {fastest:.2f}), {len(coords)} sites")

    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors["io.coords"] = torch.from_numpy(coords)
    tensors["io.features"] = torch.from_numpy(features)
    tensors["io.output_coords"] = out.indices.to(torch.int32).clone()
    tensors["io.output"] = out.features.clone()
    meta = {
        "spatial_shape": ",".join(map(str, shape)),
        "batch_size": str(batch),
        "made_by": "scripts/spconv_network_fixture.py, spconv "
        + spconv_package.__version__
        + ", torch "
        + torch.__version__,
    }
    path = args.out
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=meta)
    print(f"{path}: {len(coords)} input sites, output {tuple(out.features.shape)}, "
          f"max |out| {out.features.abs().max():.4f}, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
