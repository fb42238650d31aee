#!/usr/bin/env python3
"""Parity fixtures for SAM 2.1's image path on deterministic, hash-generated weights.

The model is the official `sam2` 1.1.0 SAM2Base as `build_sam2` builds it from
`configs/sam2.1/sam2.1_hiera_t.yaml` (with `apply_postprocessing`, the predictor's default: the
decoder's dynamic multimask via stability), its Hiera trunk cut to stages [1, 2, 3, 2] so that
every kind of block is there in 8 blocks: windowed at 256x256 (window 8), the three q-pool
blocks (windows 8 -> 4, 4 -> 2, 14 -> 7 with padding), windowed with padding (64x64 in windows
of 14), one global block (5) and the last stage's padded windows of 7 at 32x32. Widths are
half Hiera-T's (embed 48, 1 head at first, head dim 48; the neck's channels [384, 192, 96, 48]):
a quarter of the work, so that the GPU's encode takes seconds on a software adapter.

As tools/golden/make_vit.py (whose generator, rules and helpers this imports), no weight file is
written: every tensor of the image path (image_encoder.*, sam_prompt_encoder.*,
sam_mask_decoder.*, no_mem_embed) is a pure function of its key, manifest offset and scale, and
the Rust tests generate them bit-exactly. The video-only modules (memory attention and encoder,
object pointers) are left as the constructor made them: the image predictor never reads them,
and the manifest does not list them.

Writes into tests/fixtures/sam2/:
  manifest.json         the overrides, the generator, {key, shape, offset, scale, sha256} per
                        tensor, and `features`: the three decoder inputs of the decode-only cases
                        (image_embed, high_res_feats_0, high_res_feats_1), generated the same way
  keys_sam2.1_hiera_{t,s,b+,l}.json
                        {key: shape} of the official checkpoints' "model" state dicts, to test
                        the configuration detection on
  image.json            the image cases' source (www/samples/chelsea.png, 300x451) and, per map,
                        SAMPLE values at indices k * STRIDE mod n (k < SAMPLE) of the
                        preprocessed input and of the three features of SAM2ImagePredictor's
                        set_image: sample_<map>.npy
  case_<name>_low_res_logits.npy, case_<name>_iou.npy, and for some case_<name>_logits.npy
                        (f16: the logits at the image's size, return_logits=True)
  cases.json            the cases: `features` ones decode the manifest's generated features (an
                        image of 300x451), `image` ones decode chelsea's own features, `fill`
                        (and `imagefill`) ones the generated (chelsea's) features with
                        SAM2ImagePredictor's max_hole_area / max_sprinkle_area (scipy's 8-connected labelling standing in for the
                        CUDA kernel sam2 calls for it, which is not built without CUDA)
  resize.json, resize_sample.npy
                        SAM2Transforms on a synthetic 1300x1100 image (antialiased downscale):
                        SAMPLE values of the normalised 1024x1024 input

Usage (from the repository root, about a minute on 2 cores):
    target/bench-venv/bin/python tools/golden/make_sam2.py [--out DIR]
Running it twice yields byte-identical files.
"""

import argparse
import hashlib
import json
import math
import os
import sys
from importlib import metadata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import make_fixtures  # same folder: _fan_in, stats
import make_vit  # same folder: the weight generator and its rules

from sam2.build_sam import build_sam2
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_image_predictor import SAM2ImagePredictor

