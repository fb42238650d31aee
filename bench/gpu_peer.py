#!/usr/bin/env python3
"""PyTorch peer of `websam bench --backend gpu`: the reference MobileSAM on the same card.

Model: mobile_sam's `sam_model_registry["vit_t"]` (TinyViT, SAM's prompt encoder and mask
decoder) with the weights of tests/fixtures/mobile_sam.pth, so both sides run the same model.

Rows (every time is wall clock around one call, the device synchronised before and after):
- encoder: the image encoder on the preprocessed 1x3x1024x1024 f32 input, already on the device,
  its output left there;
- set_image: SamPredictor.set_image on tests/fixtures/image.png and the features read back, the
  work websam's GPU `embed` times (resize on the CPU, upload, normalise and pad, encode, read back);
- decode <prompt>: prompt encoder + mask decoder (SamPredictor.predict_torch up to the low-res
  logits, multimask) from the fixture image's embedding on the device, the low-res logits and the
  IoU predictions read back, as websam's "further decodes". Prompts: one positive click at the
  image centre (websam bench's), a box, and five points.

Variants: eager f32; eager under autocast to bf16 and to fp16; torch.compile (f32, dynamic=False,
mode --compile-mode). Each measurement starts with --warmup calls (the first one's time, compiling
included, is reported as "first s"), then --runs timed calls: median, min and max. "max|diff|" is
against eager f32 of the same row, or for the eager f32 encoder and set_image against
tests/fixtures/embedding.npy. A failing measurement is reported and the others still run; the JSON
is rewritten after each one.

Usage: python3 bench/gpu_peer.py [--device cuda] [--runs 20] [--json PATH] [--no-compile]
(torch, torchvision, timm, numpy, pillow and mobile_sam from PyPI's mobilesam-mirror)
"""

import argparse
import json
import os
import statistics
import sys
import time
import traceback
import warnings
from contextlib import nullcontext
from importlib import metadata

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore")
from mobile_sam import SamPredictor, sam_model_registry  # noqa: E402  (after the filter: timm warns)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

# Prompts in the fixture image's pixels (640x480): (points [(x, y, label)], box [x0, y0, x1, y1]).
PROMPTS = {
    "1 point": ([(320.0, 240.0, 1)], None),
    "box": (None, [370.0, 50.0, 570.0, 210.0]),
    "5 points": ([(161.5, 150.25, 1), (470.0, 360.0, 1), (470.0, 130.0, 0), (180.0, 400.0, 1),
                  (610.0, 420.0, 0)], None),
}


def load_model(device):
    sam = sam_model_registry["vit_t"]()
    state = torch.load(os.path.join(FIXTURES, "mobile_sam.pth"), map_location="cpu")
    sam.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    # eval() after loading: TinyViT's attention caches its biases (`ab`) when it enters eval mode.
    return sam.to(device).eval()


def decoder(sam):
    """SamPredictor.predict_torch up to the low-res logits, multimask."""

    def decode(features, coords, labels, boxes):
        sparse, dense = sam.prompt_encoder(
            points=None if coords is None else (coords, labels), boxes=boxes, masks=None)
        return sam.mask_decoder(
            image_embeddings=features, image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)

    return decode


def prompt_tensors(predictor, points, box):
    """The prompt in the model's 1024 frame, as SamPredictor.predict transforms it."""
    size, dev = predictor.original_size, predictor.device
    coords = labels = boxes = None
    if points is not None:
        xy = predictor.transform.apply_coords(np.array([p[:2] for p in points]), size)
        coords = torch.as_tensor(xy, dtype=torch.float, device=dev)[None]
        labels = torch.as_tensor([p[2] for p in points], dtype=torch.int, device=dev)[None]
    if box is not None:
        xyxy = predictor.transform.apply_boxes(np.array(box), size)
        boxes = torch.as_tensor(xyxy, dtype=torch.float, device=dev)
    return coords, labels, boxes


