#!/usr/bin/env python3
"""Parity fixtures for SAM's ViT image encoder on deterministic, hash-generated weights.

The model is the official `segment_anything` Sam exactly as `build_sam._build_sam` builds
ViT-B (embed 768, 12 heads, patch 16, image 1024, mlp_ratio 4, qkv_bias, use_rel_pos,
rel_pos_zero_init, window 14, out_chans 256, LayerNorm eps 1e-6, the same prompt encoder and
mask decoder) but only 2 blocks deep: block 0 windowed (rel_pos [27, 64]), block 1 global
(global_attn_indexes (1,), rel_pos [127, 64]).

No weight file is written: every float tensor of the state dict is a pure function of its key,
its element index and two f32 numbers (offset, scale) listed in `manifest.json`, computed by a
counter-based hash (splitmix64 finaliser on an FNV-1a seed of the key) that the Rust tests
(`tests/common/vit.rs`) reproduce bit-exactly; the manifest carries each tensor's sha256 so
both sides can check it. See GENERATOR below.

Writes into tests/fixtures/vit/:
  manifest.json        model arguments, the generator, {key, shape, offset, scale, sha256} per
                       tensor in state_dict order, reference package versions
  embedding.npy        f32 [1,256,64,64]: SamPredictor.set_image(tests/fixtures/image.png),
                       predictor.features
  case_<name>_*.npy    predictor cases on that embedding (the `predictor_*` cases of
                       make_fixtures.py: same prompts in the 640x480 frame)
  cases.json           the cases, same per-case schema as tests/fixtures/cases.json
  keys_vit_{b,l,h}.json
                       {key: shape} of the full official build_sam_vit_{b,l,h}() state dicts
                       (built on the meta device: nothing is allocated)
  hf_keys.json         Hugging Face transformers' names for this model (`SamModel`):
                       official_to_hf (each official key -> its HF key, as transformers'
                       convert_sam_to_hf.replace_keys renames it), copies (HF keys that
                       replace_keys adds as a copy of an official tensor -> that official key)
                       and not_saved (the keys SamModel.save_pretrained leaves out of
                       model.safetensors, the form of the hub's facebook/sam-vit-* files: the
                       tied prompt-encoder copy of the positional encoding). Checked: SamModel
                       takes the renamed state dict with load_state_dict(strict=True) and gives
                       the official model's image embedding and predictor outputs.
  keys_hf_vit_{b,l,h}.json
                       {key: shape} of SamModel's state dict for the SamConfig that
                       convert_sam_to_hf.get_config builds for sam_vit_{b,l,h} (meta device)

Usage (from anywhere; about a minute on 2 cores):
    target/golden-venv/bin/python tools/golden/make_vit.py [--out DIR] [--hf-convert FILE]

The HF names need `transformers` (4.57.6 here) in the venv. Its wheel does not ship the
conversion script (convert_sam_to_hf.py lives in transformers' source tree), so the names
are made by the rules of `HF_RULES` below (this script's own formulation, no copy) and, when
transformers' `convert_sam_to_hf.py` is importable (from the package, or the file given with
--hf-convert, e.g. from a checkout of huggingface/transformers), checked to equal its
`replace_keys` and `get_config`. Either way `SamModel(...).load_state_dict(strict=True)` and
the output comparison below check the names against transformers' model itself.

Running it twice yields byte-identical files (checked with sha256sum).
"""

import argparse
import hashlib
import json
import math
import os
import re
import sys
import warnings
from functools import partial
from importlib import metadata

warnings.filterwarnings("ignore")

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import make_fixtures  # same folder: its _fan_in, stats and versions

from segment_anything import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.modeling.image_encoder import Attention as ViTAttention

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------
# Everything `_build_sam` passes for ViT-B, except depth and global_attn_indexes.
MODEL_ARGS = {
    "encoder_embed_dim": 768,
    "encoder_depth": 2,
    "encoder_num_heads": 12,
    "encoder_global_attn_indexes": [1],
    "img_size": 1024,
    "patch_size": 16,
    "mlp_ratio": 4,
    "qkv_bias": True,
    "use_rel_pos": True,
    "rel_pos_zero_init": True,
    "window_size": 14,
    "out_chans": 256,
    "norm_layer": "LayerNorm(eps=1e-6)",
    "prompt_embed_dim": 256,
    "mask_in_chans": 16,
    "num_multimask_outputs": 3,
    "transformer_depth": 2,
    "transformer_mlp_dim": 2048,
    "transformer_num_heads": 8,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 256,
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
}


