"""Training throughput of the reference (bench/train.mjs's baseline; not in CI).

The same work per object as a step of websam's trainer (docs/TRAINING.md): the official
prompt encoder and mask decoder of the trained MobileSAM (models/mobile_sam.pt, on the official
segment_anything modules) run an interactive sequence of 11 predictions from the object's cached
embedding: a first click drawn from the mask (three candidates; websam's noisy-box first prompts
cost the same as a click: two more prompt tokens), then 8 clicks from the previous prediction's
error region with its best low-res logits as the mask input, and two iterations with no new
point; each prediction's loss (the paper's, tools/golden/make_train.py) back-propagated at once;
one AdamW step per batch (every object). Timed per step.

    python bench/train_torch.py DIR STEPS THREADS
DIR holds coco.json, written by bench/train.mjs: one object per image, its mask as COCO's
uncompressed RLE; each image's embedding is tests/fixtures/real/<image stem>_embedding.npy.
Prints one JSON line: {"threads", "objects", "steps", "seconds": [per step]}.
"""

import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tools", "golden"))
from make_fixtures import build_mobile_sam  # noqa: E402
from make_train import ADAMW, sam_loss  # noqa: E402


def rle_decode(segmentation):
    """COCO's uncompressed RLE (column-major runs, zeros first) to an HxW uint8 mask."""
    h, w = segmentation["size"]
    counts = segmentation["counts"]
    flat = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8)
    return flat.reshape((w, h)).T


def low_res_target(mask):
    """The truth in the 256x256 low-res frame: resized as the image (longest side 1024), padded,
    a quarter of it."""
    h, w = mask.shape
    scale = 1024 / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    m = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], (nh, nw), mode="bilinear")
    m = F.pad(m, (0, 1024 - nw, 0, 1024 - nh))
    return (F.interpolate(m, (256, 256), mode="bilinear")[0, 0] > 0.5).float()


def sequence(model, features, target, rng):
    """One object's 11 predictions, each back-propagated at once (the gradients summed)."""
    ys, xs = torch.nonzero(target, as_tuple=True)
    points, labels = [], []
    i = rng.integers(len(ys))
    points.append([float(xs[i]) * 4 + 2, float(ys[i]) * 4 + 2])
    labels.append(1)
    silent = {int(rng.integers(1, 10)), 10}
    mask_input = None
    for k in range(11):
        coords = torch.tensor(points, dtype=torch.float32)[None]
        sparse, dense = model.prompt_encoder(points=(coords, torch.tensor(labels)[None]), boxes=None,
                                             masks=mask_input)
        low_res, iou = model.mask_decoder(
            image_embeddings=features, image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=k == 0)
        loss, best, *_ = sam_loss(low_res[0], iou[0], target)
        loss.backward()
        mask_input = low_res[:, best:best + 1].detach()
        if k + 1 < 11 and (k + 1) not in silent:
            pred = mask_input[0, 0] > 0
            missed, wrong = (target > 0) & ~pred, pred & (target == 0)
            region, label = (missed, 1) if missed.sum() >= wrong.sum() else (wrong, 0)
            ys, xs = torch.nonzero(region if region.any() else target > 0, as_tuple=True)
            i = rng.integers(len(ys))
            points.append([float(xs[i]) * 4 + 2, float(ys[i]) * 4 + 2])
            labels.append(label)


def main():
    out, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    model = build_mobile_sam()
    model.load_state_dict(torch.load(os.path.join(ROOT, "models", "mobile_sam.pt"), map_location="cpu"), strict=True)
    params = list(model.prompt_encoder.parameters()) + list(model.mask_decoder.parameters())
    opt = torch.optim.AdamW(params, **ADAMW)
    objects = []
    coco = json.load(open(os.path.join(out, "coco.json")))
    stems = {im["id"]: os.path.splitext(im["file_name"])[0] for im in coco["images"]}
    for ann in coco["annotations"]:
        path = os.path.join(ROOT, "tests", "fixtures", "real", f"{stems[ann['image_id']]}_embedding.npy")
        emb = np.load(path).astype(np.float32)
        objects.append((torch.from_numpy(emb), low_res_target(rle_decode(ann["segmentation"]))))
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad()
        for features, target in objects:
            sequence(model, features, target, rng)
        opt.step()
        seconds.append(time.perf_counter() - t)
    print(json.dumps({"threads": threads, "objects": len(objects), "steps": steps, "seconds": seconds}))


if __name__ == "__main__":
    main()