REPO = make_vit.REPO
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = [
    "++model.image_encoder.trunk.embed_dim=48",
    "++model.image_encoder.trunk.stages=[1,2,3,2]",
    "++model.image_encoder.trunk.global_att_blocks=[5]",
    "++model.image_encoder.neck.backbone_channel_list=[384,192,96,48]",
]
OFFICIAL = {
    "t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
# The image path's keys: what the manifest generates (and what the Rust model reads).
IMAGE_PATH = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")
POS_EMBED_SCALE = 0.5  # trunk.pos_embed, pos_embed_window and no_mem_embed
FEATURES = {  # the decode-only cases' inputs: unit variance
    "image_embed": [1, 256, 64, 64],
    "high_res_feats_0": [1, 32, 256, 256],
    "high_res_feats_1": [1, 64, 128, 128],
}
SAMPLE = 65536
STRIDE = 7919  # a prime: k * STRIDE mod n visits every channel and position evenly
IMAGE = "www/samples/chelsea.png"


def build(config, overrides=()):
    return build_sam2(config, ckpt_path=None, device="cpu", mode="eval",
                      hydra_overrides_extra=list(overrides), apply_postprocessing=True)


def official_keys(config) -> str:
    # On the CPU: Hiera's constructor reads its drop-path rates with .item(), which the meta
    # device cannot.
    sd = build(config).state_dict()
    lines = [f"{json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in sd.items()]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    assert list(json.loads(text)) == list(sd)
    return text


def special(mod, pname, full):
    """SAM 2's own tensors (make_vit's rules do the rest)."""
    if isinstance(mod, Hiera):
        assert pname in ("pos_embed", "pos_embed_window"), full
        return (0.0, POS_EMBED_SCALE)
    if isinstance(mod, SAM2Base):
        assert pname == "no_mem_embed", full
        return (0.0, POS_EMBED_SCALE)
    return None


def offset_scale(model: nn.Module) -> dict:
    """{key: (offset, scale)} for every image-path tensor."""
    return make_vit.offset_scale(model, special, keep=lambda key: key.startswith(IMAGE_PATH))


def spec(key, shape, offset, scale):
    v = make_vit.generate(key, math.prod(shape), offset, scale)
    return v, {"key": key, "shape": list(shape), "offset": offset, "scale": scale,
               "sha256": hashlib.sha256(v.astype("<f4").tobytes()).hexdigest()}


def make_model():
    torch.manual_seed(0)  # the constructor's own init: only the video modules keep it
    model = build(CONFIG, OVERRIDES)
    sd = model.state_dict()
    rules = offset_scale(model)
    image_keys = [k for k in sd if k.startswith(IMAGE_PATH)]
    assert list(rules) == image_keys, "rules must cover the image path, in its order"
    generated, tensors = {}, []
    for key in image_keys:
        v, s = spec(key, sd[key].shape, *rules[key])
        generated[key] = torch.from_numpy(v.reshape(tuple(sd[key].shape)).copy())
        tensors.append(s)
    missing, unexpected = model.load_state_dict(generated, strict=False)
    assert not unexpected and all(not k.startswith(IMAGE_PATH) for k in missing), missing
    model.eval()
    for k, v in generated.items():
        assert torch.equal(model.state_dict()[k], v), k
    trunk = model.image_encoder.trunk
    windows = [b.window_size for b in trunk.blocks]
    assert windows == [8, 8, 4, 4, 14, 0, 14, 7], windows
    assert trunk.q_pool_blocks == [1, 3, 6], trunk.q_pool_blocks
    assert model.sam_mask_decoder.dynamic_multimask_via_stability
    return model, tensors


def sample(a: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    idx = (np.arange(SAMPLE, dtype=np.int64) * STRIDE) % flat.size
    return flat[idx]


def versions() -> dict:
    v = {k: make_fixtures.versions()[k] for k in ("python", "torch", "torchvision", "numpy")}
    v["sam2"] = metadata.version("sam2")
    v["hydra-core"] = metadata.version("hydra-core")
    return v


def predict(predictor, c, out, prefix):
    pc = np.array(c["points"], dtype=np.float32) if c.get("points") else None
    pl = np.array(c["labels"], dtype=np.int64) if c.get("labels") else None
    bx = np.array(c["box"], dtype=np.float32) if c.get("box") else None
    mask_input = None
    if c.get("mask_input"):
        mask_input = np.load(os.path.join(out, c["mask_input"]))[None]
    with torch.no_grad():
        logits, iou, low = predictor.predict(
            point_coords=pc, point_labels=pl, box=bx, mask_input=mask_input,
            multimask_output=c["multimask"], return_logits=True)
    n = 3 if c["multimask"] else 1
    assert low.shape == (n, 256, 256) and iou.shape == (n,), (low.shape, iou.shape)
    name = prefix + c["name"]
    row = dict(c, name=name, low_res_logits=f"case_{name}_low_res_logits.npy",
               iou=f"case_{name}_iou.npy")
    np.save(os.path.join(out, row["low_res_logits"]), low.astype(np.float32))
    np.save(os.path.join(out, row["iou"]), iou.astype(np.float32))
    if c.get("full"):
        row["logits"] = f"case_{name}_logits.npy"
        np.save(os.path.join(out, row["logits"]), logits.astype(np.float16))
    row.pop("full", None)
    print(json.dumps(dict(name=name, iou=iou.tolist(), low=[float(low.min()), float(low.max())],
                          positive=[float((low[i] > 0).mean()) for i in range(n)])))
    return row, low


# Prompts in chelsea's 451x300 frame. `refine` feeds the best low-res logits of `click` back.
CASES = [
    dict(name="click", points=[[250.0, 170.0]], labels=[1], multimask=True, full=True),
    # One click, one mask: the decoder's dynamic multimask via stability decides.
    dict(name="click_single", points=[[120.0, 80.0]], labels=[1], multimask=False),
    dict(name="box", box=[60.0, 40.0, 330.0, 260.0], multimask=False, full=True),
    dict(name="box_points", points=[[200.0, 150.0], [90.0, 250.0]], labels=[1, 0],
         box=[30.0, 20.0, 400.0, 290.0], multimask=True),
    dict(name="points", points=[[300.5, 100.25], [150.0, 200.0], [420.0, 280.0]],
         labels=[1, 1, 0], multimask=False),
]


# SAM2ImagePredictor's post-processing (max_hole_area, max_sprinkle_area): on the features'
# decoder, the low-res logits' holes (8-connected components of <= 0) and sprinkles (of > 0, found
# in the logits before the holes were filled) up to that area set to +10 / -10 before the
# upscaling to the image's size. The low-res logits the predictor returns are not touched.
FILL_CASES = [
    dict(name="click", points=[[250.0, 170.0]], labels=[1], multimask=True, full=True,
         max_hole_area=40.0, max_sprinkle_area=40.0),
    dict(name="box", box=[60.0, 40.0, 330.0, 260.0], multimask=False, full=True,
         max_hole_area=300.0, max_sprinkle_area=0.0),
]


def connected_components_8(mask: torch.Tensor):
    """What sam2's CUDA kernel `_C.get_connected_componnets` returns (sam2.utils.misc
    .get_connected_components): per pixel of each (N, 1, H, W) plane, its 8-connected
    component's label (0 outside) and the component's area (0 outside). The kernel is not built
    without CUDA, and the predictor then skips the post-processing with a warning; this stands
    in for it, scipy's labelling with a 3x3 structure."""
    from scipy import ndimage

    m = mask.to(torch.uint8).numpy()
    labels = np.zeros(m.shape, np.int32)
    areas = np.zeros(m.shape, np.int32)
    for i in range(m.shape[0]):
        lab, _ = ndimage.label(m[i, 0], structure=np.ones((3, 3), dtype=int))
        sizes = np.bincount(lab.ravel())
        labels[i, 0] = lab
        areas[i, 0] = np.where(lab > 0, sizes[lab], 0)
    return torch.from_numpy(labels), torch.from_numpy(areas)


def run_fill_cases(model, features, out, prefix, plain_prefix):
    """FILL_CASES on `features`, each with a predictor of its own areas; checks that the
    post-processing changed some of the masks' pixels, and that the low-res logits and IoU are
    those of the same prompt without it (case `plain_prefix` + name), whose files the row names."""
    import sam2.utils.misc as misc

    misc.get_connected_components = connected_components_8
    plain = SAM2ImagePredictor(model)
    plain._features, plain._orig_hw, plain._is_image_set = features, [(300, 451)], True
    rows = []
    for c in FILL_CASES:
        areas = dict(max_hole_area=c["max_hole_area"], max_sprinkle_area=c["max_sprinkle_area"])
        fill = SAM2ImagePredictor(model, **areas)
        fill._features, fill._orig_hw, fill._is_image_set = features, [(300, 451)], True
        row, _ = predict(fill, c, out, prefix)
        for key in ("low_res_logits", "iou"):
            same = f"case_{plain_prefix}{c['name']}_{key}.npy"
            assert np.array_equal(np.load(os.path.join(out, row[key])),
                                  np.load(os.path.join(out, same))), (row[key], same)
            os.remove(os.path.join(out, row[key]))
            row[key] = same
        with torch.no_grad():
            kw = dict(point_coords=np.array(c["points"], np.float32) if c.get("points") else None,
                      point_labels=np.array(c["labels"]) if c.get("labels") else None,
                      box=np.array(c["box"], np.float32) if c.get("box") else None,
                      multimask_output=c["multimask"], return_logits=True)
            before, _, _ = plain.predict(**kw)
            after, _, _ = fill.predict(**kw)
        changed = [int(((before[i] > 0) != (after[i] > 0)).sum()) for i in range(len(after))]
        print(f"  {prefix}{c['name']}: {changed} pixels of the masks changed by the post-processing")
        assert all(n > 0 for n in changed), changed
        rows.append(row)
    return rows


def run_cases(predictor, out, prefix):
    rows = []
    best_click = None
    for c in CASES:
        row, low = predict(predictor, c, out, prefix)
        rows.append(row)
        if c["name"] == "click":
            iou = np.load(os.path.join(out, row["iou"]))
            best_click = low[int(np.argmax(iou))]
    mask_file = f"case_{prefix}refine_mask_input.npy"
    np.save(os.path.join(out, mask_file), best_click.astype(np.float32))
    row, _ = predict(predictor, dict(name="refine", points=[[250.0, 170.0], [100.0, 60.0]],
                                     labels=[1, 0], mask_input=mask_file, multimask=False),
                     out, prefix)
    rows.append(row)
    return rows


def synthetic_image(h=1300, w=1100) -> np.ndarray:
    """Smooth colour ramps and rings (a PNG of a few hundred KB), larger than 1024 both ways."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.sqrt((x - 0.4 * w) ** 2 + (y - 0.6 * h) ** 2)
    rgb = np.stack([
        127.5 + 127.5 * np.sin(r / 9.0),
        255.0 * x / (w - 1),
        127.5 + 127.5 * np.cos(x / 23.0 + y / 31.0),
    ], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def write(path, text):
    with open(path, "w", newline="\n") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "sam2"))
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    make_vit._self_check()

    for name, config in OFFICIAL.items():
        write(os.path.join(out, f"keys_sam2.1_hiera_{name}.json"), official_keys(config))

    model, tensors = make_model()
    features = {}
    feature_specs = []
    for key, shape in FEATURES.items():
        v, s = spec(f"features.{key}", shape, 0.0, make_vit.f32(make_vit.EMBED_SCALE))
        features[key] = torch.from_numpy(v.reshape(shape).copy())
        feature_specs.append(s)
    head = {
        "config": CONFIG,
        "overrides": OVERRIDES,
        "hiera": {"embed_dim": 48, "num_heads": 1, "stages": [1, 2, 3, 2],
                  "global_att_blocks": [5], "window_spec": [8, 4, 14, 7],
                  "window_pos_embed_bkg_spatial_size": [7, 7]},
        "generator": make_vit.GENERATOR,
        "rules": ("make_vit.py's, and trunk.pos_embed, trunk.pos_embed_window and no_mem_embed: "
                  "scale 0.5; `features`: scale sqrt(3)"),
        "features": feature_specs,
        "num_tensors": len(tensors),
        "num_params": sum(math.prod(t["shape"]) for t in tensors),
        "reference": versions(),
    }
    write(os.path.join(out, "manifest.json"), make_vit.one_per_line(head, "tensors", tensors))
    print(f"manifest: {len(tensors)} tensors, {head['num_params']} parameters")

    predictor = SAM2ImagePredictor(model)

    # ---- the image: chelsea's features, sampled --------------------------------------------
    image = np.array(Image.open(os.path.join(REPO, IMAGE)).convert("RGB"))
    assert image.shape == (300, 451, 3), image.shape
    with torch.no_grad():
        x = predictor._transforms(image)
        predictor.set_image(image)
    maps = {
        "input": x.numpy(),
        "image_embed": predictor._features["image_embed"].numpy(),
        "high_res_feats_0": predictor._features["high_res_feats"][0].numpy(),
        "high_res_feats_1": predictor._features["high_res_feats"][1].numpy(),
    }
    image_rows = {"image": IMAGE, "sample": SAMPLE, "stride": STRIDE, "maps": {}}
    for k, a in maps.items():
        np.save(os.path.join(out, f"sample_{k}.npy"), sample(a))
        image_rows["maps"][k] = {"shape": list(a.shape), "sample": f"sample_{k}.npy",
                                 "max_abs": float(np.abs(a).max())}
        print(make_fixtures.stats(k, a))
    write(os.path.join(out, "image.json"), json.dumps(image_rows, indent=1) + "\n")
    image_cases = run_cases(predictor, out, "image_")
    image_fill_cases = run_fill_cases(model, predictor._features, out, "imagefill_", "image_")

    # ---- decode only: the generated features, in chelsea's frame ---------------------------
    predictor._features = {"image_embed": features["image_embed"],
                           "high_res_feats": [features["high_res_feats_0"],
                                              features["high_res_feats_1"]]}
    feature_cases = run_cases(predictor, out, "features_")
    fill_cases = run_fill_cases(model, predictor._features, out, "fill_", "features_")
    rows = feature_cases + image_cases + fill_cases + image_fill_cases
    for r in rows:
        r["orig_size"] = [300, 451]
    cases_head = {"image": IMAGE, "reference": versions()}
    write(os.path.join(out, "cases.json"), make_vit.one_per_line(cases_head, "cases", rows))

    # ---- the transforms on an image larger than 1024 (antialiased downscale) ---------------
    big = synthetic_image()
    Image.fromarray(big).save(os.path.join(out, "resize.png"), optimize=True)
    with torch.no_grad():
        t = predictor._transforms(np.array(Image.open(os.path.join(out, "resize.png"))))
    np.save(os.path.join(out, "resize_sample.npy"), sample(t.numpy()))
    write(os.path.join(out, "resize.json"), json.dumps(
        {"image": "resize.png", "shape": list(t.shape), "sample": "resize_sample.npy",
         "stride": STRIDE}, indent=1) + "\n")


if __name__ == "__main__":
    main()
