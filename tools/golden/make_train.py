"""Goldens of SAM's training loss (tests/train.rs), from the paper's definitions in PyTorch.

The mask loss is focal loss (torchvision.ops.sigmoid_focal_loss, alpha 0.25, gamma 2, the mean
over a candidate's pixels) and dice loss (1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), p the
sigmoid) combined 20:1; the IoU head's loss is the squared error against the real IoU of the
candidate's mask (logit > 0), weight 1; only the candidate with the lowest mask loss is
back-propagated. Writes tests/fixtures/train/loss.safetensors: for each case its inputs, the
per-candidate terms, the total, the chosen candidate and the gradients of the total with
respect to the logits and the IoU predictions.

    target/bench-venv/bin/python tools/golden/make_train.py [--out DIR]
"""

import argparse
import os

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/train")
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


if __name__ == "__main__":
    main()
