#!/usr/bin/env python3
"""Automatic-mask-generator goldens for websam: the official `SamAutomaticMaskGenerator`
("segment everything") on MobileSAM, and sam2 1.1.0's `SAM2AutomaticMaskGenerator` on the SAM 2.1
fixture, as tests/fixtures/amg/<case>.json.

Model: the official segment_anything `Sam` / `PromptEncoder` / `MaskDecoder` with mobile_sam's
`TinyViT` (make_fixtures.build_mobile_sam), loaded strictly with either
- "real": the trained models/mobile_sam.pt (checked by sha256, as make_real.py does), or
- "fixture": the seeded random weights tests/fixtures/mobile_sam.pth (official key names, f16
  values that are exact in f16/bf16; widened to f32 here, which is exact).
`train()` then `eval()` after loading (TinyViT caches its attention biases on entering eval).
- "sam2_fixture": the SAM2Base of tools/golden/make_sam2.py (SAM 2.1-T's Hiera cut to stages
  [1, 2, 3, 2] at half its widths, its image path's weights generated from its manifest), run by
  `SAM2AutomaticMaskGenerator` (its defaults: pred_iou_thresh 0.8, mask_threshold 0, no m2m,
  multimask), its band recomputed with `SAM2ImagePredictor.predict` (float32 points, as the
  generator's batches).

Images (RGB uint8 HWC, read with PIL): www/samples/chelsea.png (451x300),
www/samples/coffee.png (600x400), tests/fixtures/image.png (640x480, fixture cases).

Every case runs the family's generator (`SamAutomaticMaskGenerator`, or
`SAM2AutomaticMaskGenerator` for sam2_fixture) `(model, output_mode="coco_rle", **options)` and
`generate(image)`; all options not listed in CASES are the official defaults. The random
fixture weights predict a fine texture over the whole image, so every one of their candidate
masks has a (near) full-image box: with the default box_nms_thresh 0.7 each fixture case keeps
exactly one record. The fixture cases therefore use box_nms_thresh (and crop_nms_thresh)
0.9999, which removes exact duplicate boxes (IoU 1) only; their pred_iou_thresh 0.05 and
stability_score_thresh 0.1 are low enough for the random weights (predicted IoU about
-0.55..0.53, stability 0.07..0.47) and still active (the generator skips a filter whose
threshold is 0).

One JSON per case (compact, keys in a fixed order, so reruns are byte-identical):
- case, weights ("real" | "fixture"), image (repository-relative), image_size [h, w];
- options: every `SamAutomaticMaskGenerator.__init__` option by its Python name (defaults
  included; point_grids null);
- records: exactly what `generate(image)` returned, in its order: segmentation (COCO RLE
  {"size": [h, w], "counts": str}), area, bbox (XYWH; SAM's width/height are max - min, one less
  than the pixel extent), predicted_iou, point_coords [[x, y]] (original frame),
  stability_score, crop_box (XYWH);
- band: one COCO RLE per record, the pixels where the reference's logit for that record's mask
  is within 0.01 of 0 (|logit| < 0.01), in the original frame (0 outside the record's crop). It
  is recomputed without touching the generator: `SamPredictor.set_image(image[crop])`, then
  `predict` with the record's point (minus the crop offset, label 1, multimask_output=True,
  return_logits=True); the candidate whose predicted IoU is closest to the record's is the
  record's mask (checked: difference < 1e-4; the generator runs 64 points per batch and keeps
  the points in f64 until the positional encoding, `predict` runs one point in f32, so they
  differ in the last bits). A port may flip a record's pixel only inside its band;
- nms: every `batched_nms` call the generator made, in order: stage ("crop" = duplicates
  within one crop, scored by predicted IoU; "crops" = between crops, scored 1/crop area;
  "min_region" = after the small-region removal, scored 1 unchanged / 0 changed), crop_box
  (XYXY, "crop" only), boxes in, kept (recorded by a pass-through wrapper; each kept list was
  checked against a stable greedy NMS: highest score first, ties in index order);
- threshold_margins: {"pred_iou": [a, b], "stability": [c, d]}: how far the nearest kept (a, c)
  and the nearest dropped (b, d) candidate of all crops lies from pred_iou_thresh (kept if >)
  and stability_score_thresh (kept if >=; only candidates that passed the IoU filter), from
  pass-through wrappers; a port whose scores differ by more than that may gain or lose records;
- changed_by_min_region (min_region cases): how many of the returned records the small-region
  removal (holes, then islands) reported as changed (the official `changed` flags, which give
  the record NMS score 0), and pixels_changed_by_min_region: how many of them really differ
  (islands mode flags a mask whose islands are all below the area even when it keeps its only
  island); counted by rerunning the official `_generate_masks` + `postprocess_small_regions`
  with an extra index column and checking that it reproduces the records;
- versions.

It also prints what a port must reproduce: whether torchvision's `nms` / `batched_nms` on CPU
keep tied scores in index order (also for > 1000 boxes, where `batched_nms` switches to
`_batched_nms_vanilla`), records per case and per crop, whether any NMS call of the cases takes
the vanilla path, the band check (the largest predicted-IoU difference, and pixels where the
recomputed mask disagrees with a record outside its band), and the wall time of each
`generate` (real_default twice) with its process CPU time and the load average before it
(other work on the machine inflates the wall time). Timings are printed only, never written.

Usage: python tools/golden/make_amg.py [--out DIR] [--cases a,b,...] [--skip-ties]
  (needs torch, torchvision, segment-anything, mobilesam-mirror, pycocotools, opencv; about
  12-25 minutes on 2 cores shared with a build; most of it real_default, which runs twice)
"""