def build_vit_sam() -> Sam:
    """`segment_anything.build_sam._build_sam` for ViT-B with depth 2, global block (1,)."""
    a = MODEL_ARGS
    image_embedding_size = a["img_size"] // a["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=a["encoder_depth"],
            embed_dim=a["encoder_embed_dim"],
            img_size=a["img_size"],
            mlp_ratio=a["mlp_ratio"],
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=a["encoder_num_heads"],
            patch_size=a["patch_size"],
            qkv_bias=a["qkv_bias"],
            use_rel_pos=a["use_rel_pos"],
            rel_pos_zero_init=a["rel_pos_zero_init"],
            global_attn_indexes=tuple(a["encoder_global_attn_indexes"]),
            window_size=a["window_size"],
            out_chans=a["out_chans"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a["prompt_embed_dim"],
            image_embedding_size=(image_embedding_size, image_embedding_size),
            input_image_size=(a["img_size"], a["img_size"]),
            mask_in_chans=a["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=a["num_multimask_outputs"],
            transformer=TwoWayTransformer(
                depth=a["transformer_depth"],
                embedding_dim=a["prompt_embed_dim"],
                mlp_dim=a["transformer_mlp_dim"],
                num_heads=a["transformer_num_heads"],
            ),
            transformer_dim=a["prompt_embed_dim"],
            iou_head_depth=a["iou_head_depth"],
            iou_head_hidden_dim=a["iou_head_hidden_dim"],
        ),
        pixel_mean=a["pixel_mean"],
        pixel_std=a["pixel_std"],
    )
    sam.eval()
    return sam


# --------------------------------------------------------------------------
# Weight generator (mirrored bit-exactly by tests/common/vit.rs)
# --------------------------------------------------------------------------
GENERATOR = (
    "Element i (0-based, row-major) of tensor K with manifest offset/scale (f32): "
    "s = fnv1a64(UTF-8 bytes of K) (basis 0xcbf29ce484222325, prime 0x100000001b3); "
    "x = s + (i + 1) * 0x9E3779B97F4A7C15; z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9; "
    "z = (z ^ (z >> 27)) * 0x94D049BB133111EB; z = z ^ (z >> 31) (all u64, wrapping); "
    "u = f32(z >> 40) * 2^-23 - 1.0 (exact, in [-1, 1)); w = f32(u * scale); "
    "w = f32(w + offset); w = bf16 round-to-nearest-even of w, as f32. "
    "sha256 is over the values as little-endian f32 bytes."
)

FNV_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
M64 = (1 << 64) - 1


def fnv1a64(key: str) -> int:
    h = FNV_BASIS
    for b in key.encode("utf-8"):
        h = ((h ^ b) * FNV_PRIME) & M64
    return h


