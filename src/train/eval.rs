//! The interactive-segmentation protocol by which a model is measured before and after training:
//! per object, clicks placed by the error-region rule (each at the point of the current error
//! farthest from the error's boundary, positive where the object is missed, negative where the
//! mask is wrong), the previous prediction's low-res logits as the next mask input; the first
//! click asks for three candidates and keeps the one with the highest predicted IoU, as a user
//! of the predictor gets. Deterministic: no randomness.

use image::{GrayImage, Luma};
use imageproc::distance_transform::euclidean_squared_distance_transform;

use crate::error::{Error, Result};
use crate::image::{postprocess_logits, threshold};
use crate::model::sam::{ImageEmbedding, Point, PointLabel, Prompt, Sam};

/// The IoU with the truth after each of `clicks` clicks on one object (`mask`: the original
/// image's size, nonzero inside).
pub fn click_ious(
    sam: &Sam,
    embedding: &ImageEmbedding,
    mask: &[u8],
    clicks: usize,
) -> Result<Vec<f32>> {
    let (h, w) = embedding.frame.original;
    if mask.len() != h * w {
        return Err(Error::invalid(format!(
            "a mask of {} values for a {h}x{w} image",
            mask.len()
        )));
    }
    let truth: Vec<bool> = mask.iter().map(|&m| m != 0).collect();
    let mut predicted = vec![false; h * w];
    let mut prompt = Prompt {
        multimask: true,
        ..Prompt::default()
    };
    let mut ious = Vec::with_capacity(clicks);
    for _ in 0..clicks {
        let Some(point) = next_click(&predicted, &truth, h, w) else {
            // Nothing left to correct: the mask stays.
            ious.push(iou(&predicted, &truth));
            continue;
        };
        prompt.points.push(point);
        let prediction = sam.decode(embedding, &prompt)?;
        let best = prediction.best();
        let low_res = prediction.low_res(best).to_vec();
        predicted = threshold(&postprocess_logits(&low_res, &embedding.frame)?)
            .into_iter()
            .map(|v| v != 0)
            .collect();
        ious.push(iou(&predicted, &truth));
        prompt.mask_input = Some(low_res);
        prompt.multimask = false;
    }
    Ok(ious)
}

/// Intersection over union; 1 for two empty masks.
pub fn iou(a: &[bool], b: &[bool]) -> f32 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (&x, &y) in a.iter().zip(b) {
        inter += u64::from(x && y);
        union += u64::from(x || y);
    }
    if union == 0 {
        1.0
    } else {
        inter as f32 / union as f32
    }
}

/// The next click: the error pixel farthest from the error region's boundary (the image's edge
/// counts as boundary; the first such pixel in row-major order on a tie), labelled by the truth
/// there. `None` when the prediction is exact.
pub fn next_click(predicted: &[bool], truth: &[bool], h: usize, w: usize) -> Option<Point> {
    // Foreground (255) where the prediction is right, and around the image.
    let mut right = GrayImage::from_pixel(w as u32 + 2, h as u32 + 2, Luma([255]));
    let mut any = false;
    for y in 0..h {
        for x in 0..w {
            if predicted[y * w + x] != truth[y * w + x] {
                right.put_pixel(x as u32 + 1, y as u32 + 1, Luma([0]));
                any = true;
            }
        }
    }
    if !any {
        return None;
    }
    let distance = euclidean_squared_distance_transform(&right);
    let mut best = (0.0, 0, 0);
    for y in 0..h {
        for x in 0..w {
            let d = distance.get_pixel(x as u32 + 1, y as u32 + 1)[0];
            if d > best.0 {
                best = (d, x, y);
            }
        }
    }
    let (_, x, y) = best;
    Some(Point {
        x: x as f64,
        y: y as f64,
        label: if truth[y * w + x] {
            PointLabel::Positive
        } else {
            PointLabel::Negative
        },
    })
}

/// A model's score on a set of objects by [`click_ious`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClickScore {
    /// Objects measured.
    pub objects: usize,
    /// The mean IoU after 1, 2, ... clicks.
    pub mean_iou: Vec<f32>,
    /// The mean number of clicks to reach IoU 0.85 and 0.90 (an object that never does counts
    /// as the maximum number of clicks).
    pub clicks_to_85: f32,
    pub clicks_to_90: f32,
}

impl ClickScore {
    /// Scores the per-object IoU sequences (all of one length).
    pub fn from_ious(per_object: &[Vec<f32>]) -> Self {
        let clicks = per_object.first().map_or(0, Vec::len);
        let n = per_object.len().max(1) as f32;
        let mean_iou = (0..clicks)
            .map(|c| per_object.iter().map(|s| s[c]).sum::<f32>() / n)
            .collect();
        let noc = |t: f32| {
            per_object
                .iter()
                .map(|s| s.iter().position(|&v| v >= t).map_or(clicks, |i| i + 1) as f32)
                .sum::<f32>()
                / n
        };
        Self {
            objects: per_object.len(),
            mean_iou,
            clicks_to_85: noc(0.85),
            clicks_to_90: noc(0.90),
        }
    }

    /// The mean IoU after `clicks` clicks (1-based), if measured.
    pub fn after(&self, clicks: usize) -> Option<f32> {
        clicks
            .checked_sub(1)
            .and_then(|i| self.mean_iou.get(i))
            .copied()
    }
}
