#!/usr/bin/env python3
"""Inputs of the candle-transformers peer (bench/candle-peer) from the fixtures.

- mobile_sam_candle.safetensors: tests/fixtures/mobile_sam.pth as the file candle's SAM example
  loads (`VarBuilder::from_buffered_safetensors(.., DType::F32, ..)`): every float tensor of the
  state dict under its official key, contiguous f32 (the fixture's f16 values are exact in f32).
  The int64 BatchNorm counters (`num_batches_tracked`), which candle never reads, are left out.
- image_768x1024_pil.png: the fixture image resized as the official SamPredictor does it
  (ResizeLongestSide: torchvision resize on a PIL image, i.e. PIL bilinear with antialias). The
  native peer encodes it besides its own (image crate, CatmullRom) preprocessing, so that the
  parity report can tell the model's deviation from the preprocessing's.

Usage: python bench/candle_weights.py OUT_DIR   (torch, torchvision, safetensors, pillow)
"""

import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms.functional import resize, to_pil_image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "bench", "out")
    os.makedirs(out, exist_ok=True)
    state = torch.load(os.path.join(FIXTURES, "mobile_sam.pth"), map_location="cpu")
    tensors = {k: v.to(torch.float32).contiguous() for k, v in state.items() if v.is_floating_point()}
    weights = os.path.join(out, "mobile_sam_candle.safetensors")
    save_file(tensors, weights)

    image = np.array(Image.open(os.path.join(FIXTURES, "image.png")).convert("RGB"))
    h, w = image.shape[:2]
    scale = 1024 / max(h, w)
    size = (int(h * scale + 0.5), int(w * scale + 0.5))  # ResizeLongestSide.get_preprocess_shape
    resized = np.array(resize(to_pil_image(image), size))
    Image.fromarray(resized).save(os.path.join(out, f"image_{size[0]}x{size[1]}_pil.png"))
    print(f"wrote {weights} ({len(tensors)} tensors, f32) and {out}/image_{size[0]}x{size[1]}_pil.png")


if __name__ == "__main__":
    main()