def generate(key: str, n: int, offset: float, scale: float) -> np.ndarray:
    """The n values of tensor `key`, f32 (each exact in bf16)."""
    s = np.uint64(fnv1a64(key))
    i1 = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = s + i1 * np.uint64(GOLDEN)
        z = (x ^ (x >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -23) - np.float32(1.0)
    assert u.dtype == np.float32
    w = u * np.float32(scale)
    w = w + np.float32(offset)
    assert w.dtype == np.float32
    r = torch.from_numpy(w).to(torch.bfloat16).to(torch.float32).numpy()
    assert np.all(np.isfinite(r))
    return r


def _self_check() -> None:
    # Known values, so a port can test its pieces on their own.
    assert fnv1a64("") == FNV_BASIS
    assert fnv1a64("a") == 0xAF63DC4C8601EC8C
    # bf16 RNE corner cases through torch: ties go to even, both directions.
    t = np.array([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, -(1.0 + 2.0 ** -8)], dtype=np.float32)
    r = torch.from_numpy(t).to(torch.bfloat16).float().numpy()
    assert r.tolist() == [1.0, 1.0 + 2.0 ** -6, -1.0], r


# Scale rules (scale and offset are f32; values are offset + scale * U[-1, 1)):
WEIGHT_GAIN = math.sqrt(3.0)   # Linear/Conv weight scale sqrt(3 / fan_in): unit variance
HYPER_OUT_GAIN = 3.0           # last layer of each output_hypernetworks_mlps.*: logits ~ +-10
BIAS_GAIN = 0.1                # bias scale 0.1 / sqrt(fan_in)
NORM_WEIGHT = (1.0, 0.2)       # LayerNorm / LayerNorm2d weight: offset 1, scale 0.2
NORM_BIAS = (0.0, 0.2)         # ... bias: offset 0, scale 0.2
POS_EMBED_SCALE = 0.5          # image_encoder.pos_embed
REL_POS_SCALE = 0.5            # rel_pos_h / rel_pos_w
EMBED_SCALE = math.sqrt(3.0)   # nn.Embedding weights and positional_encoding_gaussian_matrix


def f32(v: float) -> float:
    """The f32 nearest v, as the Python float equal to it (so JSON round-trips it exactly)."""
    return float(np.float32(v))


def offset_scale(model: nn.Module, special=None, keep=lambda key: True) -> dict:
    """{key: (offset, scale)} for every tensor of the state dict (those `keep` accepts), by the
    rules above; `special(mod, pname, key)` gives a module-specific tensor's (offset, scale), or
    None. Without `special`: SAM's (pos_embed, relative positions)."""
    special = special or _sam_special
    rules = {}
    for mname, mod in model.named_modules():
        prefix = mname + "." if mname else ""
        local = list(mod.named_parameters(recurse=False)) + list(
            mod.named_buffers(recurse=False))
        for pname, t in local:
            full = prefix + pname
            if isinstance(mod, Sam) and pname in ("pixel_mean", "pixel_std"):
                continue  # non-persistent constants
            if not keep(full):
                continue
            assert torch.is_floating_point(t), full
            r = special(mod, pname, full)
            if r is not None:
                pass
            elif isinstance(mod, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                b = 1.0 / math.sqrt(make_fixtures._fan_in(mod))
                g = WEIGHT_GAIN
                if ".output_hypernetworks_mlps." in "." + mname and mname.endswith(".layers.2"):
                    g *= HYPER_OUT_GAIN
                if pname == "weight":
                    r = (0.0, g * b)
                elif pname == "bias":
                    r = (0.0, BIAS_GAIN * b)
                else:
                    raise KeyError(full)
            elif isinstance(mod, nn.LayerNorm) or type(mod).__name__ == "LayerNorm2d":
                r = {"weight": NORM_WEIGHT, "bias": NORM_BIAS}[pname]
            elif isinstance(mod, nn.Embedding):
                r = (0.0, EMBED_SCALE)
            elif type(mod).__name__ == "PositionEmbeddingRandom":
                assert pname == "positional_encoding_gaussian_matrix", full
                r = (0.0, EMBED_SCALE)
            else:
                raise KeyError(f"unhandled tensor {full} in {type(mod).__name__}")
            rules[full] = (f32(r[0]), f32(r[1]))
    return rules


def _sam_special(mod, pname, full):
    if isinstance(mod, ImageEncoderViT):
        assert pname == "pos_embed", full
        return (0.0, POS_EMBED_SCALE)
    if isinstance(mod, ViTAttention):
        assert pname in ("rel_pos_h", "rel_pos_w"), full
        return (0.0, REL_POS_SCALE)
    return None


def make_model():
    torch.manual_seed(0)  # only the constructor's own init, all of it overwritten below
    model = build_vit_sam()
    sd = model.state_dict()
    rules = offset_scale(model)
    assert list(rules) == list(sd), "rules must cover the state dict, in its order"
    generated = {}
    tensors = []
    for key, ref in sd.items():
        offset, scale = rules[key]
        v = generate(key, ref.numel(), offset, scale)
        generated[key] = torch.from_numpy(v.reshape(tuple(ref.shape)).copy())
        tensors.append({
            "key": key,
            "shape": list(ref.shape),
            "offset": offset,
            "scale": scale,
            "sha256": hashlib.sha256(v.astype("<f4").tobytes()).hexdigest(),
        })
    model.load_state_dict(generated, strict=True)
    model.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, generated[k]), k
    return model, tensors


# --------------------------------------------------------------------------
# Hugging Face transformers' SamModel names
# --------------------------------------------------------------------------
# official key -> HF key: the first rule whose pattern matches the start of the key (at a dot)
# rewrites that start; the rest of the key is kept. Written from transformers' modeling_sam.py
# module names; checked against convert_sam_to_hf.replace_keys when that is importable, and
# against SamModel's own state dict (strict load) always.
HF_RULES = [
    (r"image_encoder\.patch_embed\.proj", "vision_encoder.patch_embed.projection"),
    (r"image_encoder\.pos_embed", "vision_encoder.pos_embed"),
    (r"image_encoder\.blocks\.(\d+)\.norm(\d)", r"vision_encoder.layers.\1.layer_norm\2"),
    (r"image_encoder\.blocks\.(\d+)\.(attn|mlp)", r"vision_encoder.layers.\1.\2"),
    (r"image_encoder\.neck\.0", "vision_encoder.neck.conv1"),
    (r"image_encoder\.neck\.1", "vision_encoder.neck.layer_norm1"),
    (r"image_encoder\.neck\.2", "vision_encoder.neck.conv2"),
    (r"image_encoder\.neck\.3", "vision_encoder.neck.layer_norm2"),
    (r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
     "prompt_encoder.shared_embedding.positional_embedding"),
    (r"prompt_encoder\.point_embeddings\.(\d+)", r"prompt_encoder.point_embed.\1"),
    (r"prompt_encoder\.mask_downscaling\.0", "prompt_encoder.mask_embed.conv1"),
    (r"prompt_encoder\.mask_downscaling\.1", "prompt_encoder.mask_embed.layer_norm1"),
    (r"prompt_encoder\.mask_downscaling\.3", "prompt_encoder.mask_embed.conv2"),
    (r"prompt_encoder\.mask_downscaling\.4", "prompt_encoder.mask_embed.layer_norm2"),
    (r"prompt_encoder\.mask_downscaling\.6", "prompt_encoder.mask_embed.conv3"),
    (r"prompt_encoder\.(no_mask_embed|not_a_point_embed)", r"prompt_encoder.\1"),
    (r"mask_decoder\.output_upscaling\.0", "mask_decoder.upscale_conv1"),
    (r"mask_decoder\.output_upscaling\.1", "mask_decoder.upscale_layer_norm"),
    (r"mask_decoder\.output_upscaling\.3", "mask_decoder.upscale_conv2"),
    # SAM's three-layer MLP heads become SamFeedForward: proj_in, layers.0, proj_out.
    (r"mask_decoder\.(iou_prediction_head|output_hypernetworks_mlps\.\d+)\.layers\.0",
     r"mask_decoder.\1.proj_in"),
    (r"mask_decoder\.(iou_prediction_head|output_hypernetworks_mlps\.\d+)\.layers\.1",
     r"mask_decoder.\1.layers.0"),
    (r"mask_decoder\.(iou_prediction_head|output_hypernetworks_mlps\.\d+)\.layers\.2",
     r"mask_decoder.\1.proj_out"),
    (r"mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)",
     r"mask_decoder.transformer.layers.\1.layer_norm\2"),
    (r"mask_decoder\.transformer\.layers\.(\d+)\."
     r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token|mlp)",
     r"mask_decoder.transformer.layers.\1.\2"),
    (r"mask_decoder\.transformer\.norm_final_attn", "mask_decoder.transformer.layer_norm_final_attn"),
    (r"mask_decoder\.transformer\.final_attn_token_to_image",
     "mask_decoder.transformer.final_attn_token_to_image"),
    (r"mask_decoder\.(iou_token|mask_tokens)", r"mask_decoder.\1"),
]
# SamModel holds the positional-encoding matrix twice: the prompt encoder's (tied) and the
# image-wide one; replace_keys fills the second from the first.
HF_COPIES = {
    "shared_image_embedding.positional_embedding":
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
}


