//! The deterministic weights of `tests/fixtures/vit/` (made by `tools/golden/make_vit.py`):
//! SAM with ViT-B's encoder structure cut to two blocks. The weights are not committed: both
//! sides generate them from the manifest's keys, shapes, offsets and scales with the counter
//! hash below (the manifest's `generator`), and every tensor is checked against the SHA-256 the
//! script recorded, so a test never runs on weights other than the reference's.
#![allow(dead_code)]

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{fixture, Case};

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub tensors: Vec<TensorSpec>,
}

#[derive(Debug, Deserialize)]
pub struct TensorSpec {
    pub key: String,
    pub shape: Vec<usize>,
    pub offset: f64,
    pub scale: f64,
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
pub struct VitCases {
    pub embedding: String,
    pub image: String,
    pub cases: Vec<Case>,
}

pub fn manifest() -> Manifest {
    let path = fixture("vit/manifest.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `tests/fixtures/vit/cases.json`, its file names made relative to `tests/fixtures`.
pub fn cases() -> VitCases {
    let path = fixture("vit/cases.json");
    let mut c: VitCases = serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rel = |f: &mut String| *f = format!("vit/{f}");
    rel(&mut c.embedding);
    rel(&mut c.image);
    for case in &mut c.cases {
        rel(&mut case.low_res_logits);
        rel(&mut case.iou);
        if let Some(l) = case.logits.as_mut() {
            rel(l);
        }
    }
    c
}

fn fnv1a64(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Element `i` of tensor `key`, as the manifest's `generator` defines it.
fn value(seed: u64, i: usize, offset: f32, scale: f32) -> f32 {
    let x = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let z = z ^ (z >> 31);
    let u = (z >> 40) as f32 * (1.0 / (1u32 << 23) as f32) - 1.0;
    let w = u * scale + offset;
    // Two roundings in f32 (product, then sum) as the script's numpy float32 arithmetic: Rust
    // does not fuse `u * scale + offset` into an FMA.
    half::bf16::from_f32(w).to_f32()
}

/// The values of one tensor, checked against the manifest's SHA-256.
pub fn generate(spec: &TensorSpec) -> Vec<f32> {
    let n: usize = spec.shape.iter().product();
    let seed = fnv1a64(&spec.key);
    let (offset, scale) = (spec.offset as f32, spec.scale as f32);
    let v: Vec<f32> = (0..n).map(|i| value(seed, i, offset, scale)).collect();
    let digest = Sha256::digest(bytemuck::cast_slice::<f32, u8>(&v));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex, spec.sha256,
        "{}: the generated values differ from the script's",
        spec.key
    );
    v
}

/// The whole state dict as a safetensors file (f32, official key names).
pub fn checkpoint() -> Vec<u8> {
    let m = manifest();
    let data: Vec<(String, Vec<usize>, Vec<f32>)> = m
        .tensors
        .iter()
        .map(|t| (t.key.clone(), t.shape.clone(), generate(t)))
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(k, shape, v)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(v)).unwrap();
            (k.clone(), view)
        })
        .collect();
    safetensors::tensor::serialize(views, None::<HashMap<String, String>>).unwrap()
}