import argparse
import copy
import inspect
import json
import os
import sys
import time
import warnings
from collections import Counter
from importlib import metadata

warnings.filterwarnings("ignore")

import numpy as np
import torch
import torchvision
from PIL import Image
from pycocotools import mask as mask_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import build_mobile_sam, versions  # noqa: E402
from make_real import CHECKPOINT_SHA256, sha256  # noqa: E402
import segment_anything.automatic_mask_generator as amg_module  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator, SamPredictor  # noqa: E402
from segment_anything.utils.amg import generate_crop_boxes, remove_small_regions, rle_to_mask  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BAND = 0.01          # |logit| < BAND is the band a port may flip
IOU_MATCH = 1e-4     # the recomputed candidate's predicted IoU must match the record's to this

CHELSEA = "www/samples/chelsea.png"
COFFEE = "www/samples/coffee.png"
FIXTURE_IMAGE = "tests/fixtures/image.png"
# Lowered for the random weights; NMS 0.9999 removes exact duplicate boxes only (see above).
FIXTURE_OPTIONS = dict(pred_iou_thresh=0.05, stability_score_thresh=0.1,
                       box_nms_thresh=0.9999, crop_nms_thresh=0.9999)
SAM2_FIXTURE_OPTIONS = dict(pred_iou_thresh=0.6, stability_score_thresh=0.5,
                            box_nms_thresh=1.0, crop_nms_thresh=1.0)

