#!/usr/bin/env python3
"""Writes tests/fixtures/openpcdet_backbones.safetensors: what spconv 2.3.8 computes for
OpenPCDet's VoxelBackBone8x and VoxelResBackBone8x, for tests/models.rs.

The two backbones are rebuilt here with OpenPCDet's module names (conv_input, conv1..conv4
of post_act_blocks or SparseBasicBlocks, conv_out), so their state dicts have the keys a
real SECOND / CenterPoint checkpoint has under `backbone_3d.`. OpenPCDet itself is not
needed. To keep the fixture small, no weights are stored: every parameter is a closed-form
function of its key and index (`formula`, repeated in tests/models.rs), exact in float64
and rounded once to float32 on both sides. The file holds:

- metadata `keys.<model>`: the state dict's keys and shapes as JSON (the test loads a
  checkpoint made from exactly these, strictly), `spatial_shape`, `batch_size`;
- `io.coords` (int32 [N, 4], batch first) and `io.features`: a synthetic two-batch scan;
- `<model>.output_coords` / `<model>.output`: spconv's conv_out result (CPU, 1 thread;
  rows in spconv's order) and `<model>.x_conv2_rows`: the row count at stride 2.

    /tmp/spvenv/bin/python scripts/openpcdet_backbones_fixture.py
    /tmp/spvenv/bin/python scripts/openpcdet_backbones_fixture.py --input in.safetensors \
        --out /tmp/out.safetensors --checkpoint /tmp/ckpt.safetensors --time 11 [--threads 2]

With `--input` (as `spconv_model --export-input` writes from a KITTI scan, whose shape
gets OpenPCDet's +1 in z) it runs on that input; `--checkpoint` also writes the weights as a
detector checkpoint (keys under `backbone_3d.<model>.`), and `--time N` prints spconv's
median of N forward calls per model, and of N HeightCompressions (the dense BEV view).
"""

import argparse
import json
import os

import numpy as np
import torch
from torch import nn

from spconv_io import median_bev_ms, median_forward_ms, read_input
from safetensors.torch import save_file
import spconv as spconv_package
import spconv.pytorch as spconv

SHAPE = [41, 64, 64]  # z, y, x: KITTI's 41 levels, a small ground area
BATCH = 2


def bn(c):
    return nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)


def post_act(cin, cout, stride=1, padding=0, subm=True):
    conv = (spconv.SubMConv3d(cin, cout, 3, bias=False) if subm else
            spconv.SparseConv3d(cin, cout, 3, stride=stride, padding=padding, bias=False))
    return spconv.SparseSequential(conv, bn(cout), nn.ReLU())


class BasicBlock(spconv.SparseModule):
    """OpenPCDet's SparseBasicBlock: its convs have biases (it has batch norms)."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(c, c, 3, padding=1, bias=True)
        self.bn1 = bn(c)
        self.relu = nn.ReLU()
        self.conv2 = spconv.SubMConv3d(c, c, 3, padding=1, bias=True)
        self.bn2 = bn(c)

    def forward(self, x):
        out = with_bias(self.conv1, x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = with_bias(self.conv2, out)
        out = out.replace_feature(self.relu(self.bn2(out.features) + x.features))
        return out


def with_bias(conv, x):
    """spconv's CPU conv refuses a bias ("cpu don't support act and bias"): add it after."""
    bias = conv.bias
    conv.bias = None
    try:
        out = conv(x)
    finally:
        conv.bias = bias
    return out.replace_feature(out.features + bias)


class Backbone(nn.Module):
    def __init__(self, residual, cin=4):
        super().__init__()
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(cin, 16, 3, padding=1, bias=False), bn(16), nn.ReLU())
        c4 = 128 if residual else 64
        widths = [(16, 32, 1), (32, 64, 1), (64, c4, (0, 1, 1))]
        if residual:
            self.conv1 = spconv.SparseSequential(BasicBlock(16), BasicBlock(16))
        else:
            self.conv1 = spconv.SparseSequential(post_act(16, 16))
        stages = []
        for cin_s, cout, pad in widths:
            down = post_act(cin_s, cout, stride=2, padding=pad, subm=False)
            if residual:
                stages.append(spconv.SparseSequential(down, BasicBlock(cout), BasicBlock(cout)))
            else:
                stages.append(spconv.SparseSequential(down, post_act(cout, cout), post_act(cout, cout)))
        self.conv2, self.conv3, self.conv4 = stages
        self.conv_out = spconv.SparseSequential(
            spconv.SparseConv3d(c4, 128, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False),
            bn(128), nn.ReLU())

    def forward(self, x):
        x = self.conv1(self.conv_input(x))
        x2 = self.conv2(x)
        return self.conv_out(self.conv4(self.conv3(x2))), x2


