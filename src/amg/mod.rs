//! "Segment everything": segment-anything's `SamAutomaticMaskGenerator` (and its helpers in
//! `utils/amg.py`), and sam2's `SAM2AutomaticMaskGenerator` for a SAM 2 checkpoint (the same
//! steps on SAM 2's predictor; its default `pred_iou_thresh` is 0.8). A grid of single-point
//! prompts is decoded in batches; candidates are kept by predicted IoU and stability score,
//! de-duplicated by box NMS, optionally also on crops of the image (each with its own
//! embedding) and cleaned of small holes and islands. Masks are kept as run lengths from the batch that made them on, so memory stays bounded for any grid.
//!
//! [`MaskGenerator`] runs in steps (a crop's embedding, or one batch of prompts), so that a
//! caller can report progress and stop between them; [`MaskGenerator::run`] runs them all.

mod regions;
pub mod rle;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::{stability_score_at, threshold, ImageFrame, MaskCleanup, RgbImage};
use crate::model::sam::{ImageEmbedding, Point, PointLabel, Prediction, Prompt};
use crate::predictor::Predictor;
pub use regions::{remove_small_regions, Regions};
pub use rle::Rle;

/// The generator's options, with the reference's names (camelCase in JSON) and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GeneratorOptions {
    /// Points along one side of the grid (`points_per_side`); exclusive with `point_grids`.
    pub points_per_side: Option<usize>,
    /// Explicit grids of points in `[0, 1]^2`, one per crop layer.
    pub point_grids: Option<Vec<Vec<[f64; 2]>>>,
    /// Prompts decoded per batch (one GPU submit each).
    pub points_per_batch: usize,
    /// `None`: the reference's default for the model, 0.88 for SAM, 0.8 for SAM 2.
    pub pred_iou_thresh: Option<f64>,
    pub stability_score_thresh: f64,
    pub stability_score_offset: f64,
    pub box_nms_thresh: f64,
    pub crop_n_layers: usize,
    pub crop_nms_thresh: f64,
    pub crop_overlap_ratio: f64,
    pub crop_n_points_downscale_factor: usize,
    pub min_mask_region_area: f64,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        Self {
            points_per_side: Some(32),
            point_grids: None,
            points_per_batch: 64,
            pred_iou_thresh: None,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            box_nms_thresh: 0.7,
            crop_n_layers: 0,
            crop_nms_thresh: 0.7,
            crop_overlap_ratio: 512.0 / 1500.0,
            crop_n_points_downscale_factor: 1,
            min_mask_region_area: 0.0,
        }
    }
}

impl GeneratorOptions {
    /// Reads options from JSON (camelCase keys, any subset; the rest keep their defaults).
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| Error::invalid(format!("generator options: {e}")))
    }

    /// Checks the options and gives the point grid of each crop layer.
    pub fn point_grids(&self) -> Result<Vec<Vec<[f64; 2]>>> {
        let in_unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::invalid(format!("{name} must be in [0, 1], got {v}")))
            }
        };
        if let Some(t) = self.pred_iou_thresh {
            in_unit("predIouThresh", t)?;
        }
        in_unit("stabilityScoreThresh", self.stability_score_thresh)?;
        in_unit("boxNmsThresh", self.box_nms_thresh)?;
        in_unit("cropNmsThresh", self.crop_nms_thresh)?;
        if !(0.0..1.0).contains(&self.crop_overlap_ratio) {
            return Err(Error::invalid(format!(
                "cropOverlapRatio must be in [0, 1), got {}",
                self.crop_overlap_ratio
            )));
        }
        if !self.stability_score_offset.is_finite() || self.stability_score_offset < 0.0 {
            return Err(Error::invalid(format!(
                "stabilityScoreOffset must be a finite number >= 0, got {}",
                self.stability_score_offset
            )));
        }
        if !self.min_mask_region_area.is_finite() || self.min_mask_region_area < 0.0 {
            return Err(Error::invalid(format!(
                "minMaskRegionArea must be a finite number >= 0, got {}",
                self.min_mask_region_area
            )));
        }
        if self.points_per_batch == 0 {
            return Err(Error::invalid("pointsPerBatch must be at least 1"));
        }
        if self.crop_n_points_downscale_factor == 0 {
            return Err(Error::invalid(
                "cropNPointsDownscaleFactor must be at least 1",
            ));
        }
        if self.crop_n_layers > MAX_CROP_LAYERS {
            return Err(Error::invalid(format!(
                "cropNLayers {} is more than {MAX_CROP_LAYERS} (layer i has 4^i crops, each \
                 encoded)",
                self.crop_n_layers
            )));
        }
        let grids = match (self.points_per_side, &self.point_grids) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(Error::invalid(
                    "give exactly one of pointsPerSide and pointGrids",
                ))
            }
            (Some(0), None) => return Err(Error::invalid("pointsPerSide must be at least 1")),
            (Some(n), None) => {
                if n > MAX_POINTS_PER_SIDE {
                    return Err(Error::invalid(format!(
                        "pointsPerSide {n} is more than {MAX_POINTS_PER_SIDE}"
                    )));
                }
                build_all_layer_point_grids(
                    n,
                    self.crop_n_layers,
                    self.crop_n_points_downscale_factor,
                )
            }
            (None, Some(grids)) => grids.clone(),
        };
        if grids.len() <= self.crop_n_layers {
            return Err(Error::invalid(format!(
                "pointGrids has {} grids; cropNLayers {} needs one per layer ({})",
                grids.len(),
                self.crop_n_layers,
                self.crop_n_layers + 1
            )));
        }
        for (i, grid) in grids.iter().enumerate() {
            if let Some(p) = grid
                .iter()
                .find(|p| !p.iter().all(|v| (0.0..=1.0).contains(v)))
            {
                return Err(Error::invalid(format!(
                    "pointGrids[{i}] holds the point {p:?}: coordinates must be in [0, 1]"
                )));
            }
        }
        Ok(grids)
    }
}

