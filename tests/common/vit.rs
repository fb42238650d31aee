//! The deterministic weights of `tests/fixtures/vit/` (made by `tools/golden/make_vit.py`):
//! SAM with ViT-B's encoder structure cut to two blocks; and of any manifest of that form
//! (`tests/fixtures/sam2/`, `tools/golden/make_sam2.py`: [`manifest_at`], [`checkpoint_of`]). The weights are not committed: both
//! sides generate them from the manifest's keys, shapes, offsets and scales with the counter
//! hash below (the manifest's `generator`), and every tensor is checked against the SHA-256 the
//! script recorded, so a test never runs on weights other than the reference's.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, TensorView};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{fixture, Case};

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub tensors: Vec<TensorSpec>,
    /// Generated inputs besides the weights (SAM 2's decoder features), where listed.
    #[serde(default)]
    pub features: Vec<TensorSpec>,
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
    manifest_at("vit/manifest.json")
}

/// A manifest under `tests/fixtures`.
pub fn manifest_at(name: &str) -> Manifest {
    let path = fixture(name);
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
    checkpoint_named(&|key| vec![key.to_owned()])
}

/// The whole state dict as a safetensors file (f32), each tensor under the names `names`
/// gives its official key (none, one or several).
pub fn checkpoint_named(names: &dyn Fn(&str) -> Vec<String>) -> Vec<u8> {
    checkpoint_of(&manifest(), names)
}

/// The tensors of manifest `m` as a safetensors file (f32), each under the names `names`
/// gives its key.
pub fn checkpoint_of(m: &Manifest, names: &dyn Fn(&str) -> Vec<String>) -> Vec<u8> {
    checkpoint_with_metadata(m, names, None)
}

/// [`checkpoint_of`] with a safetensors `__metadata__`.
pub fn checkpoint_with_metadata(
    m: &Manifest,
    names: &dyn Fn(&str) -> Vec<String>,
    metadata: Option<HashMap<String, String>>,
) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<f32>)> = m
        .tensors
        .iter()
        .map(|t| (t.key.clone(), t.shape.clone(), generate(t)))
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .flat_map(|(k, shape, v)| {
            names(k).into_iter().map(move |name| {
                let view =
                    TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(v)).unwrap();
                (name, view)
            })
        })
        .collect();
    safetensors::tensor::serialize(views, metadata).unwrap()
}

/// `tests/fixtures/vit/hf_keys.json`: transformers' `SamModel` names of the fixture model's
/// keys, as its conversion script renames them (made by `tools/golden/make_vit.py`).
#[derive(Debug, Deserialize)]
pub struct HfKeys {
    /// Official key -> HF key (`convert_sam_to_hf.replace_keys`).
    pub official_to_hf: BTreeMap<String, String>,
    /// HF keys `replace_keys` adds as a copy of an official tensor -> that official key.
    pub copies: BTreeMap<String, String>,
    /// HF keys `SamModel.save_pretrained` leaves out of `model.safetensors`.
    pub not_saved: Vec<String>,
}

impl HfKeys {
    /// Every HF name `replace_keys` gives the official tensor `key` (copies included).
    pub fn all_names(&self, key: &str) -> Vec<String> {
        let mut names = vec![self.official_to_hf[key].clone()];
        names.extend(
            self.copies
                .iter()
                .filter(|(_, src)| *src == key)
                .map(|(copy, _)| copy.clone()),
        );
        names
    }

    /// The names under which a hub file (`save_pretrained`) holds the official tensor `key`.
    pub fn hub_names(&self, key: &str) -> Vec<String> {
        let mut names = self.all_names(key);
        names.retain(|n| !self.not_saved.contains(n));
        names
    }
}

pub fn hf_keys() -> HfKeys {
    let path = fixture("vit/hf_keys.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