CASES = [
    dict(case="real_default", weights="real", image=CHELSEA, options={}),
    dict(case="real_crop", weights="real", image=CHELSEA,
         options=dict(crop_n_layers=1, points_per_side=8)),
    # 8 records; 100..400 change 2 of them (holes and islands), 1000 changes 3: the two, and
    # a 418-pixel mask of one island that is "changed" without a pixel changing (every island
    # is below the area, so the largest is kept), which still demotes it in the NMS that
    # follows and so reorders the records. 5000/10000 add only more such flags.
    dict(case="real_min_region", weights="real", image=COFFEE,
         options=dict(points_per_side=16, min_mask_region_area=1000)),
    dict(case="real_small", weights="real", image=CHELSEA, options=dict(points_per_side=4)),
    # For WebGPU in headless Chromium (SwiftShader: about 12 s per decode).
    dict(case="real_tiny", weights="real", image=CHELSEA, options=dict(points_per_side=2)),
    dict(case="real_crop_small", weights="real", image=CHELSEA,
         options=dict(crop_n_layers=1, points_per_side=4)),
    dict(case="fixture_grid", weights="fixture", image=FIXTURE_IMAGE,
         options=dict(points_per_side=16, **FIXTURE_OPTIONS)),
    dict(case="fixture_crop", weights="fixture", image=FIXTURE_IMAGE,
         options=dict(crop_n_layers=1, points_per_side=4, **FIXTURE_OPTIONS)),
    # 16: all 3 records lose islands but keep most pixels (>= 50 leaves one ~25-pixel island).
    dict(case="fixture_min_region", weights="fixture", image=FIXTURE_IMAGE,
         options=dict(points_per_side=8, min_mask_region_area=16, **FIXTURE_OPTIONS)),
    # SAM 2.1 (the fixture of make_sam2.py) with SAM2AutomaticMaskGenerator's defaults but for
    # the filters set for its random weights (on chelsea: predicted IoU 0.50 to 0.70, stability
    # 0.38 to 0.93; each threshold keeps some and drops some) and NMS that keeps every box (all
    # of their masks span the image: 0.9999 would keep one).
    dict(case="sam2_fixture_grid", weights="sam2_fixture", image=CHELSEA,
         options=dict(points_per_side=4, **SAM2_FIXTURE_OPTIONS)),
    dict(case="sam2_fixture_crop", weights="sam2_fixture", image=CHELSEA,
         options=dict(crop_n_layers=1, points_per_side=2, **SAM2_FIXTURE_OPTIONS)),
    # min_mask_region_area only sets the predictor's max_hole_area and max_sprinkle_area
    # (sam2 1.1.0's generator does not remove small regions from the records at the end).
    dict(case="sam2_fixture_min_region", weights="sam2_fixture", image=CHELSEA,
         options=dict(points_per_side=4, min_mask_region_area=40, **SAM2_FIXTURE_OPTIONS)),
]


# --------------------------------------------------------------------------
# Models, images, RLE
# --------------------------------------------------------------------------
class Family:
    """What differs between SAM's generator and SAM 2's: the generator class, the module whose
    batched_nms and calculate_stability_score it calls, the predictor method it decodes through,
    and one point's logits at the image's size for the band."""

    def __init__(self, is_sam2: bool):
        self.sam2 = is_sam2
        if is_sam2:
            import sam2.automatic_mask_generator as module
            import sam2.utils.misc
            from sam2.sam2_image_predictor import SAM2ImagePredictor
            import make_sam2

            # The generator's predictor cleans masks of holes and sprinkles (min_mask_region_area)
            # with a CUDA kernel that is not built without CUDA (it would skip the step): scipy's
            # 8-connected labelling stands in for it (make_sam2.connected_components_8).
            sam2.utils.misc.get_connected_components = make_sam2.connected_components_8
            self.generator, self.module = module.SAM2AutomaticMaskGenerator, module
            self.predictor, self.predict_name = SAM2ImagePredictor, "_predict"
        else:
            self.generator, self.module = SamAutomaticMaskGenerator, amg_module
            self.predictor, self.predict_name = SamPredictor, "predict_torch"

    def point_logits(self, model, options: dict):
        """f(crop_key, crop_image, point) -> (logits at the crop's size, predicted IoU), one
        positive point, multimask, each crop's features computed once; SAM 2's predictor with
        the generator's clean-up (max_hole_area = max_sprinkle_area = min_mask_region_area)."""
        if self.sam2:
            area = options["min_mask_region_area"]
            predictor = self.predictor(model, max_hole_area=area, max_sprinkle_area=area)
        else:
            predictor = self.predictor(model)
        cache = {}
        attrs = (("_features", "_orig_hw", "_is_image_set") if self.sam2
                 else ("features", "original_size", "input_size", "is_image_set"))

        def run(key, crop, point):
            if key not in cache:
                with torch.no_grad():
                    predictor.set_image(crop)
                cache[key] = [getattr(predictor, a) for a in attrs]
            for a, v in zip(attrs, cache[key]):
                setattr(predictor, a, v)
            with torch.no_grad():
                logits, iou, _ = predictor.predict(point_coords=point, point_labels=np.array([1]),
                                                   multimask_output=True, return_logits=True)
            return logits, iou
        return run


def family(kind: str) -> Family:
    return Family(kind.startswith("sam2"))