/// More crop layers than this is refused (layer 5 alone would encode 1024 crops).
pub const MAX_CROP_LAYERS: usize = 4;
/// More points per side than this is refused (a million prompts).
pub const MAX_POINTS_PER_SIDE: usize = 1024;

/// `build_point_grid`: `n x n` points evenly spaced in `[0, 1]^2`, row by row (numpy's
/// `linspace` arithmetic).
pub fn build_point_grid(n: usize) -> Vec<[f64; 2]> {
    let offset = 1.0 / (2.0 * n as f64);
    let (start, stop) = (offset, 1.0 - offset);
    let side: Vec<f64> = (0..n)
        .map(|i| {
            if n == 1 {
                start
            } else if i == n - 1 {
                stop
            } else {
                i as f64 * ((stop - start) / (n - 1) as f64) + start
            }
        })
        .collect();
    side.iter()
        .flat_map(|&y| side.iter().map(move |&x| [x, y]))
        .collect()
}

/// `build_all_layer_point_grids`: the grid of each crop layer, `n / scale^i` points per side
/// (0 where `scale^i` is beyond any `n`, as Python's integers give it).
pub fn build_all_layer_point_grids(n: usize, layers: usize, scale: usize) -> Vec<Vec<[f64; 2]>> {
    (0..=layers)
        .map(|i| build_point_grid(scale.checked_pow(i as u32).map_or(0, |d| n / d)))
        .collect()
}

/// `generate_crop_boxes`: the crops `[x0, y0, x1, y1]` of every layer (the whole image first)
/// and each one's layer.
pub fn generate_crop_boxes(
    (im_h, im_w): (usize, usize),
    n_layers: usize,
    overlap_ratio: f64,
) -> Vec<([usize; 4], usize)> {
    let mut crops = vec![([0, 0, im_w, im_h], 0)];
    let short_side = im_h.min(im_w) as f64;
    let crop_len = |orig: usize, n: usize, overlap: usize| -> usize {
        ((overlap as f64 * (n - 1) as f64 + orig as f64) / n as f64).ceil() as usize
    };
    for layer in 0..n_layers {
        let n = 1usize << (layer + 1);
        let overlap = (overlap_ratio * short_side * (2.0 / n as f64)) as usize;
        let crop_w = crop_len(im_w, n, overlap);
        let crop_h = crop_len(im_h, n, overlap);
        let x0s: Vec<usize> = (0..n).map(|i| (crop_w - overlap) * i).collect();
        let y0s: Vec<usize> = (0..n).map(|i| (crop_h - overlap) * i).collect();
        for &x0 in &x0s {
            for &y0 in &y0s {
                crops.push((
                    [x0, y0, (x0 + crop_w).min(im_w), (y0 + crop_h).min(im_h)],
                    layer + 1,
                ));
            }
        }
    }
    crops
}

