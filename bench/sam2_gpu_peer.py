#!/usr/bin/env python3
"""SAM 2.1 on the lent GPU (bench/device.sh): websam's native engine (examples/sam2_bench.rs on
the first GPU adapter) beside the official sam2 1.1.0 in PyTorch (eager, f32) on the same card,
the same weights and image (www/samples/chelsea.png), medians of RUNS after warm-ups.

The weights are made here as bench/sam2_native.py makes its checkpoint (`build_sam2` on the CPU
after torch.manual_seed(0), saved as `{"model": state_dict}`): the file (156 MB for tiny) is
too large to travel. Its fingerprint (sha256 over the state dict's names and bytes) is printed
beside the one of the file made on the 2-core VM, so that a mismatch (another torch's
initialisers) shows.

Like with like: PyTorch's `set_image` (resize on the CPU, upload, encode; synchronised) against
websam's encode; a click's `predict` (three candidates, masks at the image size read back)
against websam's decode. websam's image_embed is compared with PyTorch's (largest difference
relative to PyTorch's largest magnitude).

Usage: python bench/sam2_gpu_peer.py --websam BIN [--config t|s|b+|l] [--runs N]
       [--device cuda|cpu] [--backend gpu|cpu] [--json OUT.json]
(a dry run without a GPU: --device cpu --backend cpu --runs 1)
"""

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sam2_native import IMAGE, NAMES  # noqa: E402

from sam2.build_sam import build_sam2  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

# sha256 of target/sam2-bench/sam2.1_hiera_tiny_seed0.pt's state dict on the 2-core VM
# (torch 2.15.0, sam2 1.1.0), as `fingerprint` computes it.
VM_FINGERPRINT = {"t": "fe4560c5d4f0031fa420dcbddbcf40fa32b853f8e2b22ec1dfbe6bfba2e35df3"}


def fingerprint(state):
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def websam(binary, ckpt, runs, backend):
    out = os.path.join(os.path.dirname(ckpt), f"websam_{backend}.npy")
    run = subprocess.run([binary, ckpt, IMAGE, str(runs), out, backend], capture_output=True,
                         text=True, timeout=150)
    print(run.stdout + run.stderr, end="")
    run.check_returncode()
    lines = {l.split()[0]: l for l in run.stdout.splitlines() if l.strip()}
    return (float(lines["encode"].split()[2]), float(lines["decode"].split()[2]), np.load(out),
            lines["load"])


def torch_times(model, runs, image, device):
    predictor = SAM2ImagePredictor(model)
    h, w = image.shape[:2]
    click = np.array([[w * 0.55, h * 0.55]], dtype=np.float32)  # sam2_bench.rs's click
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    encodes, decodes = [], []
    with torch.inference_mode():
        for i in range(runs + 2):  # two warm-ups
            t = time.perf_counter()
            predictor.set_image(image)
            sync()
            encodes.append(time.perf_counter() - t)
        for i in range(runs + 2):
            t = time.perf_counter()
            predictor.predict(point_coords=click, point_labels=np.array([1]),
                              multimask_output=True)
            decodes.append(time.perf_counter() - t)
    emb = predictor._features["image_embed"].float().cpu().numpy()
    return statistics.median(encodes[2:]), statistics.median(decodes[2:]), emb, encodes[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--websam", required=True, help="examples/sam2_bench, built for release")
    ap.add_argument("--config", default="t", choices=list(NAMES))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="gpu", choices=["gpu", "cpu"])
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = {}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)

    # The weights, as bench/sam2_native.py's checkpoint().
    t = time.perf_counter()
    torch.manual_seed(0)
    model = build_sam2(f"configs/sam2.1/sam2.1_hiera_{args.config}.yaml", None, device="cpu")
    state = model.state_dict()
    fp = fingerprint(state)
    vm = VM_FINGERPRINT.get(args.config)
    ckpt = os.path.join(tempfile.gettempdir(), "sam2-bench",
                        f"sam2.1_hiera_{NAMES[args.config]}_seed0.pt")
    os.makedirs(os.path.dirname(ckpt), exist_ok=True)
    torch.save({"model": state}, ckpt)
    rows["weights"] = {"fingerprint": fp, "same_as_vm": fp == vm if vm else None}
    print(f"SAM 2.1 {NAMES[args.config]} seeded weights made in {time.perf_counter() - t:.1f} s; "
          f"fingerprint {fp[:16]}... ({'the VM file' if fp == vm else 'NOT the VM file'}'s)")
    image = np.array(Image.open(IMAGE).convert("RGB"))
    print(f"chelsea {image.shape[1]}x{image.shape[0]}, {args.runs} runs, medians; "
          f"{platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))
    failed = False
    ours = None
    try:
        we, wd, ours, load = websam(args.websam, ckpt, args.runs, args.backend)
        rows["websam"] = {"encode_ms": we * 1e3, "decode_ms": wd * 1e3, "load": load}
    except (subprocess.SubprocessError, OSError, KeyError, ValueError) as e:
        print(f"websam failed: {e}")
        failed = True
    save()
    model = model.to(args.device)
    te, td, ref, first = torch_times(model, args.runs, image, args.device)
    rows["torch"] = {"encode_ms": te * 1e3, "decode_ms": td * 1e3, "first_set_image_s": first}
    if args.device == "cuda":
        rows["torch"]["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("| system | encode (ms) | decode (ms) |")
    print("|---|---|---|")
    print(f"| PyTorch {torch.__version__} eager f32 ({args.device}) | {te * 1e3:.1f} | "
          f"{td * 1e3:.1f} |")
    if ours is not None:
        rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
        rows["websam"]["embed_rel_diff"] = rel
        print(f"| websam {args.backend} | {we * 1e3:.1f} | {wd * 1e3:.1f} | <- {we / te:.2f}x and "
              f"{wd / td:.2f}x PyTorch's; image_embed within {rel:.1e} of PyTorch's largest "
              f"magnitude; {load}")
    save()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
