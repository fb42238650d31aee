#!/usr/bin/env python3
"""What an f16 GEMM meets in the trained MobileSAM on real photographs.

websam's f16 GPU path (`Precision::F16`) stores the weights of every GEMM (linear layers, dense
and transposed convs; TinyViT's conv + BatchNorm pairs folded into one conv) as f16, rounds the
activations to f16 in the GEMM's workgroup tiles and sums the products in f16 partials of
F16_PARTIAL_TERMS terms (src/gpu/kernels/mod.rs) before adding them in f32. This tool runs the
official model (as make_real.py builds it) on the photographs and the prompts of
tests/fixtures/real/cases.json with a hook on each such GEMM, and reports per layer:
- max |x|: the largest activation rounded to f16 (f16's largest finite value is 65504);
- f16-subnormal: the share of non-zero activations below 2^-14 (f16 keeps them with fewer bits)
  and below 2^-24 (f16 flushes them to 0);
- max |partial| of 4 and of 16 consecutive products (what an f16 partial sum holds);
- max |y|: the GEMM's output (in f32).
Maxima are over every photograph and prompt. Prints a Markdown table, the layers sorted by the
largest partial sum.

Usage: python tools/golden/f16_ranges.py [--weights models/mobile_sam.pt] [--top 25]
"""

import argparse
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import build_mobile_sam  # noqa: E402
from segment_anything import SamPredictor  # noqa: E402
from mobile_sam.modeling.tiny_vit_sam import Conv2d_BN  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
F16_MAX = 65504.0
ROWS = 4096  # rows of the GEMM per chunk (bounds the memory of the partial sums)


class Stats:
    def __init__(self):
        self.x = 0.0
        self.y = 0.0
        self.p4 = 0.0
        self.p16 = 0.0
        self.nonzero = 0
        self.sub = 0
        self.flush = 0
        self.calls = 0

    def gemm(self, rows, weight):
        """rows [R, K] @ weight [K, N]: partial sums of 4 and 16 products, chunked."""
        k = rows.shape[1]
        a = rows.abs()
        self.x = max(self.x, float(a.max()))
        nz = a[a > 0]
        self.nonzero += nz.numel()
        self.sub += int((nz < 2.0 ** -14).sum())
        self.flush += int((nz < 2.0 ** -24).sum())
        for terms in (4, 16):
            pad = (-k) % terms
            w = F.pad(weight, (0, 0, 0, pad)).reshape(-1, terms, weight.shape[1])
            best = 0.0
            for r0 in range(0, rows.shape[0], ROWS):
                x = F.pad(rows[r0:r0 + ROWS], (0, pad)).reshape(-1, w.shape[0], terms)
                part = torch.einsum("rst,stn->rsn", x, w)
                best = max(best, float(part.abs().max()))
            if terms == 4:
                self.p4 = max(self.p4, best)
            else:
                self.p16 = max(self.p16, best)


def conv_rows(x, conv_weight, stride, padding):
    """A dense conv as a GEMM: im2col rows [L, Cin*kh*kw] and the weight [Cin*kh*kw, Cout]."""
    cout, cin, kh, kw = conv_weight.shape
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # [1, Cin*kh*kw, L]
    return cols[0].T, conv_weight.reshape(cout, -1).T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=os.path.join(REPO, "models", "mobile_sam.pt"))
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(2)

    model = build_mobile_sam()
    model.load_state_dict(torch.load(args.weights, map_location="cpu"), strict=True)
    model.train()
    model.eval()

    stats = {}
    hooked = set()

    def add(name, fn):
        def hook(module, inputs, output):
            s = stats.setdefault(name, Stats())
            s.calls += 1
            with torch.no_grad():
                fn(s, module, inputs[0].detach().float(), output)
                s.y = max(s.y, float(output.detach().abs().max()))
        return hook

    def linear(s, m, x, _):
        s.gemm(x.reshape(-1, x.shape[-1]), m.weight.T)

    def conv(s, m, x, _):
        rows, w = conv_rows(x, m.weight, m.stride, m.padding)
        s.gemm(rows, w)

    def conv_bn(s, m, x, _):
        # The pair as websam folds it at load: one conv with weight w * gamma / sqrt(var + eps).
        scale = m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)
        rows, w = conv_rows(x, m.c.weight * scale[:, None, None, None], m.c.stride, m.c.padding)
        s.gemm(rows, w)

    def conv_t(s, m, x, _):
        # ConvTranspose 2x2 / stride 2: one GEMM of the pixels [HW, Cin] and [Cin, Cout*4].
        s.gemm(x[0].flatten(1).T, m.weight.reshape(m.weight.shape[0], -1))

    for name, m in model.named_modules():
        if isinstance(m, Conv2d_BN):
            if m.c.groups == 1:
                m.register_forward_hook(add(name, conv_bn))
            hooked.update({f"{name}.c", f"{name}.bn"})
        elif name in hooked:
            continue
        elif isinstance(m, nn.Linear) and not name.startswith("image_encoder.head"):
            m.register_forward_hook(add(name, linear))
        elif isinstance(m, nn.Conv2d) and m.groups == 1:
            m.register_forward_hook(add(name, conv))
        elif isinstance(m, nn.ConvTranspose2d):
            m.register_forward_hook(add(name, conv_t))

    predictor = SamPredictor(model)
    manifest = json.load(open(os.path.join(REPO, "tests", "fixtures", "real", "cases.json")))
    for photo in manifest["photos"]:
        image = np.array(Image.open(os.path.join(REPO, photo["image"])).convert("RGB"))
        with torch.no_grad():
            predictor.set_image(image)
        for c in photo["cases"]:
            mask_input = None
            if c["mask_input"]:
                mask_input = np.load(os.path.join(REPO, "tests", "fixtures", c["mask_input"]))
            with torch.no_grad():
                predictor.predict(
                    point_coords=None if c["points"] is None else np.array(c["points"], np.float32),
                    point_labels=None if c["labels"] is None else np.array(c["labels"]),
                    box=None if c["box"] is None else np.array(c["box"], np.float32),
                    mask_input=mask_input, multimask_output=c["multimask"])

    rows = sorted(stats.items(), key=lambda kv: -kv[1].p16)
    nonzero = sum(s.nonzero for s in stats.values())
    sub = sum(s.sub for s in stats.values())
    flush = sum(s.flush for s in stats.values())
    print(f"{len(stats)} GEMM layers, {len(manifest['photos'])} photographs, "
          f"{sum(len(p['cases']) for p in manifest['photos'])} prompts")
    print(f"largest activation {max(s.x for s in stats.values()):.4g}, largest 16-term partial "
          f"{max(s.p16 for s in stats.values()):.4g}, largest 4-term partial "
          f"{max(s.p4 for s in stats.values()):.4g}, largest output "
          f"{max(s.y for s in stats.values()):.4g} (f16 max {F16_MAX:.0f})")
    print(f"non-zero activations f16-subnormal (< 2^-14): {sub / nonzero:.2e}; "
          f"flushed to 0 (< 2^-24): {flush / nonzero:.2e}")
    print()
    print("| layer | max abs x | max abs partial, 4 terms | 16 terms | max abs y | subnormal share |")
    print("|---|---|---|---|---|---|")
    for name, s in rows[:args.top]:
        print(f"| `{name}` | {s.x:.4g} | {s.p4:.4g} | {s.p16:.4g} | {s.y:.4g} | "
              f"{(s.sub / s.nonzero if s.nonzero else 0):.1e} |")


if __name__ == "__main__":
    main()
