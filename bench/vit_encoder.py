#!/usr/bin/env python3
"""SAM ViT encoders natively: PyTorch eager on the CPU, the reference for `websam bench`.

Builds the official `build_sam_vit_{b,l,h}()` model (segment_anything) with seeded weights (the
constructors' own init; the relative positions, zero there, filled with small values so that
they cost what trained ones do), writes them as safetensors under their official keys for
websam, and times the image encoder on the fixture photograph, preprocessed as SamPredictor
does, with 1 and with all threads.

Usage: python bench/vit_encoder.py OUT_DIR [b|l|h] [RUNS]
Prints one line per thread count: median, min and max of RUNS encodes.
"""

import os
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from segment_anything import SamPredictor, sam_model_registry


def main():
    out = sys.argv[1]
    variant = sys.argv[2] if len(sys.argv) > 2 else "b"
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    torch.manual_seed(0)
    sam = sam_model_registry[f"vit_{variant}"]().eval()
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.02)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"sam_vit_{variant}_seeded.safetensors")
    if not os.path.exists(path):
        save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, path)
    print(f"weights: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    image = np.array(Image.open(os.path.join(repo, "tests/fixtures/image.png")).convert("RGB"))
    predictor = SamPredictor(sam)
    # SamPredictor.set_image's preprocessing, once; the encoder alone is timed.
    x = predictor.transform.apply_image(image)
    x = torch.as_tensor(x).permute(2, 0, 1).contiguous()[None, :, :, :]
    x = sam.preprocess(x.float())
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        times = []
        with torch.no_grad():
            sam.image_encoder(x)  # warm-up
            for _ in range(runs):
                t = time.perf_counter()
                emb = sam.image_encoder(x)
                times.append((time.perf_counter() - t) * 1000)
        print(f"pytorch {torch.__version__} eager cpu ({threads} threads) ViT-{variant.upper()} encoder "
              f"median {statistics.median(times):9.1f} ms  min {min(times):9.1f}  max {max(times):9.1f}  (n={runs})")
    np.save(os.path.join(out, f"sam_vit_{variant}_seeded_embedding.npy"), emb.numpy())


if __name__ == "__main__":
    main()
