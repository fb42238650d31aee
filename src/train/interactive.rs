//! The interactive training of the SAM paper's appendix: per object, a first prompt (a point
//! drawn uniformly from the ground-truth mask, or its box with noise, with equal probability),
//! then 8 points each drawn from the error region of the previous prediction (a false negative
//! gives a positive point, a false positive a negative one), the previous prediction's
//! unthresholded low-res logits (its best candidate) as the mask input, and two iterations with
//! no new point, one at a random place in the sequence and one at the end: 11 predictions, each
//! with its loss. Deterministic given a seed.
//!
//! The loss and the error region are taken in the low-res masks' frame (256x256: the image
//! resized and padded as the model sees it, at a quarter of 1024); prompts are placed in the
//! original image's pixels, as a person's clicks are.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::error::{Error, Result};
use crate::image::ImageFrame;
use crate::model::sam::{Point, PointLabel, Prompt};
use crate::train::TARGET_SIDE;

/// The paper's sequence: 8 points after the first prompt, 2 iterations without a new point.
pub const POINTS: usize = 8;
pub const PLAIN_ITERATIONS: usize = 2;
/// The first prompt's box noise: a standard deviation of this fraction of the box's side...
pub const BOX_NOISE: f64 = 0.1;
/// ...at most this many pixels.
pub const BOX_NOISE_MAX: f64 = 20.0;

/// The low-res frame's pixels per side of the 1024 input.
const SCALE: usize = 1024 / TARGET_SIDE;

/// An object's ground truth: its mask at the image's size and in the low-res frame.
#[derive(Debug, Clone)]
pub struct Truth {
    /// `height * width` of the original image, nonzero inside the object.
    mask: Vec<u8>,
    frame: ImageFrame,
    /// `[256, 256]` of 0 and 1 ([`target_from_mask`]).
    pub target: Tensor,
    /// The low-res target's values.
    low_res: Vec<f32>,
    /// `[x0, y0, x1, y1]` in pixels: the mask's bounding box.
    bbox: [f64; 4],
}

impl Truth {
    /// `mask`: the object's pixels (`frame.original` in size, nonzero inside).
    pub fn new(mask: Vec<u8>, frame: ImageFrame) -> Result<Self> {
        let (h, w) = frame.original;
        if mask.len() != h * w {
            return Err(Error::invalid(format!(
                "a ground-truth mask of {} values for a {h}x{w} image",
                mask.len()
            )));
        }
        let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
        for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m != 0) {
            let (y, x) = (i / w, i % w);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        if x0 > x1 {
            return Err(Error::invalid(
                "an empty ground-truth mask: nothing to train on",
            ));
        }
        let low_res = target_from_mask(&mask, &frame)?;
        let target = Tensor::from_slice(&low_res, (TARGET_SIDE, TARGET_SIDE), &Device::Cpu)?;
        Ok(Self {
            mask,
            frame,
            target,
            low_res,
            bbox: [x0 as f64, y0 as f64, x1 as f64, y1 as f64],
        })
    }

    pub fn frame(&self) -> ImageFrame {
        self.frame
    }

    /// The low-res target's values, `256 * 256`.
    pub fn low_res(&self) -> &[f32] {
        &self.low_res
    }
}

/// A mask at the image's size in the low-res frame: each low-res pixel covers 4x4 pixels of the
/// resized image (the original resized so that its longest side is 1024, then padded); it is 1
/// where at least half of those 16 points, taken at their centres in the original image, fall
/// inside the mask, and 0 in the padding.
pub fn target_from_mask(mask: &[u8], frame: &ImageFrame) -> Result<Vec<f32>> {
    let (h, w) = frame.original;
    let (in_h, in_w) = frame.input;
    if mask.len() != h * w {
        return Err(Error::invalid(format!(
            "a mask of {} values for a {h}x{w} image",
            mask.len()
        )));
    }
    // The original pixel under the centre of each pixel of the resized image.
    let source = |v: usize, resized: usize, original: usize| -> usize {
        let at = (v as f64 + 0.5) * original as f64 / resized as f64;
        (at as usize).min(original - 1)
    };
    let mut out = vec![0f32; TARGET_SIDE * TARGET_SIDE];
    for i in 0..TARGET_SIDE {
        for j in 0..TARGET_SIDE {
            let mut inside = 0;
            for dy in 0..SCALE {
                let y = i * SCALE + dy;
                if y >= in_h {
                    continue;
                }
                let row = source(y, in_h, h) * w;
                for dx in 0..SCALE {
                    let x = j * SCALE + dx;
                    if x < in_w && mask[row + source(x, in_w, w)] != 0 {
                        inside += 1;
                    }
                }
            }
            if 2 * inside >= SCALE * SCALE {
                out[i * TARGET_SIDE + j] = 1.0;
            }
        }
    }
    Ok(out)
}