def load_model(kind: str):
    if kind == "sam2_fixture":
        import make_sam2
        model, _ = make_sam2.make_model()
        return model
    model = build_mobile_sam()
    if kind == "real":
        path = os.path.join(REPO, "models", "mobile_sam.pt")
        if sha256(path) != CHECKPOINT_SHA256:
            sys.exit(f"{path} is not the trained mobile_sam.pt (sha256 {CHECKPOINT_SHA256})")
        state = torch.load(path, map_location="cpu")
    else:
        state = torch.load(os.path.join(REPO, "tests", "fixtures", "mobile_sam.pth"),
                           map_location="cpu")
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.train()
    model.eval()
    return model


def load_image(rel: str) -> np.ndarray:
    return np.array(Image.open(os.path.join(REPO, rel)).convert("RGB"))


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}) > 0


def all_options(options: dict, fam: Family) -> dict:
    """Every __init__ option of the generator by name, the official default unless given."""
    params = inspect.signature(fam.generator.__init__).parameters
    out = {}
    for name, p in params.items():
        if name in ("self", "model") or p.kind == p.VAR_KEYWORD:
            continue
        out[name] = p.default
    unknown = set(options) - set(out)
    assert not unknown, unknown
    out.update(options)
    out["output_mode"] = "coco_rle"
    return out


