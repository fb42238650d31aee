#!/usr/bin/env python3
"""COCO RLE goldens for the page's export: pycocotools' encoding of the fixture masks.

The masks are the PyTorch goldens' full-size logits > 0 (tests/fixtures/case_*_logits.npy, as
SamPredictor thresholds them). For each: pycocotools' compressed RLE string (as
`mask_utils.encode(np.asfortranarray(mask))` gives it and SAM's amg.coco_encode_rle writes it),
area and bbox. tests/node/annotate.test.mjs checks the page's encoder against them.

Usage: /work/pyenv/bin/python tools/golden/make_coco_rle.py   (needs numpy and pycocotools)
"""

import json
import os
from importlib import metadata

import numpy as np
from pycocotools import mask as mask_utils

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")


def main():
    out = {"pycocotools": metadata.version("pycocotools"), "masks": []}
    for case in ["predictor_box", "predictor_points", "predictor_box_points"]:
        logits = np.load(os.path.join(FIXTURES, f"case_{case}_logits.npy"))
        for i, plane in enumerate(logits):
            mask = np.asfortranarray((plane.astype(np.float32) > 0).astype(np.uint8))
            rle = mask_utils.encode(mask)
            out["masks"].append({
                "logits": f"case_{case}_logits.npy",
                "channel": i,
                "size": rle["size"],
                "counts": rle["counts"].decode("ascii"),
                "area": int(mask_utils.area(rle)),
                "bbox": [int(v) for v in mask_utils.toBbox(rle)],
            })
    with open(os.path.join(FIXTURES, "coco_rle.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