def hf_key(key: str) -> str:
    """The HF name of an official key (an error when no rule covers it)."""
    for pat, rep in HF_RULES:
        m = re.match(pat + r"(?=\.|$)", key)
        if m:
            return m.expand(rep) + key[m.end():]
    raise KeyError(f"no HF rule for {key}")


def load_hf_convert(path):
    """transformers' convert_sam_to_hf module: from the package, else from `path`; None when
    neither. Its download-only imports (httpx or requests) are stubbed when absent."""
    import importlib
    import importlib.util
    import types
    for dl in ("httpx", "requests"):
        try:
            importlib.import_module(dl)
        except ImportError:
            sys.modules[dl] = types.ModuleType(dl)
    try:
        return importlib.import_module("transformers.models.sam.convert_sam_to_hf")
    except ImportError:
        pass
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("convert_sam_to_hf", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def hf_vision_config(name: str):
    """The SamVisionConfig of convert_sam_to_hf.get_config(sam_vit_<name>)."""
    from transformers import SamVisionConfig
    return {
        "b": lambda: SamVisionConfig(),
        "l": lambda: SamVisionConfig(hidden_size=1024, num_hidden_layers=24,
                                     num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23]),
        "h": lambda: SamVisionConfig(hidden_size=1280, num_hidden_layers=32,
                                     num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]),
    }[name]()