# --------------------------------------------------------------------------
# NMS: tie order of the reference, and a recorder for the generator's calls
# --------------------------------------------------------------------------
def stable_greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> list:
    """Greedy NMS, highest score first, ties in index order, suppress IoU > thresh."""
    n = len(scores)
    if n == 0:
        return []
    order = torch.sort(scores, descending=True, stable=True)[1]
    iou = torchvision.ops.box_iou(boxes.float(), boxes.float())
    alive = torch.ones(n, dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if not alive[i]:
            continue
        keep.append(i)
        alive &= ~(iou[i] > thresh)
    return keep


def check_nms_ties() -> None:
    from torchvision.ops import batched_nms, nms

    print("== NMS tie order (torchvision CPU) ==")
    for n in [10, 1000, 1001, 5000]:
        i = torch.arange(n, dtype=torch.float32)
        x, y = (i % 50) * 10, (i // 50) * 10
        boxes = torch.stack([x, y, x + 5, y + 5], 1)  # disjoint, all scores equal
        ones = torch.ones(n)
        k_nms = nms(boxes, ones, 0.7)
        k_bat = batched_nms(boxes, ones, torch.zeros(n), 0.7)
        path = "vanilla" if boxes.numel() > 4000 else "coordinate trick"
        print(f"  {n} disjoint boxes, equal scores: nms keeps index order "
              f"{torch.equal(k_nms, torch.arange(n))}; batched_nms ({path}) keeps index order "
              f"{torch.equal(k_bat, torch.arange(n))}"
              + ("" if torch.equal(k_bat, torch.arange(n)) else f", starts {k_bat[:8].tolist()}"))
    same = torch.tensor([[0, 0, 10, 10]] * 5, dtype=torch.float32)
    print(f"  5 identical boxes, equal scores: nms keeps {nms(same, torch.ones(5), 0.7).tolist()}")
    for n in [50, 900, 1200, 3000]:
        g = torch.Generator().manual_seed(n)
        xy = torch.randint(0, 400, (n, 2), generator=g).float()
        wh = torch.randint(5, 60, (n, 2), generator=g).float()
        boxes = torch.cat([xy, xy + wh], 1)
        scores = torch.randint(0, 3, (n,), generator=g).float()  # heavy ties, like 0/1 scores
        ref = stable_greedy_nms(boxes, scores, 0.7)
        k_nms = nms(boxes, scores, 0.7).tolist()
        k_bat = batched_nms(boxes, scores, torch.zeros(n), 0.7).tolist()
        path = "vanilla" if boxes.numel() > 4000 else "coordinate trick"
        print(f"  {n} random overlapping boxes, scores in {{0,1,2}}: nms == stable greedy "
              f"{k_nms == ref}; batched_nms ({path}) == stable greedy {k_bat == ref}, "
              f"same set {sorted(k_bat) == sorted(ref)}")
    print("  (the vanilla path re-sorts the kept indices with torch.sort(descending=True), "
          "which is not stable on CPU for > 16 elements)")


class NmsRecorder:
    """Pass-through wrapper around the generator module's batched_nms."""

    def __init__(self, module):
        self.calls = []
        self.module = module
        self.original = module.batched_nms

    def __call__(self, boxes, scores, idxs, iou_threshold):
        keep = self.original(boxes, scores, idxs, iou_threshold)
        # Copies only; the reference comparison runs after generate() (not in its timing).
        self.calls.append(dict(args=(boxes.clone(), scores.clone(), float(iou_threshold)),
                               keep=keep.tolist(), n=len(scores), kept=len(keep),
                               vanilla=bool(boxes.numel() > 4000)))
        return keep

    def check(self):
        for call in self.calls:
            boxes, scores, thresh = call.pop("args")
            call["ties"] = int(len(scores) - len(torch.unique(scores)))
            call["stable"] = call["keep"] == stable_greedy_nms(boxes, scores, thresh)

    def __enter__(self):
        self.module.batched_nms = self
        return self

    def __exit__(self, *exc):
        self.module.batched_nms = self.original


class ScoreRecorder:
    """Pass-through wrappers that keep every candidate's predicted IoU (the predictor's decode)
    and every stability score (of the candidates that passed the IoU filter)."""

    def __init__(self, gen, fam: Family):
        self.gen, self.fam, self.ious, self.stabs = gen, fam, [], []
        self.predict_torch = getattr(gen.predictor, fam.predict_name)
        self.stability = fam.module.calculate_stability_score

    def _predict(self, *args, **kwargs):
        masks, iou, low = self.predict_torch(*args, **kwargs)
        self.ious.append(iou.detach().flatten().clone())
        return masks, iou, low

    def _stability(self, *args, **kwargs):
        out = self.stability(*args, **kwargs)
        self.stabs.append(out.detach().flatten().clone())
        return out

    def __enter__(self):
        setattr(self.gen.predictor, self.fam.predict_name, self._predict)
        self.fam.module.calculate_stability_score = self._stability
        return self

    def __exit__(self, *exc):
        delattr(self.gen.predictor, self.fam.predict_name)
        self.fam.module.calculate_stability_score = self.stability

    def margins(self) -> dict:
        """Distance of the nearest kept and of the nearest dropped candidate to each threshold
        (kept: iou > thresh, stability >= thresh), null when there is none."""
        def near(values, thresh, keep):
            v = torch.cat(values).double() if values else torch.zeros(0, dtype=torch.float64)
            k, d = v[keep(v)], v[~keep(v)]
            return [float((k - thresh).abs().min()) if len(k) else None,
                    float((d - thresh).abs().min()) if len(d) else None]
        it, st = self.gen.pred_iou_thresh, self.gen.stability_score_thresh
        return {"pred_iou": near(self.ious, it, lambda v: v > it),
                "stability": near(self.stabs, st, lambda v: v >= st)}


def label_nms_calls(calls: list, image_size, options: dict, fam: Family) -> list:
    crop_boxes, _ = generate_crop_boxes(image_size, options["crop_n_layers"],
                                        options["crop_overlap_ratio"])
    stages = [("crop", box) for box in crop_boxes]
    if len(crop_boxes) > 1:
        stages.append(("crops", None))
    # SAM2AutomaticMaskGenerator (sam2 1.1.0) never calls its postprocess_small_regions: its
    # min_mask_region_area only sets its predictor's max_hole_area and max_sprinkle_area.
    if options["min_mask_region_area"] > 0 and not fam.sam2:
        stages.append(("min_region", None))
    # postprocess_small_regions returns early (no NMS) when there is nothing to process.
    assert len(calls) == len(stages) or (len(calls) == len(stages) - 1
                                         and stages[-1][0] == "min_region"), (calls, stages)
    out = []
    for (stage, box), call in zip(stages, calls):
        entry = {"stage": stage}
        if box is not None:
            entry["crop_box"] = [int(v) for v in box]
        entry.update({"in": call["n"], "kept": call["kept"]})
        out.append(entry)
    return out


# --------------------------------------------------------------------------
# Band and min-region bookkeeping
# --------------------------------------------------------------------------
def bands(model, fam: Family, options: dict, image: np.ndarray, records: list,
          changed: set) -> tuple:
    """Per record the |logit| < BAND mask (original frame), the largest predicted-IoU mismatch
    and the largest count of pixels where the recomputed mask > 0 disagrees with the record
    outside the band (records changed by the small-region removal excluded)."""
    h, w = image.shape[:2]
    point_logits = fam.point_logits(model, options)
    out, max_diff, max_outside, flips = [], 0.0, 0, 0
    for idx, rec in enumerate(records):
        x0, y0, cw, ch = [int(v) for v in rec["crop_box"]]
        point = np.array(rec["point_coords"], dtype=np.float64) - np.array([[x0, y0]], np.float64)
        logits, iou = point_logits((x0, y0, cw, ch), image[y0:y0 + ch, x0:x0 + cw], point)
        diffs = np.abs(iou.astype(np.float64) - rec["predicted_iou"])
        best = int(np.argmin(diffs))
        assert diffs[best] < IOU_MATCH, (idx, iou, rec["predicted_iou"])
        max_diff = max(max_diff, float(diffs[best]))
        band = np.zeros((h, w), dtype=bool)
        band[y0:y0 + ch, x0:x0 + cw] = np.abs(logits[best]) < BAND
        out.append(encode(band))
        if idx not in changed:
            mask = np.zeros((h, w), dtype=bool)
            mask[y0:y0 + ch, x0:x0 + cw] = logits[best] > 0
            diff = mask != decode(rec["segmentation"])
            flips += int(diff.sum())
            max_outside = max(max_outside, int((diff & ~band).sum()))
    return out, max_diff, max_outside, flips


def min_region_changes(model, fam: Family, image: np.ndarray, options: dict,
                       records: list) -> set:
    """Indices of the returned records that the small-region removal altered, from the official
    _generate_masks + postprocess_small_regions with an extra index column (asserted to give
    the same records as generate())."""
    gen = fam.generator(model, **options)
    with torch.no_grad():
        data = gen._generate_masks(image)
    n = len(data["rles"])
    changed_before, pixels_before = [], []
    for rle in data["rles"]:
        raw = rle_to_mask(rle)
        mask, c_holes = remove_small_regions(raw, gen.min_mask_region_area, mode="holes")
        mask, c_islands = remove_small_regions(mask, gen.min_mask_region_area, mode="islands")
        changed_before.append(c_holes or c_islands)
        pixels_before.append(bool((mask != raw).any()))
    data["orig_idx"] = np.arange(n)
    data = gen.postprocess_small_regions(copy.deepcopy(data), gen.min_mask_region_area,
                                         max(gen.box_nms_thresh, gen.crop_nms_thresh))
    kept = [int(i) for i in data["orig_idx"]]
    assert len(kept) == len(records)
    for rec, rle, iou in zip(records, data["rles"], data["iou_preds"]):
        assert amg_module.coco_encode_rle(rle)["counts"] == rec["segmentation"]["counts"]
        assert float(iou) == rec["predicted_iou"]
    changed = {j for j, i in enumerate(kept) if changed_before[i]}
    pixels = sum(pixels_before[i] for i in kept)
    print(f"  min_region: {sum(changed_before)} of {n} masks changed before its NMS, "
          f"{len(changed)} of the {len(kept)} returned records changed ({pixels} in pixels), "
          f"returned order {kept}")
    return changed, pixels


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def run_case(spec: dict, model, out_dir: str, timings: dict) -> dict:
    name = spec["case"]
    image = load_image(spec["image"])
    h, w = image.shape[:2]
    fam = family(spec["weights"])
    options = all_options(spec["options"], fam)
    gen = fam.generator(model, **options)
    with NmsRecorder(fam.module) as rec, ScoreRecorder(gen, fam) as scores:
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        records = gen.generate(image)
        timings[name] = [(time.perf_counter() - t0, time.process_time() - c0, load)]
    margins = scores.margins()
    rec.check()
    calls = rec.calls
    if name == "real_default":  # a second run: timing spread, and a determinism check
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        again = gen.generate(image)
        timings[name].append((time.perf_counter() - t0, time.process_time() - c0, load))
        assert json.dumps(again) == json.dumps(records), "generate() is not repeatable"
    nms = label_nms_calls(calls, (h, w), options, fam)
    print(f"== {name}: {len(records)} records, generate " + "; again ".join(
        f"{wall:.2f} s (CPU {cpu:.2f} s, load average before {load:.2f})"
        for wall, cpu, load in timings[name]))
    for entry, call in zip(nms, calls):
        print(f"  nms {entry['stage']} {entry.get('crop_box', '')}: {call['n']} in, "
              f"{call['kept']} kept, {call['ties']} tied scores, vanilla path {call['vanilla']}, "
              f"== stable greedy {call['stable']}")
        assert call["stable"], (name, entry)
    print(f"  threshold margins [nearest kept, nearest dropped]: {margins}")
    for what, values in (("predicted IoU", scores.ious), ("stability", scores.stabs)):
        v = torch.cat(values).double() if values else torch.zeros(0, dtype=torch.float64)
        if len(v):
            q = torch.quantile(v, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
            print(f"  {what} of the {len(v)} candidates, quartiles: "
                  + ", ".join(f"{x:.4f}" for x in q.tolist()))
    per_crop = Counter(tuple(r["crop_box"]) for r in records)
    print("  records per crop (XYWH): " + ", ".join(f"{list(k)}: {v}" for k, v in per_crop.items()))

    changed, pixels = set(), 0
    small_regions = options["min_mask_region_area"] > 0 and not fam.sam2
    if small_regions:
        changed, pixels = min_region_changes(model, fam, image, options, records)
    band, max_diff, max_outside, flips = bands(model, fam, options, image, records, changed)
    stab = np.array([r["stability_score"] for r in records], dtype=np.float64)
    areas = [r["area"] for r in records]
    print(f"  band: max |predicted IoU diff| {max_diff:.2e}; recomputed masks differ from the "
          f"records in {flips} pixels, at most {max_outside} outside the band in one record")
    print(f"  stability NaN {int(np.isnan(stab).sum())}, empty masks {areas.count(0)}, "
          f"area {min(areas) if areas else '-'}..{max(areas) if areas else '-'}, "
          f"predicted IoU {min(r['predicted_iou'] for r in records) if records else 0:.4f}.."
          f"{max(r['predicted_iou'] for r in records) if records else 0:.4f}")

    doc = {"case": name, "weights": spec["weights"], "image": spec["image"],
           "image_size": [h, w], "options": options, "records": records, "band": band,
           "nms": nms, "threshold_margins": margins}
    if small_regions:
        doc["changed_by_min_region"] = len(changed)
        doc["pixels_changed_by_min_region"] = pixels
    doc["versions"] = dict(versions(), pycocotools=metadata.version("pycocotools"),
                           opencv=metadata.version("opencv-python-headless"))
    if fam.sam2:
        doc["versions"]["sam2"] = metadata.version("sam2")
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        f.write(json.dumps(doc, separators=(",", ":"), allow_nan=False))
        f.write("\n")
    print(f"  wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path)} bytes)")
    return doc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "amg"))
    ap.add_argument("--cases", default=None, help="comma-separated subset of the cases")
    ap.add_argument("--skip-ties", action="store_true", help="skip the NMS tie experiment")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    if not args.skip_ties:
        check_nms_ties()
    wanted = None if args.cases is None else set(args.cases.split(","))
    models, timings = {}, {}
    for spec in CASES:
        if wanted is not None and spec["case"] not in wanted:
            continue
        if spec["weights"] not in models:
            models[spec["weights"]] = load_model(spec["weights"])
        run_case(spec, models[spec["weights"]], args.out, timings)
    print("== generate wall time in s (process CPU time, all threads): " + ", ".join(
        f"{k} {' / '.join(f'{wall:.2f} ({cpu:.2f})' for wall, cpu, _ in v)}"
        for k, v in timings.items()))


if __name__ == "__main__":
    main()
