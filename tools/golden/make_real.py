#!/usr/bin/env python3
"""Real-weights goldens for websam: the official MobileSAM code on the trained checkpoint and
real photographs.

Model: the official segment_anything `Sam` / `PromptEncoder` / `MaskDecoder` with mobile_sam's
`TinyViT`, built exactly as mobile_sam's `build_sam_vit_t` (make_fixtures.build_mobile_sam),
loaded strictly with the trained `mobile_sam.pt` (`./build.sh setup` puts it in models/).

Photographs: scikit-image's bundled data (`skimage.data`), written to www/samples/ as PNG (the
page offers them as samples, with JPEG thumbnails in www/samples/thumbs/; the tests read them
from there):
- chelsea.png  451x300, `skimage.data.chelsea` (Stefan van der Walt, CC0);
- coffee.png   600x400, `skimage.data.coffee` (Rachel Michetti, CC0);
- astronaut.png 320x512, columns 40..360 of `skimage.data.astronaut` (NASA, public domain).

For each photograph, into tests/fixtures/real/:
- `<photo>_embedding.npy`: `SamPredictor.set_image(photo)` then `predictor.features`, stored as
  f16 (half the size). The decoder goldens below are computed from this f16-rounded embedding
  (given back to the predictor as f32), so they are exact for the stored input.
- per case `<photo>_<case>_low_res_logits.npy` f32 [C,256,256], `<photo>_<case>_iou.npy` f32 [C]
  from `SamPredictor.predict(..., return_logits=True)`;
- `<photo>_<case>_logits.png`: the full-size logits [C,H,W] as one 8-bit grey PNG of C*H rows,
  value = clip(round(100 * logit) + 128, 0, 255): the mask is value > 128, and the value says how
  far from 0 the logit was (to 0.01, saturating at +-1.27), so a test can allow flips in a band
  around 0 and nowhere else.
- `<photo>_mask_input.npy`: the low-res logits of the best candidate of `point_multimask`, the
  mask input of the `refine` case.
- cases.json: every case with its inputs as passed to `SamPredictor.predict`, the reference's
  best candidate (argmax IoU) and the files.

Usage: python tools/golden/make_real.py [--weights models/mobile_sam.pt] [--out DIR]
"""

import argparse
import hashlib
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import build_mobile_sam, stats, versions  # noqa: E402
from segment_anything import SamPredictor  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
THUMB_HEIGHT = 120
CHECKPOINT_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"


def photos():
    """name -> (HxWx3 uint8, source, licence)."""
    from skimage import data

    return {
        "chelsea": (data.chelsea(), "skimage.data.chelsea", "CC0 (Stefan van der Walt)"),
        "coffee": (data.coffee(), "skimage.data.coffee", "CC0 (Rachel Michetti)"),
        "astronaut": (np.ascontiguousarray(data.astronaut()[:, 40:360]),
                      "skimage.data.astronaut, columns 40..360",
                      "public domain (NASA)"),
    }


# Prompts in each photograph's pixels. point_multimask comes first: its best candidate is the
# mask input of `refine`.
CASES = {
    "chelsea": [
        dict(name="point_multimask", points=[[250, 170]], labels=[1], multimask=True),
        dict(name="box", box=[130, 80, 215, 150]),
        dict(name="points", points=[[250, 170], [330, 135], [420, 120]], labels=[1, 1, 0]),
        dict(name="box_point", box=[0, 0, 410, 300], points=[[265, 245]], labels=[1]),
        dict(name="refine", points=[[250, 170], [100, 250]], labels=[1, 1], mask_input=True),
    ],
    "coffee": [
        dict(name="point_multimask", points=[[290, 150]], labels=[1], multimask=True),
        dict(name="box", box=[170, 15, 410, 310]),
        dict(name="points", points=[[120, 300], [290, 150]], labels=[1, 0]),
        dict(name="box_point", box=[320, 60, 425, 330], points=[[365, 285]], labels=[1]),
        dict(name="refine", points=[[290, 150], [230, 270]], labels=[1, 1], mask_input=True),
    ],
    "astronaut": [
        dict(name="point_multimask", points=[[185, 120]], labels=[1], multimask=True),
        dict(name="box", box=[90, 340, 175, 430]),
        dict(name="points", points=[[150, 400], [185, 120]], labels=[1, 0]),
        dict(name="box_point", box=[60, 10, 320, 512], points=[[185, 120]], labels=[1]),
        dict(name="refine", points=[[185, 120], [180, 60]], labels=[1, 1], mask_input=True),
    ],
}


