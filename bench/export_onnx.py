#!/usr/bin/env python3
"""ONNX exports of the fixture MobileSAM, as onnxruntime-web users run SAM.

- decoder.onnx: segment_anything's own `SamOnnxModel` (the official export, as
  scripts/export_onnx_model.py makes it: return_single_mask=False, opset 17, dynamic point count).
- encoder.onnx: the TinyViT image encoder on the preprocessed 1x3x1024x1024 input.

Weights: tests/fixtures/mobile_sam.pth, so every system in the benchmark runs the same model.

With `--vit WEIGHTS.safetensors` (an official ViT-B/L/H checkpoint under the official keys, as
bench/vit_encoder.py writes the seeded ones): only that model's image encoder, as
vit_<b|l|h>_encoder.onnx, for bench/vit_browser.mjs.

Usage: python bench/export_onnx.py OUT_DIR [--vit WEIGHTS]   (torch, segment-anything,
mobilesam-mirror, onnx)
"""

import os
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tools", "golden"))

from make_fixtures import build_mobile_sam  # noqa: E402  (the fixture model's constructor)
from segment_anything.utils.onnx import SamOnnxModel  # noqa: E402


class Encoder(torch.nn.Module):
    def __init__(self, sam):
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, x):
        return self.image_encoder(x)


def export_encoder(sam, path):
    with open(path, "wb") as f:
        torch.onnx.export(
            Encoder(sam), (torch.randn(1, 3, 1024, 1024),), f, export_params=True, opset_version=17,
            do_constant_folding=True, input_names=["image"], output_names=["image_embeddings"],
            dynamo=False,
        )


def export_vit(weights, out):
    from safetensors.torch import load_file
    from segment_anything import sam_model_registry

    state = load_file(weights)
    width = state["image_encoder.patch_embed.proj.weight"].shape[0]
    variant = {768: "b", 1024: "l", 1280: "h"}[width]
    sam = sam_model_registry[f"vit_{variant}"]()
    sam.load_state_dict(state)
    sam.eval()
    path = os.path.join(out, f"vit_{variant}_encoder.onnx")
    export_encoder(sam, path)
    print(f"wrote {path}")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "bench", "out")
    os.makedirs(out, exist_ok=True)
    if "--vit" in sys.argv:
        export_vit(sys.argv[sys.argv.index("--vit") + 1], out)
        return
    sam = build_mobile_sam()
    state = torch.load(os.path.join(ROOT, "tests", "fixtures", "mobile_sam.pth"), map_location="cpu")
    sam.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    sam.eval()

    decoder = SamOnnxModel(sam, return_single_mask=False)
    embed_dim = sam.prompt_encoder.embed_dim
    side = sam.prompt_encoder.image_embedding_size
    inputs = {
        "image_embeddings": torch.randn(1, embed_dim, *side, dtype=torch.float),
        "point_coords": torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, 4 * side[0], 4 * side[1], dtype=torch.float),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    with open(os.path.join(out, "decoder.onnx"), "wb") as f:
        torch.onnx.export(
            decoder, tuple(inputs.values()), f, export_params=True, verbose=False, opset_version=17,
            do_constant_folding=True, input_names=list(inputs.keys()),
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            dynamo=False,
        )
    export_encoder(sam, os.path.join(out, "encoder.onnx"))
    print(f"wrote {out}/decoder.onnx and {out}/encoder.onnx")


if __name__ == "__main__":
    main()