def fnv1a32(name):
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) % 2**32
    return h


def formula(name, shape):
    """A parameter as a closed-form function of its key and index (see tests/models.rs)."""
    n = int(np.prod(shape)) if shape else 1
    i = np.arange(n, dtype=np.uint64)
    x = (np.uint64(fnv1a32(name)) + i * np.uint64(2654435761)) % np.uint64(2**32)
    u = x.astype(np.float64) / 2.0**32
    if name.endswith(".running_var") or (name.endswith(".weight") and len(shape) == 1):
        v = 0.5 + u
    elif name.endswith(".weight"):
        v = (2.0 * u - 1.0) / np.sqrt(float(np.prod(shape[1:])))
    else:  # biases and running means
        v = (2.0 * u - 1.0) * 0.1
    return v.astype(np.float32).reshape(shape)


def scan(rng, batch):
    cells = set()
    for _ in range(900):
        y, x = rng.integers(0, SHAPE[1]), rng.integers(0, SHAPE[2])
        cells.add((8 + (x // 16) % 2, y, x))
    for _ in range(300):
        cells.add((rng.integers(6, 30), rng.integers(0, SHAPE[1]), 40 + batch))
    return [(batch, *c) for c in sorted(cells)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input")
    ap.add_argument("--out", default=os.path.join(
        os.path.dirname(__file__), "..", "tests", "fixtures", "openpcdet_backbones.safetensors"))
    ap.add_argument("--checkpoint")
    ap.add_argument("--time", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    shape, batch = SHAPE, BATCH
    coords = np.array(scan(rng, 0) + scan(rng, 1), dtype=np.int32)
    rng.shuffle(coords)
    features = rng.uniform(-1, 1, (len(coords), 4)).astype(np.float32)
    if args.input:
        coords, features, shape, batch = read_input(args.input)
        shape[0] += 1  # OpenPCDet's sparse_shape = grid_size[::-1] + [1, 0, 0]

    tensors = {"io.coords": torch.from_numpy(coords), "io.features": torch.from_numpy(features)}
    meta = {"spatial_shape": ",".join(map(str, shape)), "batch_size": str(batch),
            "made_by": f"scripts/openpcdet_backbones_fixture.py, spconv {spconv_package.__version__}, "
                       f"torch {torch.__version__}"}
    weights = {}
    for name, residual in [("voxel_backbone_8x", False), ("voxel_res_backbone_8x", True)]:
        model = Backbone(residual)
        state = model.state_dict()
        keys = [[k, list(v.shape)] for k, v in state.items()]
        model.load_state_dict({k: torch.from_numpy(formula(k, list(v.shape))) if v.is_floating_point()
                               else v for k, v in state.items()})
        model.eval()
        meta[f"keys.{name}"] = json.dumps(keys)
        with torch.no_grad():
            x = spconv.SparseConvTensor(torch.from_numpy(features), torch.from_numpy(coords), shape, batch)
            out, x2 = model(x)
        if args.time:
            median, _ = median_forward_ms(model, features, coords, shape, batch, args.time)
            print(f"{name}: spconv {spconv_package.__version__} cpu, {args.threads} thread(s): median "
                  f"{median:.1f} ms over {args.time} calls, {len(coords)} sites -> {out.features.shape[0]}")
            print(f"{name}: HeightCompression (dense().view) median {median_bev_ms(out, args.time):.1f} ms")
        tensors[f"{name}.output_coords"] = out.indices.to(torch.int32).clone()
        tensors[f"{name}.output"] = out.features.clone()
        tensors[f"{name}.x_conv2_rows"] = torch.tensor([x2.features.shape[0]], dtype=torch.int64)
        weights.update({f"backbone_3d.{name}.{k}": v.clone() for k, v in model.state_dict().items()})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(tensors, args.out, metadata=meta)
    print(f"{args.out}: {len(coords)} input sites on {shape}, {os.path.getsize(args.out)} bytes")
    if args.checkpoint:
        save_file(weights, args.checkpoint)
        print(f"{args.checkpoint}: {len(weights)} tensors")


if __name__ == "__main__":
    main()