def hf_keys_of_config(name: str, convert) -> str:
    from transformers import SamConfig, SamModel
    config = SamConfig(vision_config=hf_vision_config(name))
    if convert is not None:
        theirs = convert.get_config(f"sam_vit_{name}")
        assert theirs.to_dict() == config.to_dict(), name
    return official_keys(lambda: SamModel(config))


def hf_model_config():
    """SamConfig of the fixture model: ViT-B's vision config, two layers, layer 1 global."""
    from transformers import SamConfig, SamVisionConfig
    a = MODEL_ARGS
    vision = SamVisionConfig(
        hidden_size=a["encoder_embed_dim"], num_hidden_layers=a["encoder_depth"],
        num_attention_heads=a["encoder_num_heads"],
        global_attn_indexes=a["encoder_global_attn_indexes"], image_size=a["img_size"],
        patch_size=a["patch_size"], mlp_dim=a["encoder_embed_dim"] * a["mlp_ratio"],
        qkv_bias=a["qkv_bias"], use_rel_pos=a["use_rel_pos"], use_abs_pos=True,
        window_size=a["window_size"], output_channels=a["out_chans"], layer_norm_eps=1e-6)
    return SamConfig(vision_config=vision)


def hf_names(model, convert, image, emb, case_results) -> str:
    """hf_keys.json for the fixture model, after checking that transformers' SamModel takes
    the renamed weights and computes what the official model computes."""
    import tempfile
    from safetensors import safe_open
    from segment_anything.utils.transforms import ResizeLongestSide
    from transformers import SamModel

    sd = model.state_dict()
    official_to_hf = {k: hf_key(k) for k in sd}
    converted = {official_to_hf[k]: v for k, v in sd.items()}
    for copy, src in HF_COPIES.items():
        converted[copy] = sd[src]
    assert len(converted) == len(sd) + len(HF_COPIES)
    if convert is not None:
        by_id = {id(v): k for k, v in sd.items()}
        theirs = convert.replace_keys(dict(sd))
        assert list(theirs) == list(converted), "key names differ from replace_keys'"
        for hk, v in theirs.items():
            want = HF_COPIES.get(hk) or next(k for k, h in official_to_hf.items() if h == hk)
            assert by_id[id(v)] == want, hk
        print("hf_keys: equal to transformers' convert_sam_to_hf.replace_keys")
    else:
        print("hf_keys: transformers' convert_sam_to_hf.py not found; checked by SamModel only")

    hf = SamModel(hf_model_config())
    hf.load_state_dict(converted, strict=True)
    hf.eval()
    for k, v in hf.state_dict().items():
        want = HF_COPIES.get(k) or next(o for o, h in official_to_hf.items() if h == k)
        assert torch.equal(v, sd[want]), k

    # Same preprocessed input as SamPredictor.set_image.
    t = ResizeLongestSide(MODEL_ARGS["img_size"])
    x = torch.as_tensor(t.apply_image(image)).permute(2, 0, 1).contiguous()[None]
    with torch.no_grad():
        x = model.preprocess(x)
        ours = model.image_encoder(x)
        theirs = hf.get_image_embeddings(x)
    assert torch.equal(ours, torch.from_numpy(emb))
    d = (theirs - ours).abs().max().item()
    print(f"HF SamModel vision encoder vs official: image embeddings max abs diff {d:.3e}")
    assert d < 1e-4, d

    # The decoder through SamModel on the official embedding, prompts in the 1024 frame.
    for c, low, iou in case_results:
        kw = {}
        if c["points"] is not None:
            pts = t.apply_coords(np.array(c["points"], dtype=np.float32), image.shape[:2])
            kw["input_points"] = torch.from_numpy(pts)[None, None]
            kw["input_labels"] = torch.tensor(c["labels"])[None, None]
        if c["box"] is not None:
            box = t.apply_boxes(np.array(c["box"], dtype=np.float32), image.shape[:2])
            kw["input_boxes"] = torch.from_numpy(box)[None]
        with torch.no_grad():
            out = hf(image_embeddings=torch.from_numpy(emb), multimask_output=c["multimask"], **kw)
        dl = np.abs(out.pred_masks[0, 0].numpy() - low).max()
        di = np.abs(out.iou_scores[0, 0].numpy() - iou).max()
        print(f"HF SamModel decoder vs official, {c['name']}: low-res logits max abs diff "
              f"{dl:.3e}, iou {di:.3e}")
        assert dl < 1e-2 and di < 1e-3, (dl, di)

    # What save_pretrained writes (the hub files' form): the tied copy is left out.
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        with safe_open(os.path.join(tmp, "model.safetensors"), "pt") as f:
            saved = sorted(f.keys())
    assert set(saved) <= set(converted)
    print(f"save_pretrained: {len(saved)} of {len(converted)} keys; left out: "
          f"{sorted(set(converted) - set(saved))}")

    head = {
        "note": ("transformers' SamModel names for this model (tools/golden/make_vit.py): "
                 "official_to_hf as convert_sam_to_hf.replace_keys renames each official key; "
                 "copies: HF keys replace_keys adds as a copy of an official tensor; not_saved: "
                 "the keys SamModel.save_pretrained leaves out of model.safetensors (the hub "
                 "files' form: every other HF key is in it)"),
        "reference": {"transformers": metadata.version("transformers")},
        "copies": HF_COPIES,
        "not_saved": sorted(set(converted) - set(saved)),
        "official_to_hf": official_to_hf,
    }
    text = json.dumps(head, indent=1) + "\n"
    assert json.loads(text) == head
    return text


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def versions() -> dict:
    """make_fixtures.py's reference versions, less the packages this script does not use."""
    unused = ("safetensors", "mobile_sam", "timm")
    return {k: v for k, v in make_fixtures.versions().items() if k not in unused}