def logits_png(logits: np.ndarray, path: str) -> None:
    """[C,H,W] logits as one grey PNG of C*H rows: clip(round(100 * logit) + 128, 0, 255)."""
    c, h, w = logits.shape
    q = np.clip(np.rint(logits.astype(np.float64) * 100.0) + 128.0, 0, 255).astype(np.uint8)
    Image.fromarray(q.reshape(c * h, w), mode="L").save(path, format="PNG", compress_level=9)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=os.path.join(REPO, "models", "mobile_sam.pt"))
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "real"))
    ap.add_argument("--samples", default=os.path.join(REPO, "www", "samples"))
    args = ap.parse_args()
    if sha256(args.weights) != CHECKPOINT_SHA256:
        sys.exit(f"{args.weights} is not the trained mobile_sam.pt (sha256 {CHECKPOINT_SHA256})")
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.samples, exist_ok=True)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    model = build_mobile_sam()
    state = torch.load(args.weights, map_location="cpu")
    model.load_state_dict(state, strict=True)
    # eval() after loading: TinyViT's attention caches its biases (`ab`) when it enters eval mode.
    model.train()
    model.eval()
    predictor = SamPredictor(model)

    manifest = {"weights": "models/mobile_sam.pt", "sha256": CHECKPOINT_SHA256,
                "versions": versions(), "photos": []}
    for name, (pixels, source, licence) in photos().items():
        path = os.path.join(args.samples, f"{name}.png")
        Image.fromarray(pixels, mode="RGB").save(path, format="PNG", compress_level=9)
        image = np.array(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        # The page's thumbnail: 120 px high (twice its size in the page), JPEG.
        os.makedirs(os.path.join(args.samples, "thumbs"), exist_ok=True)
        Image.fromarray(image).resize((round(w * THUMB_HEIGHT / h), THUMB_HEIGHT), Image.LANCZOS).save(
            os.path.join(args.samples, "thumbs", f"{name}.jpg"), format="JPEG", quality=80)
        with torch.no_grad():
            predictor.set_image(image)
        emb = predictor.features.detach().numpy().astype(np.float16)
        np.save(os.path.join(args.out, f"{name}_embedding.npy"), emb)
        print(stats(f"{name} embedding", emb))
        # Decode from the stored (f16-rounded) embedding.
        predictor.features = torch.from_numpy(emb.astype(np.float32))
        entry = {"name": name, "image": f"www/samples/{name}.png", "source": source,
                 "licence": licence, "orig_size": [h, w],
                 "embedding": f"real/{name}_embedding.npy", "cases": []}
        best_low_res = None
        for spec in CASES[name]:
            case = spec["name"]
            points = spec.get("points")
            labels = spec.get("labels")
            box = spec.get("box")
            multimask = spec.get("multimask", False)
            mask_input = None
            if spec.get("mask_input"):
                mask_input = best_low_res
                np.save(os.path.join(args.out, f"{name}_mask_input.npy"), mask_input)
            with torch.no_grad():
                logits, iou, low_res = predictor.predict(
                    point_coords=None if points is None else np.array(points, dtype=np.float32),
                    point_labels=None if labels is None else np.array(labels),
                    box=None if box is None else np.array(box, dtype=np.float32),
                    mask_input=mask_input,
                    multimask_output=multimask,
                    return_logits=True,
                )
            best = int(np.argmax(iou))
            if case == "point_multimask":
                best_low_res = low_res[best:best + 1].astype(np.float32)
            stem = f"{name}_{case}"
            np.save(os.path.join(args.out, f"{stem}_low_res_logits.npy"), low_res.astype(np.float32))
            np.save(os.path.join(args.out, f"{stem}_iou.npy"), iou.astype(np.float32))
            logits_png(logits, os.path.join(args.out, f"{stem}_logits.png"))
            near = float((np.abs(logits) < 0.05).mean())
            print(f"{stem}: iou {np.round(iou, 4).tolist()} best {best}, "
                  f"mask {float((logits[best] > 0).mean()):.3f} of the image, "
                  f"{near:.2e} of pixels within 0.05 of 0, "
                  f"low-res logits [{low_res.min():.1f}, {low_res.max():.1f}]")
            entry["cases"].append({
                "name": case, "points": points, "labels": labels, "box": box,
                "mask_input": f"real/{name}_mask_input.npy" if mask_input is not None else None,
                "multimask": multimask, "orig_size": [h, w], "best": best,
                "low_res_logits": f"real/{stem}_low_res_logits.npy",
                "iou": f"real/{stem}_iou.npy", "logits_png": f"real/{stem}_logits.png",
            })
        manifest["photos"].append(entry)
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
