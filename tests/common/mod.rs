//! Shared by the integration tests: the fixtures of `tests/fixtures` (made by
//! `tools/golden/make_fixtures.py` from the official PyTorch code) and comparison helpers.
#![allow(dead_code)]

pub mod real;
pub mod sam2;
pub mod vit;

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::Deserialize;
use websam::image::ImageFrame;
use websam::model::sam::{Point, PointLabel, Prompt};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Path of a fixture file; fails with a message naming how to make it.
pub fn fixture(name: &str) -> PathBuf {
    let path = Path::new(FIXTURES).join(name);
    assert!(
        path.exists(),
        "fixture {} is missing: make it with `python tools/golden/make_fixtures.py`",
        path.display()
    );
    path
}

/// A fixture `.npy` as an f32 tensor.
pub fn npy(name: &str) -> Tensor {
    let path = fixture(name);
    Tensor::read_npy(&path)
        .and_then(|t| t.to_dtype(DType::F32))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture `.npy` as a flat f32 vector.
pub fn npy_vec(name: &str) -> Vec<f32> {
    npy(name).flatten_all().unwrap().to_vec1().unwrap()
}

#[derive(Debug, Deserialize)]
pub struct Cases {
    pub embedding: String,
    pub image: String,
    pub resize: Resize,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
pub struct Resize {
    pub src: String,
    pub targets: Vec<String>,
}

/// A case's inputs as given to `SamPredictor.predict`.
#[derive(Debug, Deserialize)]
pub struct GoldenPrompt {
    pub points: Option<Vec<[f64; 2]>>,
    pub labels: Option<Vec<i32>>,
    #[serde(rename = "box")]
    pub bbox: Option<[f64; 4]>,
    pub mask_input: Option<String>,
    pub multimask: bool,
}

impl GoldenPrompt {
    pub fn prompt(&self) -> Prompt {
        let points = match (&self.points, &self.labels) {
            (Some(p), Some(l)) => p
                .iter()
                .zip(l)
                .map(|(&[x, y], &label)| Point {
                    x,
                    y,
                    label: PointLabel::from_i32(label).unwrap(),
                })
                .collect(),
            _ => Vec::new(),
        };
        Prompt {
            points,
            bbox: self.bbox,
            mask_input: self.mask_input.as_deref().map(npy_vec),
            multimask: self.multimask,
        }
    }
}

/// One decoder case.
#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    #[serde(flatten)]
    pub input: GoldenPrompt,
    /// `[height, width]` of the original frame; `[1024, 1024]` is the identity transform.
    pub orig_size: [usize; 2],
    pub low_res_logits: String,
    pub iou: String,
    /// Full-resolution logits (f16), for the cases in a real image's frame.
    pub logits: Option<String>,
    /// SAM2ImagePredictor's `max_hole_area` / `max_sprinkle_area` (SAM 2's `fill_` cases).
    #[serde(default)]
    pub max_hole_area: f64,
    #[serde(default)]
    pub max_sprinkle_area: f64,
}

impl Case {
    pub fn prompt(&self) -> Prompt {
        self.input.prompt()
    }

    pub fn frame(&self) -> ImageFrame {
        ImageFrame::new(self.orig_size[0], self.orig_size[1]).unwrap()
    }

    /// The 1024-frame cases exercise the decoder alone; the others the whole predictor.
    pub fn in_1024_frame(&self) -> bool {
        self.orig_size == [1024, 1024]
    }
}

pub fn cases() -> Cases {
    let text = std::fs::read_to_string(fixture("cases.json")).unwrap();
    serde_json::from_str(&text).expect("cases.json")
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Masks thresholded from `ours` against those from `reference` logits: the number of pixels
/// that differ although the reference logit is at least `band` away from 0.
pub fn mask_mismatches(ours: &[f32], reference: &[f32], band: f32) -> usize {
    assert_eq!(ours.len(), reference.len(), "lengths differ");
    ours.iter()
        .zip(reference)
        .filter(|(o, r)| (**o > 0.0) != (**r > 0.0) && r.abs() >= band)
        .count()
}
