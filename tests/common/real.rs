//! The real-weights fixtures (`tests/fixtures/real`, made by `tools/golden/make_real.py` from the
//! official code on the trained `mobile_sam.pt` and photographs from scikit-image): the manifest,
//! the checkpoint that `./build.sh setup` fetches, and the comparisons every backend's test uses.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use websam::image::{ImageFrame, RgbImage};
use websam::model::sam::{ImageEmbedding, Prompt};

use super::{fixture, npy, npy_vec, GoldenPrompt};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The trained checkpoint; fails with a message naming how to get it.
pub fn weights_path() -> PathBuf {
    let path = Path::new(REPO).join("models/mobile_sam.pt");
    assert!(
        path.exists(),
        "{} is missing: `./build.sh setup` fetches the trained MobileSAM checkpoint",
        path.display()
    );
    path
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub photos: Vec<Photo>,
}

#[derive(Debug, Deserialize)]
pub struct Photo {
    pub name: String,
    /// Relative to the repository.
    pub image: String,
    pub orig_size: [usize; 2],
    pub embedding: String,
    pub cases: Vec<RealCase>,
}

#[derive(Debug, Deserialize)]
pub struct RealCase {
    pub name: String,
    #[serde(flatten)]
    pub input: GoldenPrompt,
    /// The reference's best candidate (argmax of its predicted IoU).
    pub best: usize,
    pub low_res_logits: String,
    pub iou: String,
    pub logits_png: String,
}

pub fn manifest() -> Manifest {
    let text = std::fs::read_to_string(fixture("real/cases.json")).unwrap();
    serde_json::from_str(&text).expect("real/cases.json")
}

impl Photo {
    pub fn frame(&self) -> ImageFrame {
        ImageFrame::new(self.orig_size[0], self.orig_size[1]).unwrap()
    }

    pub fn image(&self) -> RgbImage {
        RgbImage::open(Path::new(REPO).join(&self.image)).unwrap()
    }

    /// The reference's embedding (stored as f16; the decoder goldens were made from it).
    pub fn embedding(&self) -> ImageEmbedding {
        ImageEmbedding::new(npy(&self.embedding), self.frame()).unwrap()
    }

    pub fn embedding_vec(&self) -> Vec<f32> {
        npy_vec(&self.embedding)
    }
}

impl RealCase {
    pub fn prompt(&self) -> Prompt {
        self.input.prompt()
    }

    /// The reference's full-size logits, quantized as the PNG stores them: `(v - 128) / 100`,
    /// one plane of `h * w` per candidate.
    pub fn reference_logits(&self) -> Vec<f32> {
        let img = image::open(fixture(&self.logits_png))
            .unwrap_or_else(|e| panic!("{}: {e}", self.logits_png))
            .into_luma8();
        img.into_raw()
            .into_iter()
            .map(|v| (v as f32 - 128.0) / 100.0)
            .collect()
    }
}

/// How a mask at the image's size compares with the reference's.
#[derive(Debug, Clone, Copy)]
pub struct MaskDiff {
    /// Pixels on one side of 0 in ours and the other in the reference's, although the
    /// reference's logit is at least the band away from 0.
    pub outside_band: usize,
    /// All pixels whose mask value differs.
    pub flipped: usize,
    /// Intersection over union of the two masks.
    pub iou: f64,
}

/// Compares `ours` (logits at the image's size) with one plane of the reference's quantized
/// logits (see [`RealCase::reference_logits`]); the quantization's 0.005 is inside any band
/// of 0.01 or more.
pub fn mask_diff(ours: &[f32], reference: &[f32], band: f32) -> MaskDiff {
    assert_eq!(ours.len(), reference.len(), "lengths differ");
    let (mut outside, mut flipped, mut inter, mut union) = (0, 0, 0usize, 0usize);
    for (&o, &r) in ours.iter().zip(reference) {
        let (a, b) = (o > 0.0, r > 0.0);
        if a != b {
            flipped += 1;
            if r.abs() >= band {
                outside += 1;
            }
        }
        inter += (a && b) as usize;
        union += (a || b) as usize;
    }
    MaskDiff {
        outside_band: outside,
        flipped,
        iou: if union == 0 {
            1.0
        } else {
            inter as f64 / union as f64
        },
    }
}
