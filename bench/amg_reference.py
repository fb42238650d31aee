#!/usr/bin/env python3
"""The official automatic mask generator's time on a photograph: the baseline of
`bench/everything.sh` (here, on the CPU) and of the device job (on a lent GPU).

Model: mobile_sam's `sam_model_registry["vit_t"]` (TinyViT with SAM's prompt encoder and mask
decoder, the modules of segment-anything) loaded with the trained `models/mobile_sam.pt` (or
--weights); the generator is segment-anything's official `SamAutomaticMaskGenerator`.
For each grid asked: `SamAutomaticMaskGenerator(model, points_per_side=N, output_mode="coco_rle")
.generate(image)`, everything else the official default, timed wall clock around the call (it
encodes the image itself), after one untimed warm-up call of a 2x2 grid; --runs calls, the median
reported. Prints one line per grid and writes the rows as JSON.

Usage: python3 bench/amg_reference.py [--device cpu|cuda] [--grids 32,16] [--runs 1]
       [--image www/samples/chelsea.png] [--json PATH]
"""

import argparse
import json
import os
import statistics
import time
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mobile_sam import sam_model_registry  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--grids", default="32,16")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--image", default=os.path.join(ROOT, "www", "samples", "chelsea.png"))
    ap.add_argument("--weights", default=os.path.join(ROOT, "models", "mobile_sam.pt"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    model = sam_model_registry["vit_t"]()
    model.load_state_dict(torch.load(args.weights, map_location="cpu"), strict=True)
    model = model.to(args.device).eval()
    image = np.array(Image.open(args.image).convert("RGB"))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    SamAutomaticMaskGenerator(model, points_per_side=2, output_mode="coco_rle").generate(image)
    rows = []
    for n in [int(g) for g in args.grids.split(",")]:
        gen = SamAutomaticMaskGenerator(model, points_per_side=n, output_mode="coco_rle")
        times, count = [], 0
        for _ in range(args.runs):
            sync()
            t = time.perf_counter()
            records = gen.generate(image)
            sync()
            times.append(time.perf_counter() - t)
            count = len(records)
        row = {
            "grid": n, "device": args.device, "threads": torch.get_num_threads(),
            "median_s": statistics.median(times), "runs": len(times), "records": count,
            "image": os.path.relpath(args.image, ROOT), "torch": torch.__version__,
        }
        rows.append(row)
        print(f"official generator, {n}x{n} grid, {args.device} ({row['threads']} threads): "
              f"median {row['median_s']:.2f} s over {len(times)} run(s), {count} masks", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
