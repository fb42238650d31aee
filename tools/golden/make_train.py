"""Goldens of SAM's training loss (tests/train.rs), from the paper's definitions in PyTorch.

The mask loss is focal loss (torchvision.ops.sigmoid_focal_loss, alpha 0.25, gamma 2, the mean
over a candidate's pixels) and dice loss (1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), p the
sigmoid) combined 20:1; the IoU head's loss is the squared error against the real IoU of the
candidate's mask (logit > 0), weight 1; only the candidate with the lowest mask loss is
back-propagated. Writes tests/fixtures/train/loss.safetensors: for each case its inputs, the
per-candidate terms, the total, the chosen candidate and the gradients of the total with
respect to the logits and the IoU predictions.

Then one optimisation step of the trained MobileSAM's prompt encoder and mask decoder
(models/mobile_sam.pt) through the official modules, from the reference's embedding of chelsea
(tests/fixtures/real): a batch of two samples (a click with three candidates; a box, a click and
the earlier mask as input with one), the mean of their losses, every parameter's gradient, and
the parameters after one torch.optim.AdamW step. Writes tests/fixtures/train/step.safetensors:
the loss, each sample's chosen candidate, and per parameter its gradient and its value after the
step, whole for tensors of up to 4096 values, else at 1024 seeded indices (`index.<key>`, into
the flattened tensor) with the whole gradient's largest magnitude (`grad_max.<key>`).

    target/bench-venv/bin/python tools/golden/make_train.py [--out DIR] [--weights models/mobile_sam.pt]
"""

import argparse
import os
import sys

import torch
from safetensors.torch import save_file
from torchvision.ops import sigmoid_focal_loss


