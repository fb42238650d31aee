#!/usr/bin/env python3
"""ONNX exports of a SAM 2.1 checkpoint, as onnxruntime-web users run SAM 2 (the way peers,
samexporter and webgpu-sam2, export it), for bench/sam2_browser.mjs.

- sam2_<config>_encoder.onnx: input `image`, the preprocessed 1x3x1024x1024 float32 image (resized
  to 1024x1024 without keeping the aspect ratio, /255, ImageNet mean and std); outputs
  `image_embed` [1,256,64,64] (no_mem_embed added, as SAM2ImagePredictor.set_image does),
  `high_res_feats_0` [1,32,256,256] and `high_res_feats_1` [1,64,128,128] (after the mask
  decoder's conv_s0 / conv_s1, as SAM2Base.forward_image does). Hiera's position embedding for
  that input size is stored as a constant (24 MiB; see `Encoder`).
- sam2_<config>_decoder.onnx: the official prompt encoder and mask decoder for points (a padding
  point appended, as the predictor does without a box), three candidates (multimask), inputs
  `image_embed`, `high_res_feats_0`, `high_res_feats_1`, `point_coords` [1,N,2] (in the 1024x1024
  input's pixels), `point_labels` [1,N], `mask_input` [1,1,256,256], `has_mask_input` [1],
  `orig_im_size` [2] (h, w); outputs `masks` [1,3,h,w] (logits, bilinear to the image size, as
  the predictor's postprocess_masks), `iou_predictions` [1,3], `low_res_masks` [1,3,256,256].

TorchScript exporter (`dynamo=False`), opset 17, as bench/export_onnx.py. Then each file is
checked with onnxruntime (Python) against the official SAM2ImagePredictor on chelsea
(www/samples/chelsea.png) and one click at (250, 170): the largest difference relative to the
largest magnitude of each output.

Weights: the seeded checkpoint bench/sam2_native.py makes (`build_sam2` after
torch.manual_seed(0), saved as `{"model": state_dict}`), made here the same way if missing.

Usage: target/bench-venv/bin/python bench/sam2_export_onnx.py [OUT_DIR] [--config t|s|b+|l]
       [--no-decoder]   (torch, sam2 1.1.0, onnx, onnxruntime; OUT_DIR defaults to bench/out)
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

warnings.filterwarnings("ignore")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sam2.build_sam import build_sam2  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402
from sam2_native import NAMES, checkpoint  # noqa: E402  (the seeded checkpoint, one place)

IMAGE = os.path.join(ROOT, "www", "samples", "chelsea.png")
CLICK = (250.0, 170.0)  # chelsea's pixels, as bench/sam2_browser.mjs clicks


class Encoder(torch.nn.Module):
    """Image to the three features SAM2ImagePredictor.set_image keeps."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # Hiera's position embedding for the 1024x1024 input, computed once: traced, its bicubic
        # resize and tiling become an `If` whose branches disagree on the rank of a shape, which
        # onnxruntime-web 1.30 refuses ("Can't merge shape info").
        trunk = model.image_encoder.trunk
        with torch.no_grad():
            side = 1024 // trunk.patch_embed.proj.stride[0]
            self.register_buffer("pos_embed", trunk._get_pos_embed((side, side)).clone())
        trunk._get_pos_embed = lambda hw: self.pos_embed

    def forward(self, image):
        model = self.model
        backbone_out = model.forward_image(image)  # conv_s0 / conv_s1 applied there
        _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
        # Add no_mem_embed, as set_image does (directly_add_no_mem_embed in every SAM 2.1 config)
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        feats = [
            feat.permute(1, 2, 0).reshape(1, -1, *size)
            for feat, size in zip(vision_feats, feat_sizes)
        ]
        return feats[2], feats[0], feats[1]


