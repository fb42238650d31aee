#!/usr/bin/env python3
"""Deterministic golden-fixture generator for websam.

Builds the official MobileSAM model (segment_anything Sam / PromptEncoder /
MaskDecoder / TwoWayTransformer + mobile_sam TinyViT, arguments copied from
mobile_sam.build_sam.build_sam_vit_t) with seeded synthetic weights, rounds
every float weight so that it is exactly representable in both f16 and bf16,
and writes weights, a synthetic image, resize goldens, the image embedding and
decoder goldens into tests/fixtures/.

Usage (from anywhere):
    /work/pyenv/bin/python tools/golden/make_fixtures.py [--out DIR]

Running it twice yields byte-identical files (checked with sha256sum).
"""

import argparse
import io
import json
import math
import os
import sys
import warnings
from importlib import metadata

warnings.filterwarnings("ignore")

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms.functional import resize, to_pil_image

from segment_anything import SamPredictor
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d as SamLayerNorm2d
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from mobile_sam.modeling.tiny_vit_sam import Attention as TinyViTAttention
from mobile_sam.modeling.tiny_vit_sam import LayerNorm2d as TinyLayerNorm2d
from mobile_sam.modeling.tiny_vit_sam import TinyViT

SEED = 20240607
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Weight-scale knobs (tuned so activations look realistic, see README).
WEIGHT_GAIN = math.sqrt(3.0)  # => unit-variance-preserving uniform init
# Extra gain for the last layer of each hypernetwork MLP: the mask logits are
# linear in it, so it sets the logit magnitude (~ +-10) without changing signs.
HYPER_OUT_GAIN = 3.0
BIAS_GAIN = 0.1    # bias ~ U(-bg/sqrt(fan_in), bg/sqrt(fan_in))


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------
def build_mobile_sam() -> Sam:
    """Exactly mobile_sam.build_sam.build_sam_vit_t, but with the official
    segment_anything Sam / PromptEncoder / MaskDecoder / TwoWayTransformer."""
    prompt_embed_dim = 256
    image_size = 1024
    vit_patch_size = 16
    image_embedding_size = image_size // vit_patch_size
    sam = Sam(
        image_encoder=TinyViT(
            img_size=1024, in_chans=3, num_classes=1000,
            embed_dims=[64, 128, 160, 320],
            depths=[2, 2, 6, 2],
            num_heads=[2, 4, 5, 10],
            window_sizes=[7, 7, 14, 7],
            mlp_ratio=4.,
            drop_rate=0.,
            drop_path_rate=0.0,
            use_checkpoint=False,
            mbconv_expand_ratio=4.0,
            local_conv_size=3,
            layer_lr_decay=0.8,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(image_embedding_size, image_embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=prompt_embed_dim,
                mlp_dim=2048,
                num_heads=8,
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    return sam


def _fan_in(mod: nn.Module) -> float:
    if isinstance(mod, nn.Linear):
        return float(mod.in_features)
    if isinstance(mod, nn.ConvTranspose2d):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        s = mod.stride[0] * mod.stride[1]
        return float(mod.in_channels // mod.groups) * k / s
    if isinstance(mod, nn.Conv2d):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        return float(mod.in_channels // mod.groups) * k
    raise TypeError(type(mod))


def init_weights(model: nn.Module, gen: torch.Generator) -> None:
    """Fill every parameter and buffer deterministically."""

    def uni(t, lo, hi):
        return torch.rand(t.shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo

    def nrm(t):
        return torch.randn(t.shape, generator=gen, dtype=torch.float32)

    handled = set()
    with torch.no_grad():
        for mname, mod in model.named_modules():
            prefix = mname + "." if mname else ""
            local = list(mod.named_parameters(recurse=False)) + list(
                mod.named_buffers(recurse=False))
            for pname, t in local:
                full = prefix + pname
                if not torch.is_floating_point(t):
                    handled.add(full)
                    continue
                if isinstance(mod, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                    b = 1.0 / math.sqrt(_fan_in(mod))
                    g = WEIGHT_GAIN
                    if (mname.startswith("mask_decoder.output_hypernetworks_mlps.")
                            and mname.endswith(".layers.2")):
                        g *= HYPER_OUT_GAIN
                    if pname == "weight":
                        v = uni(t, -g * b, g * b)
                    elif pname == "bias":
                        v = uni(t, -BIAS_GAIN * b, BIAS_GAIN * b)
                    else:
                        raise KeyError(full)
                elif isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d, SamLayerNorm2d,
                                      TinyLayerNorm2d)):
                    if pname == "weight":
                        v = 1.0 + 0.1 * nrm(t)
                    elif pname == "bias":
                        v = 0.1 * nrm(t)
                    elif pname == "running_mean":
                        v = 0.1 * nrm(t)
                    elif pname == "running_var":
                        v = uni(t, 0.5, 1.5)
                    else:
                        raise KeyError(full)
                elif isinstance(mod, nn.Embedding):
                    v = nrm(t)
                elif isinstance(mod, PositionEmbeddingRandom):
                    assert pname == "positional_encoding_gaussian_matrix", full
                    v = nrm(t)
                elif isinstance(mod, TinyViTAttention):
                    if pname == "attention_biases":
                        v = 0.1 * nrm(t)
                    elif pname == "ab":
                        handled.add(full)  # derived cache, rebuilt by eval()
                        continue
                    else:
                        raise KeyError(full)
                elif isinstance(mod, Sam) and pname in ("pixel_mean", "pixel_std"):
                    handled.add(full)  # constants from the constructor
                    continue
                else:
                    raise KeyError(f"unhandled tensor {full} in {type(mod).__name__}")
                t.copy_(v)
                handled.add(full)
    missing = set(model.state_dict().keys()) - handled
    assert not missing, missing


def round_f16_bf16(t: torch.Tensor) -> torch.Tensor:
    """Round to a value exactly representable in both bf16 and f16."""
    r = t.to(torch.bfloat16).to(torch.float32)
    r = torch.where(r.abs() < 2.0 ** -14, torch.zeros_like(r), r)
    # 65280 = largest bf16 value <= 65504 (the f16 max), so exact in both.
    r = r.clamp(-65280.0, 65280.0)
    # sanity: exact round trip through both half types
    assert torch.equal(r.to(torch.float16).to(torch.float32), r)
    assert torch.equal(r.to(torch.bfloat16).to(torch.float32), r)
    return r


def make_model() -> Sam:
    torch.manual_seed(SEED)
    model = build_mobile_sam()
    gen = torch.Generator().manual_seed(SEED)
    init_weights(model, gen)
    sd = model.state_dict()
    rounded = {k: (round_f16_bf16(v) if torch.is_floating_point(v) else v.clone())
               for k, v in sd.items()}
    model.load_state_dict(rounded, strict=True)
    # eval() AFTER loading: TinyViT Attention caches `ab` from attention_biases.
    model.train()
    model.eval()
    for m in model.modules():
        if isinstance(m, TinyViTAttention):
            assert torch.equal(m.ab, m.attention_biases[:, m.attention_bias_idxs])
    return model


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------
OBJECTS = {
    # name: description in original 640x480 image coordinates
    "red_circle": dict(center=(160, 150), radius=80),
    "blue_rect": dict(box=(380, 60, 560, 200)),
    "green_triangle": dict(verts=((100, 440), (260, 440), (180, 290))),
    "yellow_ellipse": dict(center=(470, 360), axes=(110, 70)),
    "purple_square": dict(box=(590, 400, 630, 440)),
}


def make_image(rng: np.random.Generator) -> np.ndarray:
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    bg = np.stack([
        60 + 80 * xx / w + 15 * np.sin(yy / 9.0),
        90 + 60 * yy / h + 15 * np.sin((xx + yy) / 13.0),
        140 - 50 * xx / w + 12 * np.cos(xx / 7.0) * np.sin(yy / 11.0),
    ], axis=-1)
    img = bg.copy()

    def fill(mask, color):
        img[mask] = np.asarray(color, dtype=np.float64)
        # slight shading inside the object so it is not perfectly flat
        img[mask] += (8 * np.sin(xx[mask] / 5.0) * np.cos(yy[mask] / 6.0))[:, None]

    c = OBJECTS["red_circle"]
    fill((xx - c["center"][0]) ** 2 + (yy - c["center"][1]) ** 2 <= c["radius"] ** 2,
         (220, 40, 35))
    x0, y0, x1, y1 = OBJECTS["blue_rect"]["box"]
    fill((xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1), (30, 60, 210))
    (ax, ay), (bx, by), (cx, cy) = OBJECTS["green_triangle"]["verts"]

    def edge(px, py, qx, qy):
        return (qx - px) * (yy - py) - (qy - py) * (xx - px)

    e1, e2, e3 = edge(ax, ay, bx, by), edge(bx, by, cx, cy), edge(cx, cy, ax, ay)
    fill(((e1 >= 0) & (e2 >= 0) & (e3 >= 0)) | ((e1 <= 0) & (e2 <= 0) & (e3 <= 0)),
         (40, 190, 60))
    e = OBJECTS["yellow_ellipse"]
    fill(((xx - e["center"][0]) / e["axes"][0]) ** 2
         + ((yy - e["center"][1]) / e["axes"][1]) ** 2 <= 1.0, (235, 215, 40))
    x0, y0, x1, y1 = OBJECTS["purple_square"]["box"]
    fill((xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1), (150, 50, 170))

    img += rng.normal(0.0, 4.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


RESIZE_TARGETS = [(660, 1024), (100, 155), (333, 200), (700, 300), (100, 500)]


def make_resize_src(rng: np.random.Generator) -> np.ndarray:
    h, w = 333, 517
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([
        255 * xx / (w - 1),
        255 * yy / (h - 1),
        127.5 + 127.5 * np.sin(xx / 6.0 + yy / 9.0),
    ], axis=-1)
    checker = (((xx // 8) + (yy // 8)) % 2)[..., None] * 60.0 - 30.0
    noise = rng.uniform(-70.0, 70.0, size=base.shape)
    img = base + checker + noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def save_png(arr: np.ndarray, path: str) -> None:
    Image.fromarray(arr, mode="RGB").save(path, format="PNG", optimize=False, compress_level=9)


def official_resize(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    # Identical to ResizeLongestSide.apply_image (torchvision resize on PIL).
    return np.array(resize(to_pil_image(arr), (h, w)))


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def versions() -> dict:
    def v(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": v("torchvision"),
        "numpy": np.__version__,
        "pillow": v("pillow") or v("Pillow"),
        "safetensors": v("safetensors"),
        "segment_anything": v("segment-anything") or v("segment_anything"),
        "mobile_sam": "mobilesam-mirror " + str(v("mobilesam-mirror")),
        "timm": v("timm"),
    }


def set_image(model, image):
    """The official SamPredictor on a 480x640 RGB image: the predictor and its features (f32)."""
    predictor = SamPredictor(model)
    with torch.no_grad():
        predictor.set_image(image)
    assert predictor.original_size == (480, 640)
    assert predictor.input_size == (768, 1024), predictor.input_size
    emb = predictor.features.detach().cpu().numpy().astype(np.float32)
    assert emb.shape == (1, 256, 64, 64)
    return predictor, emb


def stats(name, a):
    a = np.asarray(a, dtype=np.float64)
    return (f"{name}: shape={list(a.shape)} min={a.min():.4g} max={a.max():.4g} "
            f"mean={a.mean():.4g} std={a.std():.4g}")


def make_loader_fixtures(out: str) -> None:
    """Small checkpoints for the loader: every float dtype, views (transposed, offset, shared
    storage), a 0-d tensor, an nn.Parameter, an int64 buffer (skipped by the loader), and a
    state dict wrapped under "model" as training scripts save it. `expected.safetensors`
    holds the same float tensors, contiguous f32."""
    g = torch.Generator().manual_seed(SEED + 1)
    base = torch.randn(3, 5, generator=g)
    long_vec = torch.randn(10, generator=g)
    sd = {
        "a.f32": base,
        "b.f16": torch.randn(4, 2, generator=g).to(torch.float16),
        "c.bf16": torch.randn(2, 3, 2, generator=g).to(torch.bfloat16),
        "d.f64": torch.randn(3, generator=g, dtype=torch.float64),
        "e.transposed": torch.randn(4, 6, generator=g).t(),
        "f.offset": long_vec[3:8],
        "g.shared": base.view(15)[5:],
        "h.count": torch.tensor(7, dtype=torch.int64),
        "i.scalar": torch.tensor(2.5),
        "j.param": nn.Parameter(torch.randn(2, 2, generator=g), requires_grad=False),
    }
    assert not sd["e.transposed"].is_contiguous() and sd["f.offset"].storage_offset() == 3
    d = os.path.join(out, "loader")
    os.makedirs(d, exist_ok=True)
    torch.save(sd, os.path.join(d, "dtypes.pth"))
    torch.save({"model": sd, "epoch": 3}, os.path.join(d, "wrapped.pt"))
    expected = {k: v.detach().to(torch.float32).contiguous().clone()
                for k, v in sd.items() if v.is_floating_point()}
    save_file(expected, os.path.join(d, "expected.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures"))
    args = ap.parse_args()
    out = args.out
    os.makedirs(os.path.join(out, "resize"), exist_ok=True)

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    # ---- model + weights ------------------------------------------------
    model = make_model()
    sd = model.state_dict()
    assert "pixel_mean" not in sd and "pixel_std" not in sd
    assert any(k.startswith("image_encoder.head.") for k in sd)
    assert any(k.startswith("image_encoder.norm_head.") for k in sd)

    pth_sd = {k: (v.to(torch.float16) if torch.is_floating_point(v) else v).contiguous()
              for k, v in sd.items()}
    # torch.save writes a zip whose inner folder name comes from the file name;
    # write via a fixed name so the archive is byte-stable.
    buf = io.BytesIO()
    torch.save(pth_sd, buf)
    with open(os.path.join(out, "mobile_sam.pth"), "wb") as f:
        f.write(buf.getvalue())

    dec_sd = {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()
              if k.startswith("prompt_encoder.") or k.startswith("mask_decoder.")}
    assert all(torch.is_floating_point(v) for v in dec_sd.values())
    save_file(dec_sd, os.path.join(out, "sam_decoder.safetensors"))

    make_loader_fixtures(out)

    # ---- images ---------------------------------------------------------
    rng = np.random.default_rng(SEED)
    image = make_image(rng)
    save_png(image, os.path.join(out, "image.png"))

    src = make_resize_src(rng)
    save_png(src, os.path.join(out, "resize", "src.png"))
    src = np.array(Image.open(os.path.join(out, "resize", "src.png")).convert("RGB"))
    # Pillow 13 runs the vertical pass first when the height shrinks by more than twice as
    # many pixels as the width (100x500 below); the others go horizontal first.
    for (h, w) in RESIZE_TARGETS:
        save_png(official_resize(src, h, w), os.path.join(out, "resize", f"{h}x{w}.png"))

    # ---- embedding ------------------------------------------------------
    image = np.array(Image.open(os.path.join(out, "image.png")).convert("RGB"))
    predictor, emb = set_image(model, image)
    np.save(os.path.join(out, "embedding.npy"), emb)
    print(stats("embedding", emb))

    # ---- decoder cases --------------------------------------------------
    S = 1.6  # 640x480 -> 1024x768
    cases = [
        dict(name="point_multimask", points=[[160 * S, 150 * S]], labels=[1], box=None,
             mask_input=None, multimask=True, frame1024=True),
        dict(name="points_single", points=[[160 * S, 150 * S], [470 * S, 130 * S]],
             labels=[1, 0], box=None, mask_input=None, multimask=False, frame1024=True),
        dict(name="box", points=None, labels=None, box=[600.0, 88.0, 904.0, 328.0],
             mask_input=None, multimask=False, frame1024=True),
        dict(name="box_point", points=[[470 * S, 360 * S]], labels=[1],
             box=[570.0, 456.0, 936.0, 696.0], mask_input=None, multimask=False,
             frame1024=True),
        dict(name="point_mask_input", points=[[160 * S, 150 * S]], labels=[1], box=None,
             mask_input="FROM_CASE_1", multimask=False, frame1024=True),
        dict(name="predictor_points",
             points=[[161.5, 150.25], [470.0, 360.0], [470.0, 130.0]],
             labels=[1, 1, 0], box=None, mask_input=None, multimask=True,
             frame1024=False),
        dict(name="predictor_box", points=None, labels=None,
             box=[370.0, 50.0, 570.0, 210.0], mask_input=None, multimask=False,
             frame1024=False),
        dict(name="predictor_box_points", points=[[180.0, 400.0]], labels=[0],
             box=[90.0, 280.0, 270.0, 450.0], mask_input=None, multimask=False,
             frame1024=False),
    ]

    case1_best = None
    out_cases = []
    summary = []
    for c in cases:
        name = c["name"]
        if c["frame1024"]:
            predictor.original_size = (1024, 1024)
            predictor.input_size = (1024, 1024)
        else:
            predictor.original_size = (480, 640)
            predictor.input_size = (768, 1024)
        pc = np.array(c["points"], dtype=np.float32) if c["points"] is not None else None
        pl = np.array(c["labels"], dtype=np.int64) if c["labels"] is not None else None
        bx = np.array(c["box"], dtype=np.float32) if c["box"] is not None else None
        mi = None
        mask_file = None
        if c["mask_input"] == "FROM_CASE_1":
            mi = case1_best
            mask_file = f"case_{name}_mask_input.npy"
            np.save(os.path.join(out, mask_file), mi.astype(np.float32))
        with torch.no_grad():
            masks, iou, low = predictor.predict(
                point_coords=pc, point_labels=pl, box=bx, mask_input=mi,
                multimask_output=c["multimask"], return_logits=True)
        C = 3 if c["multimask"] else 1
        assert low.shape == (C, 256, 256) and iou.shape == (C,)
        low = low.astype(np.float32)
        iou = iou.astype(np.float32)
        if name == "point_multimask":
            case1_best = low[int(np.argmax(iou))][None].copy()
        lf, ff = f"case_{name}_low_res_logits.npy", f"case_{name}_iou.npy"
        np.save(os.path.join(out, lf), low)
        np.save(os.path.join(out, ff), iou)
        logits_file = None
        if not c["frame1024"]:
            assert masks.shape == (C, 480, 640)
            logits_file = f"case_{name}_logits.npy"
            np.save(os.path.join(out, logits_file), masks.astype(np.float16))
            near0 = float((np.abs(masks) < 1e-3).mean())
        else:
            near0 = None
        pos = [float((low[i] > 0).mean()) for i in range(C)]
        summary.append(dict(name=name, low_min=float(low.min()), low_max=float(low.max()),
                            pos_frac_low=pos, iou=iou.tolist(),
                            pos_frac_full=([float((masks[i] > 0).mean()) for i in range(C)]
                                           if logits_file else None),
                            frac_full_near0=near0))
        out_cases.append(dict(
            name=name, points=c["points"], labels=c["labels"], box=c["box"],
            mask_input=mask_file, multimask=c["multimask"],
            orig_size=[1024, 1024] if c["frame1024"] else [480, 640],
            low_res_logits=lf, iou=ff, logits=logits_file))
    predictor.original_size = (480, 640)
    predictor.input_size = (768, 1024)

    meta = {
        "embedding": "embedding.npy",
        "image": "image.png",
        "cases": out_cases,
        "reference": versions(),
        "seed": SEED,
        "resize": {"src": "resize/src.png",
                   "targets": [f"resize/{h}x{w}.png" for (h, w) in RESIZE_TARGETS]},
    }
    # Pretty but compact: one line per case.
    text = json.dumps({k: v for k, v in meta.items() if k != "cases"}, indent=1)
    cases_txt = ",\n".join("  " + json.dumps(c) for c in meta["cases"])
    text = text[:-2] + ',\n "cases": [\n' + cases_txt + "\n ]\n}\n"
    assert json.loads(text) == meta
    with open(os.path.join(out, "cases.json"), "w") as f:
        f.write(text)

    for s in summary:
        print(json.dumps(s))


if __name__ == "__main__":
    main()