/// torchvision's `nms` (what `batched_nms` does with one category): indices kept, by score
/// descending (ties in index order), dropping boxes whose IoU with a kept one is above
/// `thresh`. Boxes are `[x0, y0, x1, y1]`; the IoU is computed in f32 as torchvision does.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], thresh: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let thresh = thresh as f32;
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &boxes[i];
        let area_i = area(bi);
        for &j in &order[k + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            let iou = inter / (area_i + area(bj) - inter);
            if iou > thresh {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// `batched_mask_to_box` for one row-major mask: `[x0, y0, x1, y1]` of its set pixels
/// (inclusive), `[0, 0, 0, 0]` when it is empty.
pub fn mask_to_box(mask: &[u8], height: usize, width: usize) -> [usize; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..height {
        let row = &mask[y * width..(y + 1) * width];
        let Some(first) = row.iter().position(|&m| m != 0) else {
            continue;
        };
        let last = row.iter().rposition(|&m| m != 0).unwrap_or(first);
        x0 = x0.min(first);
        x1 = x1.max(last);
        y0 = y0.min(y);
        y1 = y;
    }
    if x0 == usize::MAX {
        [0; 4]
    } else {
        [x0, y0, x1, y1]
    }
}

/// `is_box_near_crop_edge`: whether a box (in the crop's frame) lies within 20 pixels of an
/// edge of the crop that is not an edge of the image.
fn near_crop_edge(b: [usize; 4], crop: [usize; 4], (h, w): (usize, usize)) -> bool {
    let image = [0, 0, w, h];
    let b = [
        b[0] + crop[0],
        b[1] + crop[1],
        b[2] + crop[0],
        b[3] + crop[1],
    ];
    (0..4).any(|i| b[i].abs_diff(crop[i]) <= 20 && b[i].abs_diff(image[i]) > 20)
}

/// A mask the generator keeps.
#[derive(Debug, Clone)]
pub struct MaskRecord {
    /// The mask at the image's size.
    pub rle: Rle,
    /// `[x0, y0, x1, y1]` in the image (inclusive).
    pub box_xyxy: [usize; 4],
    pub predicted_iou: f32,
    /// The prompt, in the image's pixel coordinates.
    pub point: [f64; 2],
    pub stability_score: f32,
    /// The crop `[x0, y0, x1, y1]` whose embedding made the mask.
    pub crop_box: [usize; 4],
}

impl MaskRecord {
    /// The record as the reference writes it (`output_mode="coco_rle"`): `segmentation`,
    /// `area`, `bbox` (XYWH), `predicted_iou`, `point_coords`, `stability_score`, `crop_box`
    /// (XYWH). A NaN score (the stability of a mask empty at every threshold) is `null`.
    pub fn to_json(&self) -> serde_json::Value {
        let xywh = |b: [usize; 4]| [b[0], b[1], b[2] - b[0], b[3] - b[1]];
        serde_json::json!({
            "segmentation": {
                "size": [self.rle.height, self.rle.width],
                "counts": self.rle.to_coco_string(),
            },
            "area": self.rle.area(),
            "bbox": xywh(self.box_xyxy),
            "predicted_iou": self.predicted_iou,
            "point_coords": [self.point],
            "stability_score": self.stability_score,
            "crop_box": xywh(self.crop_box),
        })
    }
}

/// Records as a JSON array (see [`MaskRecord::to_json`]).
pub fn records_to_json(records: &[MaskRecord]) -> String {
    records_json(records).to_string()
}

fn records_json(records: &[MaskRecord]) -> serde_json::Value {
    serde_json::Value::Array(records.iter().map(MaskRecord::to_json).collect())
}

/// A step's outcome as the page's wrapper reads it: `{ progress, done, masks }`, `masks` the
/// records the step's batch kept.
pub fn step_to_json(generator: &MaskGenerator, kept: &[MaskRecord]) -> String {
    serde_json::json!({
        "progress": generator.progress(),
        "done": generator.is_done(),
        "masks": records_json(kept),
    })
    .to_string()
}

/// Where a generation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Steps done and in all: a crop's embedding, or a batch of prompts.
    pub done: usize,
    pub total: usize,
    /// The crop being processed (0: the whole image) and the number of crops.
    pub crop: usize,
    pub crops: usize,
    /// Masks kept so far (before the de-duplication at the end of each crop).
    pub masks: usize,
}

struct Crop {
    /// `[x0, y0, x1, y1]`.
    bbox: [usize; 4],
    layer: usize,
    /// Batches of this crop's points (in the crop's pixel frame).
    batches: usize,
}

/// "Segment everything" on the image a [`Predictor`] holds, in steps.
pub struct MaskGenerator {
    opts: GeneratorOptions,
    grids: Vec<Vec<[f64; 2]>>,
    /// The masks' clean-up before their stability (SAM 2's, with a minimum region area).
    cleanup: MaskCleanup,
    /// SAM 2's generator: its minimum region area is the clean-up's alone (sam2's
    /// `SAM2AutomaticMaskGenerator` does not post-process the records' small regions).
    sam2: bool,
    /// The image's pixels, for the crops (not needed without crop layers).
    image: Option<RgbImage>,
    /// The embedding of the whole image, set back on the predictor after the crops.
    embedding: ImageEmbedding,
    /// (height, width).
    size: (usize, usize),
    crops: Vec<Crop>,
    /// The crop being processed, whether its embedding is set, and its next batch.
    crop: usize,
    crop_ready: bool,
    batch: usize,
    /// The current crop's masks, and those of the crops done (in the image frame).
    crop_masks: Vec<MaskRecord>,
    masks: Vec<MaskRecord>,
    done: usize,
    records: Option<Vec<MaskRecord>>,
}

impl MaskGenerator {
    /// A generation on the image `predictor` holds. `image` is its pixels: needed with crop
    /// layers (each crop is encoded), unused otherwise.
    pub fn new(
        opts: GeneratorOptions,
        predictor: &Predictor,
        image: Option<RgbImage>,
    ) -> Result<Self> {
        let mut opts = opts;
        let sam2 = predictor.is_sam2();
        // SamAutomaticMaskGenerator's default, or SAM2AutomaticMaskGenerator's.
        let default_iou = if sam2 { 0.8 } else { 0.88 };
        opts.pred_iou_thresh = Some(opts.pred_iou_thresh.unwrap_or(default_iou));
        let grids = opts.point_grids()?;
        // SAM2AutomaticMaskGenerator's min_mask_region_area sets its predictor's clean-up of each
        // mask's low-res logits (holes and sprinkles up to that area, before its stability is
        // measured), and only that.
        let cleanup = if sam2 && opts.min_mask_region_area > 0.0 {
            MaskCleanup::new(opts.min_mask_region_area, opts.min_mask_region_area)?
        } else {
            MaskCleanup::default()
        };
        let embedding = predictor.embedding()?.clone();
        let size = embedding.frame.original;
        if opts.crop_n_layers > 0 {
            match &image {
                None => {
                    return Err(Error::invalid(
                        "crop layers encode crops of the image: set the image itself (not \
                         only its embedding) before generating with cropNLayers > 0",
                    ))
                }
                Some(img) if (img.height, img.width) != size => {
                    return Err(Error::invalid(format!(
                        "the image is {}x{}, the embedding's is {}x{}",
                        img.width, img.height, size.1, size.0
                    )))
                }
                Some(_) => {}
            }
        }
        let crops = generate_crop_boxes(size, opts.crop_n_layers, opts.crop_overlap_ratio)
            .into_iter()
            .map(|(bbox, layer)| {
                if bbox[0] >= bbox[2] || bbox[1] >= bbox[3] {
                    return Err(Error::invalid(format!(
                        "crop {bbox:?} of layer {layer} is empty for a {}x{} image: use fewer \
                         crop layers",
                        size.1, size.0
                    )));
                }
                Ok(Crop {
                    bbox,
                    layer,
                    batches: grids[layer].len().div_ceil(opts.points_per_batch),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            opts,
            grids,
            cleanup,
            sam2,
            image,
            embedding,
            size,
            crops,
            crop: 0,
            crop_ready: true,
            batch: 0,
            crop_masks: Vec::new(),
            masks: Vec::new(),
            done: 0,
            records: None,
        })
    }

    /// The options it runs with (the model's defaults filled in).
    pub fn options(&self) -> &GeneratorOptions {
        &self.opts
    }

    /// Where the generation stands.
    pub fn progress(&self) -> Progress {
        let total = self.crops.iter().map(|c| c.batches).sum::<usize>() + self.crops.len() - 1;
        Progress {
            done: self.done,
            total,
            crop: self.crop.min(self.crops.len() - 1),
            crops: self.crops.len(),
            masks: self.masks.len() + self.crop_masks.len(),
        }
    }

    /// Whether every step is done ([`Self::finish`] gives the records).
    pub fn is_done(&self) -> bool {
        self.records.is_some()
    }

    /// One step: the next crop's embedding, or the next batch of prompts (the last one also
    /// de-duplicates and post-processes). Returns the masks that batch kept (before
    /// de-duplication, in the image frame), for a preview.
    pub async fn step(&mut self, predictor: &mut Predictor) -> Result<Vec<MaskRecord>> {
        if self.records.is_some() {
            return Ok(Vec::new());
        }
        let crop = &self.crops[self.crop];
        if !self.crop_ready {
            let [x0, y0, x1, y1] = crop.bbox;
            let image = self
                .image
                .as_ref()
                .ok_or_else(|| Error::invalid("crop layers need the image's pixels"))?;
            predictor.set_image(&image.crop(x0, y0, x1, y1)?).await?;
            self.crop_ready = true;
            self.done += 1;
            return Ok(Vec::new());
        }
        let grid = &self.grids[crop.layer];
        let [x0, y0, x1, y1] = crop.bbox;
        let (crop_w, crop_h) = ((x1 - x0) as f64, (y1 - y0) as f64);
        let start = self.batch * self.opts.points_per_batch;
        let points: Vec<[f64; 2]> = grid
            [start..(start + self.opts.points_per_batch).min(grid.len())]
            .iter()
            .map(|p| [p[0] * crop_w, p[1] * crop_h])
            .collect();
        let kept = self.process_batch(predictor, &points, crop.bbox).await?;
        self.crop_masks.extend(kept.iter().cloned());
        self.batch += 1;
        self.done += 1;
        if self.batch == crop.batches {
            self.finish_crop();
            self.crop += 1;
            self.batch = 0;
            if self.crop < self.crops.len() {
                self.crop_ready = false;
            } else {
                if self.crops.len() > 1 {
                    // The whole image's embedding back on the predictor.
                    predictor.set_embedding(self.embedding.clone()).await?;
                }
                self.finish();
            }
        }
        Ok(kept)
    }

    /// Leaves the predictor with the whole image's embedding (after a generation stopped
    /// between crops).
    pub async fn cancel(self, predictor: &mut Predictor) -> Result<()> {
        if self.crop > 0 || !self.crop_ready {
            predictor.set_embedding(self.embedding).await?;
        }
        Ok(())
    }

    /// The records, once [`Self::is_done`].
    pub fn records(&self) -> Option<&[MaskRecord]> {
        self.records.as_deref()
    }

    /// Every step, then the records.
    pub async fn run(mut self, predictor: &mut Predictor) -> Result<Vec<MaskRecord>> {
        while !self.is_done() {
            self.step(predictor).await?;
        }
        Ok(self.records.unwrap_or_default())
    }

    /// `_process_batch`: decodes the points (in the crop's frame), keeps candidates by IoU and
    /// stability, drops those near a crop edge, and returns the rest in the image frame.
    async fn process_batch(
        &self,
        predictor: &mut Predictor,
        points: &[[f64; 2]],
        crop: [usize; 4],
    ) -> Result<Vec<MaskRecord>> {
        let prompts: Vec<Prompt> = points
            .iter()
            .map(|&[x, y]| Prompt {
                points: vec![Point {
                    x,
                    y,
                    label: PointLabel::Positive,
                }],
                multimask: true,
                ..Prompt::default()
            })
            .collect();
        let predictions = predictor.predict_batch(&prompts).await?;
        // Candidates in the reference's order: by point, then by mask.
        let iou_thresh = self.opts.pred_iou_thresh.unwrap_or_default();
        let candidates: Vec<(usize, usize)> = predictions
            .iter()
            .enumerate()
            .flat_map(|(p, pred)| (0..pred.num_masks()).map(move |m| (p, m)))
            .filter(|&(p, m)| iou_thresh <= 0.0 || predictions[p].iou[m] > iou_thresh as f32)
            .collect();
        let kept = crate::threads::map(candidates.len(), |i| {
            let (p, m) = candidates[i];
            self.candidate(&predictions[p], m, points[p], crop)
        })?;
        Ok(kept.into_iter().flatten().collect())
    }

    /// One candidate mask: its stability, mask, box and run lengths, unless a filter drops it.
    fn candidate(
        &self,
        pred: &Prediction,
        m: usize,
        point: [f64; 2],
        crop: [usize; 4],
    ) -> Result<Option<MaskRecord>> {
        let frame: &ImageFrame = &pred.frame;
        // SAM 2's from its unclamped low-res logits, as its predictor makes its masks.
        let logits = pred.logits_with(m, &self.cleanup)?;
        let stability = stability_score_at(&logits, self.opts.stability_score_offset);
        // NaN (both thresholds empty) is dropped, as the reference's comparison drops it.
        let kept = stability >= self.opts.stability_score_thresh as f32;
        if self.opts.stability_score_thresh > 0.0 && !kept {
            return Ok(None);
        }
        let (h, w) = frame.original;
        let mask = threshold(&logits);
        let b = mask_to_box(&mask, h, w);
        if near_crop_edge(b, crop, self.size) {
            return Ok(None);
        }
        let (img_h, img_w) = self.size;
        Ok(Some(MaskRecord {
            rle: Rle::from_crop(&mask, crop, img_h, img_w)?,
            box_xyxy: [
                b[0] + crop[0],
                b[1] + crop[1],
                b[2] + crop[0],
                b[3] + crop[1],
            ],
            predicted_iou: pred.iou[m],
            point: [point[0] + crop[0] as f64, point[1] + crop[1] as f64],
            stability_score: stability,
            crop_box: crop,
        }))
    }

    /// The end of `_process_crop`: NMS among the crop's masks, by predicted IoU.
    fn finish_crop(&mut self) {
        let masks = std::mem::take(&mut self.crop_masks);
        let boxes: Vec<[f32; 4]> = masks.iter().map(|r| box_f32(r.box_xyxy)).collect();
        let scores: Vec<f32> = masks.iter().map(|r| r.predicted_iou).collect();
        let keep = nms(&boxes, &scores, self.opts.box_nms_thresh);
        self.masks.extend(select(masks, &keep));
    }

    /// The end of `_generate_masks` and `generate`: NMS across crops (smaller crops first) and
    /// the small-region clean-up.
    fn finish(&mut self) {
        let mut masks = std::mem::take(&mut self.masks);
        if self.crops.len() > 1 {
            let boxes: Vec<[f32; 4]> = masks.iter().map(|r| box_f32(r.box_xyxy)).collect();
            let scores: Vec<f32> = masks
                .iter()
                .map(|r| {
                    let [x0, y0, x1, y1] = r.crop_box;
                    1.0 / ((x1 - x0) * (y1 - y0)) as f32
                })
                .collect();
            let keep = nms(&boxes, &scores, self.opts.crop_nms_thresh);
            masks = select(masks, &keep);
        }
        if self.opts.min_mask_region_area > 0.0 && !self.sam2 {
            masks = postprocess_small_regions(
                masks,
                self.opts.min_mask_region_area,
                self.opts.box_nms_thresh.max(self.opts.crop_nms_thresh),
            );
        }
        self.records = Some(masks);
    }
}

/// `postprocess_small_regions`: holes then islands below `area` removed from each mask, then
/// NMS preferring the masks that did not change.
fn postprocess_small_regions(masks: Vec<MaskRecord>, area: f64, thresh: f64) -> Vec<MaskRecord> {
    // Each mask's run lengths and box after the clean-up, when it changed.
    let cleaned: Vec<Option<(Rle, [usize; 4])>> = masks
        .iter()
        .map(|r| {
            let (h, w) = (r.rle.height, r.rle.width);
            let mut mask = r.rle.to_mask().ok()?;
            let holes = remove_small_regions(&mut mask, h, w, area, Regions::Holes);
            let islands = remove_small_regions(&mut mask, h, w, area, Regions::Islands);
            if !(holes || islands) {
                return None;
            }
            Some((Rle::from_mask(&mask, h, w).ok()?, mask_to_box(&mask, h, w)))
        })
        .collect();
    let boxes: Vec<[f32; 4]> = masks
        .iter()
        .zip(&cleaned)
        .map(|(r, c)| box_f32(c.as_ref().map_or(r.box_xyxy, |c| c.1)))
        .collect();
    // Unchanged masks score 1, changed ones 0: NMS prefers the masks the clean-up left alone.
    let scores: Vec<f32> = cleaned
        .iter()
        .map(|c| f32::from(u8::from(c.is_none())))
        .collect();
    let keep = nms(&boxes, &scores, thresh);
    let mut cleaned: Vec<_> = cleaned.into_iter().map(Some).collect();
    let mut masks: Vec<Option<MaskRecord>> = masks.into_iter().map(Some).collect();
    keep.iter()
        .filter_map(|&i| {
            let mut r = masks[i].take()?;
            if let Some(Some((rle, b))) = cleaned[i].take() {
                r.rle = rle;
                r.box_xyxy = b;
            }
            Some(r)
        })
        .collect()
}

fn box_f32(b: [usize; 4]) -> [f32; 4] {
    b.map(|v| v as f32)
}

/// The items at `keep`, in that order.
fn select<T>(items: Vec<T>, keep: &[usize]) -> Vec<T> {
    let mut items: Vec<Option<T>> = items.into_iter().map(Some).collect();
    keep.iter().filter_map(|&i| items[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_grid_matches_numpy() {
        // build_point_grid(4)[:, 0][:4] = linspace(0.125, 0.875, 4)
        let g = build_point_grid(4);
        assert_eq!(g.len(), 16);
        assert_eq!(g[0], [0.125, 0.125]);
        assert_eq!(g[1][0], 0.375);
        assert_eq!(g[3][0], 0.875);
        assert_eq!(g[4], [0.125, 0.375]);
        assert_eq!(build_point_grid(1), vec![[0.5, 0.5]]);
    }

    #[test]
    fn crop_boxes_match_the_reference() {
        // generate_crop_boxes((300, 451), 1, 512 / 1500)
        let crops = generate_crop_boxes((300, 451), 1, 512.0 / 1500.0);
        let boxes: Vec<[usize; 4]> = crops.iter().map(|c| c.0).collect();
        assert_eq!(
            boxes,
            vec![
                [0, 0, 451, 300],
                [0, 0, 277, 201],
                [0, 99, 277, 300],
                [175, 0, 451, 201],
                [175, 99, 451, 300],
            ]
        );
        assert_eq!(
            crops.iter().map(|c| c.1).collect::<Vec<_>>(),
            [0, 1, 1, 1, 1]
        );
    }

    #[test]
    fn nms_keeps_by_score_and_ties_in_order() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 10.0, 10.0],
            [20.0, 20.0, 30.0, 30.0],
            [0.0, 0.0, 10.0, 10.0],
        ];
        assert_eq!(nms(&boxes, &[0.5, 0.9, 0.1, 0.9], 0.7), vec![1, 2]);
        assert_eq!(nms(&boxes, &[1.0, 1.0, 1.0, 1.0], 0.7), vec![0, 2]);
        assert_eq!(nms(&boxes, &[1.0, 1.0, 1.0, 1.0], 0.99), vec![0, 1, 2]);
    }

    #[test]
    fn options_are_checked() {
        let ok = GeneratorOptions::default();
        assert_eq!(ok.point_grids().unwrap()[0].len(), 1024);
        let bad = |json: &str| GeneratorOptions::from_json(json).and_then(|o| o.point_grids());
        assert!(bad(r#"{"pointsPerSide": 0}"#).is_err());
        assert!(bad(r#"{"pointGrids": [[[0.5, 0.5]]]}"#).is_err());
        assert!(bad(r#"{"pointsPerSide": null, "pointGrids": [[[0.5, 0.5]]]}"#).is_ok());
        assert!(bad(r#"{"predIouThresh": 1.5}"#).is_err());
        assert!(bad(r#"{"boxNmsThresh": -0.1}"#).is_err());
        assert!(bad(r#"{"pointsPerSide": 4, "bogus": 1}"#).is_err());
        assert!(
            bad(r#"{"cropNLayers": 1, "pointsPerSide": null, "pointGrids": [[[0.5, 0.5]]]}"#)
                .is_err()
        );
    }
}