class Decoder(torch.nn.Module):
    """One prompt of points through the official prompt encoder and mask decoder."""

    def __init__(self, model):
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder

    def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels,
                mask_input, has_mask_input, orig_im_size):
        pe = self.prompt_encoder
        # The predictor's prompt encoder on points without a box: a padding point appended.
        sparse = pe._embed_points(point_coords, point_labels, pad=True)
        # A previous mask, or no_mask_embed where none (has_mask_input 0), as the official SAM 1
        # export (SamOnnxModel._embed_masks) and samexporter do.
        dense = has_mask_input * pe.mask_downscaling(mask_input)
        dense = dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        low_res_masks, iou_predictions, _, _ = self.mask_decoder(
            image_embeddings=image_embed,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=False,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        size = orig_im_size.to(torch.int64)
        masks = F.interpolate(low_res_masks, size=(size[0], size[1]), mode="bilinear",
                              align_corners=False)
        return masks, iou_predictions, torch.clamp(low_res_masks, -32.0, 32.0)


def export(module, inputs, names, outputs, path, dynamic_axes=None):
    t = time.perf_counter()
    with open(path, "wb") as f:
        torch.onnx.export(
            module, tuple(inputs), f, export_params=True, opset_version=17,
            do_constant_folding=True, input_names=names, output_names=outputs,
            dynamic_axes=dynamic_axes, dynamo=False,
        )
    mb = os.path.getsize(path) / 2**20
    print(f"wrote {path} ({mb:.1f} MiB) in {time.perf_counter() - t:.0f} s")


def rel(a, b):
    """Largest difference relative to the reference's largest magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--config", default="t", choices=list(NAMES))
    ap.add_argument("--no-decoder", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    name = NAMES[args.config]
    ckpt = checkpoint(args.config)
    model = build_sam2(f"configs/sam2.1/sam2.1_hiera_{args.config}.yaml", ckpt, device="cpu")
    model.eval()
    predictor = SAM2ImagePredictor(model)

    # The reference: the official predictor on chelsea and one click.
    image = np.array(Image.open(IMAGE).convert("RGB"))
    h, w = image.shape[:2]
    with torch.no_grad():  # not inference_mode: its tensors cannot be traced afterwards
        predictor.set_image(image)
        ref_masks, ref_iou, ref_low = predictor.predict(
            point_coords=np.array([CLICK], np.float32), point_labels=np.array([1]),
            multimask_output=True, return_logits=True)
        x = predictor._transforms(image)[None]  # the preprocessed input set_image encoded
    ref_embed = predictor._features["image_embed"].numpy()
    ref_hr = [f.numpy() for f in predictor._features["high_res_feats"]]

    import onnxruntime as ort

    enc_path = os.path.join(args.out, f"sam2_{name}_encoder.onnx")
    export(Encoder(model), [x], ["image"],
           ["image_embed", "high_res_feats_0", "high_res_feats_1"], enc_path)
    sess = ort.InferenceSession(enc_path, providers=["CPUExecutionProvider"])
    embed, hr0, hr1 = sess.run(None, {"image": x.numpy()})
    print(f"encoder, onnxruntime {ort.__version__} against the predictor: image_embed "
          f"{rel(embed, ref_embed):.1e}, high_res_feats_0 {rel(hr0, ref_hr[0]):.1e}, "
          f"high_res_feats_1 {rel(hr1, ref_hr[1]):.1e} (of the largest magnitude)")
    if args.no_decoder:
        return

    coords = np.array([[[CLICK[0] * 1024 / w, CLICK[1] * 1024 / h]]], np.float32)
    feeds = {
        "image_embed": ref_embed, "high_res_feats_0": ref_hr[0], "high_res_feats_1": ref_hr[1],
        "point_coords": coords, "point_labels": np.array([[1]], np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array([h, w], np.float32),
    }
    dec_path = os.path.join(args.out, f"sam2_{name}_decoder.onnx")
    export(Decoder(model), [torch.from_numpy(v) for v in feeds.values()], list(feeds),
           ["masks", "iou_predictions", "low_res_masks"], dec_path,
           dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
    sess = ort.InferenceSession(dec_path, providers=["CPUExecutionProvider"])
    masks, iou, low = sess.run(None, feeds)
    agree = float(((masks > 0) == (ref_masks > 0)).mean())
    print(f"decoder against the predictor: low_res_masks {rel(low, ref_low):.1e}, "
          f"iou_predictions {rel(iou, ref_iou):.1e}, masks {rel(masks, ref_masks):.1e} "
          f"(thresholded: {agree:.6f} of pixels agree); iou {np.round(iou[0], 4).tolist()}")


if __name__ == "__main__":
    main()