def dice_loss(logits, target):
    p = logits.sigmoid().flatten(1)
    t = target.expand_as(logits).flatten(1)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def sam_loss(logits, iou_pred, target):
    t = target.expand_as(logits)
    focal = sigmoid_focal_loss(logits, t, alpha=0.25, gamma=2, reduction="none").flatten(1).mean(-1)
    dice = dice_loss(logits, target)
    with torch.no_grad():
        pred = logits > 0
        truth = t > 0.5
        inter = (pred & truth).flatten(1).sum(-1).float()
        union = (pred | truth).flatten(1).sum(-1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    iou_sq = (iou_pred - iou) ** 2
    mask = 20 * focal + dice
    best = int(torch.argmin(mask))
    total = mask[best] + iou_sq[best]
    return total, best, focal, dice, iou, iou_sq


def ellipse(h, w, cy, cx, ry, rx):
    y = torch.arange(h, dtype=torch.float32)[:, None]
    x = torch.arange(w, dtype=torch.float32)[None, :]
    return ((((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) <= 1).float()


# AdamW as tests/train.rs steps it: the paper's betas and weight decay.
ADAMW = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
# Parameters with more values than this are stored at SAMPLED seeded indices.
WHOLE = 4096
SAMPLED = 1024


def step_golden(out, weights):
    import numpy as np
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_fixtures import build_mobile_sam
    from segment_anything.utils.transforms import ResizeLongestSide

    torch.manual_seed(0)
    model = build_mobile_sam()
    model.load_state_dict(torch.load(weights, map_location="cpu"), strict=True)
    model.train()
    model.eval()
    fixtures = os.path.join(os.path.dirname(out), "real")
    features = torch.from_numpy(np.load(os.path.join(fixtures, "chelsea_embedding.npy")).astype(np.float32))
    orig = (300, 451)
    transform = ResizeLongestSide(1024)
    # The target: the reference's mask for the box case (logit > 0), in the low-res frame.
    box_logits = np.load(os.path.join(fixtures, "chelsea_box_low_res_logits.npy")).astype(np.float32)
    target = torch.from_numpy((box_logits.reshape(256, 256) > 0).astype(np.float32))
    # [1, 1, 256, 256], as SamPredictor.predict gives it to the prompt encoder.
    mask_input = torch.from_numpy(np.load(os.path.join(fixtures, "chelsea_mask_input.npy")).astype(np.float32))
    mask_input = mask_input.reshape(1, 1, 256, 256)
    samples = [
        dict(points=[[250, 170]], labels=[1], box=None, mask_input=None, multimask=True),
        dict(points=[[180, 120]], labels=[0], box=[130, 80, 215, 150], mask_input=mask_input, multimask=False),
    ]
    params = {f"{m}.{k}": p for m, mod in [("prompt_encoder", model.prompt_encoder), ("mask_decoder", model.mask_decoder)]
              for k, p in mod.named_parameters()}
    opt = torch.optim.AdamW(params.values(), **ADAMW)
    opt.zero_grad()
    totals, bests = [], []
    for s in samples:
        points = None
        if s["points"] is not None:
            coords = transform.apply_coords(np.array(s["points"], dtype=np.float32), orig)
            points = (torch.as_tensor(coords, dtype=torch.float32)[None], torch.as_tensor(s["labels"], dtype=torch.int)[None])
        box = None
        if s["box"] is not None:
            box = torch.as_tensor(transform.apply_boxes(np.array(s["box"], dtype=np.float32), orig), dtype=torch.float32)
        sparse, dense = model.prompt_encoder(points=points, boxes=box, masks=s["mask_input"])
        low_res, iou = model.mask_decoder(
            image_embeddings=features, image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=s["multimask"])
        total, best, focal, dice, iou_real, _ = sam_loss(low_res[0], iou[0], target)
        print(f"sample: best {best}, focal {focal.tolist()}, dice {dice.tolist()}, iou {iou_real.tolist()}, predicted {iou[0].tolist()}")
        totals.append(total)
        bests.append(best)
    loss = torch.stack(totals).mean()
    loss.backward()
    grads = {k: p.grad.detach().clone() if p.grad is not None else None for k, p in params.items()}
    opt.step()
    g = torch.Generator().manual_seed(1)
    tensors = {"loss": loss.detach().reshape(1), "best": torch.tensor(bests, dtype=torch.int64)}
    without = []
    for k, p in params.items():
        if grads[k] is None:
            without.append(k)
            continue
        grad, after = grads[k].flatten(), p.detach().flatten()
        if grad.numel() > WHOLE:
            index = torch.randint(0, grad.numel(), (SAMPLED,), generator=g)
            tensors[f"index.{k}"] = index
            tensors[f"grad_max.{k}"] = grad.abs().max().reshape(1)
            grad, after = grad[index], after[index]
        tensors[f"grad.{k}"] = grad
        tensors[f"after.{k}"] = after
    print(f"loss {loss.item():.6f}; {len(params) - len(without)} of {len(params)} parameters with a gradient; none: {without}")
    path = os.path.join(out, "step.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    os.chmod(path, 0o644)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/train")
    ap.add_argument("--weights", default="models/mobile_sam.pt")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    g = torch.Generator().manual_seed(17)
    tensors = {}
    # (name, candidates, h, w): logits around the target's edge so that every term matters.
    for name, m, h, w in [("three", 3, 40, 56), ("one", 1, 32, 32), ("empty", 2, 24, 20)]:
        target = ellipse(h, w, h * 0.45, w * 0.55, h * 0.3, w * 0.25)
        if name == "empty":
            target = torch.zeros(h, w)
        # A different noise per candidate, so that the lowest loss is not always the first's.
        scale = torch.tensor([4.0, 1.0, 3.0][:m]).view(m, 1, 1)
        noise = torch.randn(m, h, w, generator=g) * scale
        bias = torch.linspace(-1, 1, m).view(m, 1, 1)
        logits = ((target * 2 - 1) * 4 + noise + bias).requires_grad_(True)
        iou_pred = torch.rand(m, generator=g).requires_grad_(True)
        total, best, focal, dice, iou, iou_sq = sam_loss(logits, iou_pred, target)
        total.backward()
        tensors |= {
            f"{name}.logits": logits.detach(),
            f"{name}.iou_pred": iou_pred.detach(),
            f"{name}.target": target,
            f"{name}.focal": focal.detach(),
            f"{name}.dice": dice.detach(),
            f"{name}.iou": iou,
            f"{name}.iou_error": iou_sq.detach(),
            f"{name}.total": total.detach().reshape(1),
            f"{name}.best": torch.tensor([best], dtype=torch.int64),
            f"{name}.grad_logits": logits.grad,
            f"{name}.grad_iou_pred": iou_pred.grad,
        }
        print(f"{name}: total {total.item():.6f}, best {best}, focal {focal.tolist()}, dice {dice.tolist()}, iou {iou.tolist()}")
    path = os.path.join(args.out, "loss.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    os.chmod(path, 0o644)
    torch.use_deterministic_algorithms(True)
    step_golden(args.out, args.weights)


if __name__ == "__main__":
    main()
