//! The SAM 2.1 fixture of `tests/fixtures/sam2` (made by `tools/golden/make_sam2.py`): SAM
//! 2.1-T's Hiera cut to stages [1, 2, 3, 2] at half its widths, its weights generated from the
//! manifest.

use serde::Deserialize;
use websam::model::hiera::HieraConfig;
use websam::model::weights::Weights;

use super::fixture;
use super::vit::{checkpoint_of, checkpoint_with_metadata, manifest_at, Manifest};

pub const MANIFEST: &str = "sam2/manifest.json";

pub fn manifest() -> Manifest {
    manifest_at(MANIFEST)
}

/// The fixture's trunk, as the manifest records it (not an official configuration).
pub fn fixture_hiera() -> HieraConfig {
    #[derive(Deserialize)]
    struct Head {
        hiera: Hiera,
    }
    #[derive(Deserialize)]
    struct Hiera {
        embed_dim: usize,
        num_heads: usize,
        stages: [usize; 4],
        global_att_blocks: Vec<usize>,
        window_spec: [usize; 4],
        window_pos_embed_bkg_spatial_size: [usize; 2],
    }
    let h: Head = serde_json::from_slice(&std::fs::read(fixture(MANIFEST)).unwrap()).unwrap();
    let h = h.hiera;
    HieraConfig {
        name: "fixture".into(),
        embed_dim: h.embed_dim,
        num_heads: h.num_heads,
        stages: h.stages,
        global_att_blocks: h.global_att_blocks,
        window_spec: h.window_spec,
        pos_embed_size: h.window_pos_embed_bkg_spatial_size[0],
    }
}

/// The fixture's weights under the official keys.
pub fn weights() -> Weights {
    Weights::from_safetensors_bytes(&checkpoint_of(&manifest(), &|k| vec![k.to_owned()])).unwrap()
}

/// The fixture as a safetensors file that names its trunk in its metadata, as any checkpoint of
/// a trunk other than SAM 2.1's four can: every loader (the CLI, the package) takes it as it is.
pub fn checkpoint_naming_its_trunk(hiera: &HieraConfig) -> Vec<u8> {
    let metadata = [(
        HieraConfig::METADATA_KEY.to_owned(),
        serde_json::to_string(hiera).unwrap(),
    )];
    checkpoint_with_metadata(
        &manifest(),
        &|k| vec![k.to_owned()],
        Some(metadata.into_iter().collect()),
    )
}