def write_text(path: str, text: str) -> None:
    with open(path, "w", newline="\n") as f:
        f.write(text)


def one_per_line(head: dict, list_key: str, items: list) -> str:
    """JSON with `head` indented and one line per item of the list under `list_key`."""
    text = json.dumps(head, indent=1)
    body = ",\n".join("  " + json.dumps(x) for x in items)
    text = text[:-2] + f',\n "{list_key}": [\n' + body + "\n ]\n}\n"
    full = dict(head)
    full[list_key] = items
    assert json.loads(text) == full
    return text


def official_keys(build) -> str:
    """{key: shape} of `build()`'s state dict, one key a line, built on the meta device."""
    with torch.device("meta"):
        sam = build()
    sd = sam.state_dict()
    lines = [f"{json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in sd.items()]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    assert list(json.loads(text)) == list(sd)
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "vit"))
    ap.add_argument("--image", default=os.path.join(REPO, "tests", "fixtures", "image.png"))
    ap.add_argument("--hf-convert", default=None,
                    help="transformers' convert_sam_to_hf.py, to check the HF names against")
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    _self_check()

    # ---- official key lists ---------------------------------------------
    for name, build in (("b", build_sam_vit_b), ("l", build_sam_vit_l), ("h", build_sam_vit_h)):
        write_text(os.path.join(out, f"keys_vit_{name}.json"), official_keys(build))
    convert = load_hf_convert(args.hf_convert)
    for name in ("b", "l", "h"):
        write_text(os.path.join(out, f"keys_hf_vit_{name}.json"), hf_keys_of_config(name, convert))

    # ---- model + manifest -----------------------------------------------
    model, tensors = make_model()
    n_params = sum(math.prod(t["shape"]) for t in tensors)
    enc = model.image_encoder
    assert enc.blocks[0].window_size == 14 and enc.blocks[1].window_size == 0
    assert tuple(enc.blocks[0].attn.rel_pos_h.shape) == (27, 64)
    assert tuple(enc.blocks[1].attn.rel_pos_h.shape) == (127, 64)
    manifest_head = {
        "model": MODEL_ARGS,
        "generator": GENERATOR,
        "rules": (
            "Linear/Conv weight: offset 0, scale sqrt(3/fan_in) (ConvTranspose2d fan_in = "
            "in_channels*k*k/stride^2), 3x for the last layer of each "
            "mask_decoder.output_hypernetworks_mlps.*; bias: scale 0.1/sqrt(fan_in); "
            "LayerNorm/LayerNorm2d weight offset 1 scale 0.2, bias scale 0.2; "
            "image_encoder.pos_embed scale 0.5; rel_pos_h/rel_pos_w scale 0.5; embeddings and "
            "positional_encoding_gaussian_matrix scale sqrt(3)."
        ),
        "num_tensors": len(tensors),
        "num_params": n_params,
        "reference": versions(),
    }
    write_text(os.path.join(out, "manifest.json"),
               one_per_line(manifest_head, "tensors", tensors))
    print(f"manifest: {len(tensors)} tensors, {n_params} parameters")

    # ---- embedding --------------------------------------------------------
    image = np.array(Image.open(args.image).convert("RGB"))
    assert image.shape == (480, 640, 3), image.shape
    predictor, emb = make_fixtures.set_image(model, image)
    np.save(os.path.join(out, "embedding.npy"), emb)
    print(make_fixtures.stats("embedding", emb))

    # ---- predictor cases (make_fixtures.py's predictor_* cases) ------------
    cases = [
        dict(name="predictor_points",
             points=[[161.5, 150.25], [470.0, 360.0], [470.0, 130.0]],
             labels=[1, 1, 0], box=None, multimask=True),
        dict(name="predictor_box", points=None, labels=None,
             box=[370.0, 50.0, 570.0, 210.0], multimask=False),
        dict(name="predictor_box_points", points=[[180.0, 400.0]], labels=[0],
             box=[90.0, 280.0, 270.0, 450.0], multimask=False),
    ]
    out_cases = []
    case_results = []
    for c in cases:
        name = c["name"]
        pc = np.array(c["points"], dtype=np.float32) if c["points"] is not None else None
        pl = np.array(c["labels"], dtype=np.int64) if c["labels"] is not None else None
        bx = np.array(c["box"], dtype=np.float32) if c["box"] is not None else None
        with torch.no_grad():
            masks, iou, low = predictor.predict(
                point_coords=pc, point_labels=pl, box=bx, mask_input=None,
                multimask_output=c["multimask"], return_logits=True)
        C = 3 if c["multimask"] else 1
        assert low.shape == (C, 256, 256) and iou.shape == (C,)
        assert masks.shape == (C, 480, 640)
        low = low.astype(np.float32)
        iou = iou.astype(np.float32)
        lf, ff = f"case_{name}_low_res_logits.npy", f"case_{name}_iou.npy"
        logits_file = f"case_{name}_logits.npy"
        np.save(os.path.join(out, lf), low)
        np.save(os.path.join(out, ff), iou)
        np.save(os.path.join(out, logits_file), masks.astype(np.float16))
        case_results.append((c, low, iou))
        print(json.dumps(dict(
            name=name, iou=iou.tolist(), low_min=float(low.min()), low_max=float(low.max()),
            pos_frac_low=[float((low[i] > 0).mean()) for i in range(C)],
            pos_frac_full=[float((masks[i] > 0).mean()) for i in range(C)],
            frac_full_near0=float((np.abs(masks) < 1e-3).mean()))))
        out_cases.append(dict(
            name=name, points=c["points"], labels=c["labels"], box=c["box"],
            mask_input=None, multimask=c["multimask"], orig_size=[480, 640],
            low_res_logits=lf, iou=ff, logits=logits_file))

    cases_head = {
        "embedding": "embedding.npy",
        "image": "../image.png",
        "reference": versions(),
    }
    write_text(os.path.join(out, "cases.json"), one_per_line(cases_head, "cases", out_cases))

    # ---- Hugging Face transformers' names ----------------------------------
    write_text(os.path.join(out, "hf_keys.json"),
               hf_names(model, convert, image, emb, case_results))


if __name__ == "__main__":
    main()
