#!/usr/bin/env python3
"""SAM 2.1 natively: websam beside the official sam2 1.1.0 (PyTorch, CPU) on the same cores.

Builds the official SAM 2.1 configuration asked for (default: tiny) with `build_sam2`, its weights
from the constructors' own initialisation after torch.manual_seed(0) (trained SAM 2 weights
cannot be had here), and saves it as the official files are (`torch.save({"model":
state_dict})`, the video modules included) under target/sam2-bench/. Then, on chelsea
(www/samples/chelsea.png), for 1 and 2 threads: PyTorch's `SAM2ImagePredictor.set_image` and a
click's `predict`, and websam's `examples/sam2_bench.rs` (release build) loading that file
(configuration detected from it), medians of RUNS; websam's last embedding is checked against
PyTorch's (largest difference relative to the largest magnitude). `--gpu` also times websam on
the first GPU adapter (lavapipe without one).

Usage: target/bench-venv/bin/python bench/sam2_native.py [--config t|s|b+|l] [--runs N] [--gpu]
(sam2 1.1.0 in the venv: SAM2_BUILD_CUDA=0 target/bench-venv/bin/pip install sam2==1.1.0)
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
IMAGE = os.path.join(REPO, "www", "samples", "chelsea.png")
NAMES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}


def checkpoint(config: str) -> str:
    out = os.path.join(REPO, "target", "sam2-bench", f"sam2.1_hiera_{NAMES[config]}_seed0.pt")
    if not os.path.exists(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        torch.manual_seed(0)
        model = build_sam2(f"configs/sam2.1/sam2.1_hiera_{config}.yaml", None, device="cpu")
        torch.save({"model": model.state_dict()}, out)
    return out


def torch_times(config, threads, runs, image):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_sam2(f"configs/sam2.1/sam2.1_hiera_{config}.yaml", checkpoint(config),
                       device="cpu")
    predictor = SAM2ImagePredictor(model)
    h, w = image.shape[:2]
    click = np.array([[w * 0.55, h * 0.55]], dtype=np.float32)
    encodes, decodes = [], []
    with torch.inference_mode():
        for _ in range(runs):
            t = time.perf_counter()
            predictor.set_image(image)
            encodes.append(time.perf_counter() - t)
        for _ in range(runs):
            t = time.perf_counter()
            predictor.predict(point_coords=click, point_labels=np.array([1]),
                              multimask_output=True)
            decodes.append(time.perf_counter() - t)
    emb = predictor._features["image_embed"].numpy()
    return statistics.median(encodes), statistics.median(decodes), emb


def websam_times(ckpt, threads, runs, backend):
    out = os.path.join(REPO, "target", "sam2-bench", f"websam_{backend}_{threads}.npy")
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    run = subprocess.run(
        [os.path.join(REPO, "target", "release", "examples", "sam2_bench"), ckpt, IMAGE,
         str(runs), out, backend],
        env=env, capture_output=True, text=True, check=True)
    lines = {l.split()[0]: l for l in run.stdout.splitlines()}
    encode = float(lines["encode"].split()[2])
    decode = float(lines["decode"].split()[2])
    return encode, decode, np.load(out), lines["load"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="t", choices=list(NAMES))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--example", "sam2_bench"], cwd=REPO,
                   check=True)
    ckpt = checkpoint(args.config)
    image = np.array(Image.open(IMAGE).convert("RGB"))
    print(f"SAM 2.1 {NAMES[args.config]} ({os.path.basename(ckpt)}), chelsea 451x300, "
          f"{args.runs} runs, medians; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; torch {torch.__version__}")
    print("| system | threads | encode (s) | decode (ms) | encode vs PyTorch |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        te, td, ref = torch_times(args.config, threads, args.runs, image)
        we, wd, ours, load = websam_times(ckpt, threads, args.runs, "cpu")
        rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
        print(f"| PyTorch {torch.__version__} | {threads} | {te:.3f} | {td * 1e3:.1f} | 1.00x |")
        print(f"| websam CPU | {threads} | {we:.3f} | {wd * 1e3:.1f} | {we / te:.2f}x |"
              f" <- image_embed within {rel:.1e} of PyTorch's largest magnitude; {load}")
        if threads == 2:
            sys.stdout.flush()
            if args.gpu:
                ge, gd, gpu_emb, gload = websam_times(ckpt, threads, args.runs, "gpu")
                grel = float(np.abs(gpu_emb - ref).max() / np.abs(ref).max())
                print(f"| websam GPU | - | {ge:.3f} | {gd * 1e3:.1f} | {ge / te:.2f}x |"
                      f" <- within {grel:.1e}; {gload}")


if __name__ == "__main__":
    main()