class Bench:
    def __init__(self, args, device):
        self.args, self.device = args, device
        self.cuda = device.type == "cuda"
        self.reference = {}  # row -> eager f32 output on the host
        self.rows = []
        self.meta = {
            "device": torch.cuda.get_device_name(device) if self.cuda else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "mobilesam-mirror": metadata.version("mobilesam-mirror"),
            "timm": metadata.version("timm"),
            "compile_mode": args.compile_mode,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "runs": args.runs,
            "warmup": args.warmup,
        }
        print(" ".join(f"{k}={v}" for k, v in self.meta.items()), flush=True)
        print(f"{'row':<16} {'variant':<24} {'median ms':>10} {'min':>8} {'max':>8} "
              f"{'first s':>8} {'peak MiB':>9} {'max|diff|':>10}", flush=True)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def measure(self, row, variant, fn, golden=None):
        """Times fn and compares the first tensor it returns with eager f32's, or with `golden`
        where given."""
        rec = {"row": row, "variant": variant}
        try:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            self.sync()
            t = time.perf_counter()
            out = fn()
            self.sync()
            rec["first_s"] = time.perf_counter() - t
            for _ in range(self.args.warmup - 1):
                fn()
            times = []
            for _ in range(self.args.runs):
                self.sync()
                t = time.perf_counter()
                fn()
                self.sync()
                times.append((time.perf_counter() - t) * 1e3)
            rec.update(median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times),
                       n=len(times))
            if self.cuda:
                rec["peak_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            out = out[0].float().cpu()
            if golden is not None:
                rec["max_abs_diff"] = (out - golden).abs().max().item()
                rec["diff_against"] = "tests/fixtures/embedding.npy"
            elif row in self.reference:
                rec["max_abs_diff"] = (out - self.reference[row]).abs().max().item()
                rec["diff_against"] = "eager f32"
            if variant == "eager f32":
                self.reference[row] = out
        except Exception as e:  # a failing variant (compile, autocast) must not stop the rest
            traceback.print_exc()
            rec["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        self.rows.append(rec)
        self.report(rec)

    def report(self, r):
        def f(key, width, spec):
            return format(r[key], f"{width}{spec}") if key in r else "-".rjust(width)

        line = (f"{r['row']:<16} {r['variant']:<24} {f('median_ms', 10, '.2f')} "
                f"{f('min_ms', 8, '.2f')} {f('max_ms', 8, '.2f')} {f('first_s', 8, '.2f')} "
                f"{f('peak_mib', 9, '.0f')} {f('max_abs_diff', 10, '.2e')}")
        print(line + (f"  {r['error']}" if "error" in r else ""), flush=True)
        if self.args.json:
            with open(self.args.json, "w") as fh:
                json.dump({"meta": self.meta, "rows": self.rows}, fh, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--no-autocast", action="store_true", help="skip the bf16/fp16 variants")
    ap.add_argument("--compile-mode", default="default",
                    choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs",
                             "max-autotune"])
    args = ap.parse_args()
    if args.runs < 1 or args.warmup < 1:
        sys.exit("--runs and --warmup must be at least 1")

    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    sam = load_model(device)
    bench = Bench(args, device)

    # The fixture image, preprocessed as SamPredictor.set_image does; its embedding feeds the
    # decodes.
    image = np.array(Image.open(os.path.join(FIXTURES, "image.png")).convert("RGB"))
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    resized = torch.as_tensor(predictor.transform.apply_image(image), device=device)
    x = sam.preprocess(resized.permute(2, 0, 1).contiguous()[None].float())
    golden = torch.from_numpy(np.load(os.path.join(FIXTURES, "embedding.npy"))).float()
    features = predictor.features
    prompts = {name: prompt_tensors(predictor, *p) for name, p in PROMPTS.items()}

    def set_image():
        predictor.set_image(image)
        return (predictor.features.cpu(),)

    def rows(variant, encoder, decode, ctx):
        def under(fn):
            def call():
                with ctx():
                    return fn()
            return call

        bench.measure("encoder", variant, under(lambda: (encoder(x),)),
                      golden if variant == "eager f32" else None)
        if variant == "eager f32":
            bench.measure("set_image", variant, set_image, golden)
        for name, p in prompts.items():
            bench.measure(f"decode {name}", variant,
                          under(lambda p=p: tuple(t.cpu() for t in decode(features, *p))))

    rows("eager f32", sam.image_encoder, decoder(sam), nullcontext)
    if not args.no_autocast:
        for dtype in (torch.bfloat16, torch.float16):
            rows(f"eager {str(dtype)[6:]} autocast", sam.image_encoder, decoder(sam),
                 lambda dtype=dtype: torch.autocast(device.type, dtype=dtype))
    if not args.no_compile:
        opts = {"mode": args.compile_mode, "dynamic": False}
        rows(f"compile {args.compile_mode}", torch.compile(sam.image_encoder, **opts),
             torch.compile(decoder(sam), **opts), nullcontext)


if __name__ == "__main__":
    main()