/// A seeded generator for one object's sequence (`seed` and the object's index in the run).
pub fn rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// The iterations after the first prompt: `true` where a new point is added. [`POINTS`] points
/// and [`PLAIN_ITERATIONS`] without one: one at a random place among the others, one last.
pub fn schedule(rng: &mut impl Rng) -> Vec<bool> {
    let mut s = vec![true; POINTS];
    s.insert(rng.random_range(0..=POINTS), false);
    s.push(false);
    s
}

/// The first prompt: with equal probability a point drawn uniformly from the mask, or the mask's
/// box with Gaussian noise on each coordinate (a standard deviation of [`BOX_NOISE`] of the
/// box's side, at most [`BOX_NOISE_MAX`] pixels), kept inside the image. Three candidates.
pub fn first_prompt(rng: &mut impl Rng, truth: &Truth) -> Prompt {
    let (h, w) = truth.frame.original;
    if rng.random_bool(0.5) {
        let inside = truth.mask.iter().filter(|&&m| m != 0).count();
        let pick = rng.random_range(0..inside);
        let i = truth
            .mask
            .iter()
            .enumerate()
            .filter(|(_, &m)| m != 0)
            .nth(pick)
            .map_or(0, |(i, _)| i);
        return Prompt {
            points: vec![Point {
                x: (i % w) as f64,
                y: (i / w) as f64,
                label: PointLabel::Positive,
            }],
            multimask: true,
            ..Prompt::default()
        };
    }
    let [x0, y0, x1, y1] = truth.bbox;
    let mut noisy = |v: f64, side: f64, limit: usize| -> f64 {
        let sd = (BOX_NOISE * side).min(BOX_NOISE_MAX);
        let noise = if sd > 0.0 {
            Normal::new(0.0, sd).map_or(0.0, |n| n.sample(rng))
        } else {
            0.0
        };
        (v + noise).clamp(0.0, (limit - 1) as f64)
    };
    let (bw, bh) = (x1 - x0, y1 - y0);
    let (a, b, c, d) = (
        noisy(x0, bw, w),
        noisy(y0, bh, h),
        noisy(x1, bw, w),
        noisy(y1, bh, h),
    );
    Prompt {
        bbox: Some([a.min(c), b.min(d), a.max(c), b.max(d)]),
        multimask: true,
        ..Prompt::default()
    }
}

/// A point drawn uniformly from the error region of a prediction (`low_res` logits, `256 * 256`,
/// against the truth's low-res target): positive on a missed pixel, negative on a wrong one; at
/// the pixel's centre in the original image. `None` when the prediction has no error.
pub fn error_point(rng: &mut impl Rng, low_res: &[f32], truth: &Truth) -> Option<Point> {
    let (in_h, in_w) = truth.frame.input;
    let (h, w) = truth.frame.original;
    let rows = in_h.div_ceil(SCALE).min(TARGET_SIDE);
    let cols = in_w.div_ceil(SCALE).min(TARGET_SIDE);
    let wrong = |k: usize| (low_res[k] > 0.0) != (truth.low_res[k] > 0.5);
    let region = (0..rows)
        .flat_map(|i| (0..cols).map(move |j| i * TARGET_SIDE + j))
        .filter(|&k| wrong(k));
    let count = region.clone().count();
    if count == 0 || low_res.len() != truth.low_res.len() {
        return None;
    }
    let k = region.clone().nth(rng.random_range(0..count))?;
    let (i, j) = (k / TARGET_SIDE, k % TARGET_SIDE);
    let centre = |v: usize, resized: usize, original: usize| {
        (((v * SCALE) as f64 + SCALE as f64 / 2.0) * original as f64 / resized as f64)
            .min((original - 1) as f64)
    };
    Some(Point {
        x: centre(j, in_w, w),
        y: centre(i, in_h, h),
        label: if truth.low_res[k] > 0.5 {
            PointLabel::Positive
        } else {
            PointLabel::Negative
        },
    })
}
