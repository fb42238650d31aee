//! Hugging Face transformers' `SamModel` checkpoints (`facebook/sam-vit-base`, `-large`,
//! `-huge`: `model.safetensors` or `pytorch_model.bin`) read under the official key names.
//!
//! transformers renames the official state dict with `convert_sam_to_hf.py` (`replace_keys`,
//! a list of substring replacements) and changes no value: every tensor keeps its shape and
//! layout (`qkv` stays fused, the relative positions, `pos_embed` and the positional-encoding
//! matrix are the same arrays). So loading one is a renaming, done here once when the weights
//! are read ([`crate::model::weights::Weights`]): every later part of the crate sees official
//! keys only. A checkpoint counts as HF when one of its keys has a name that only HF uses
//! (`vision_encoder.*`, `prompt_encoder.mask_embed.*`, `mask_decoder.upscale_conv1.*`, ...;
//! see [`is_hf_checkpoint`]); then every key must be an HF `SamModel` name, and one that is not
//! is an error naming it.
//!
//! Dropped: `prompt_encoder.shared_embedding.positional_embedding` when
//! `shared_image_embedding.positional_embedding` is also there. `SamModel` ties the two (its
//! `_tie_weights` makes the prompt encoder's the image-wide one, and `save_pretrained` leaves it
//! out, so hub files hold only the image-wide one); the official model has one matrix,
//! `prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`, read from whichever is there.
//! No other HF key goes unused: every other one has exactly one official counterpart.
//!
//! The table is written by hand rather than with a regex crate or by running transformers'
//! substring replacements backwards: those replacements are not invertible on their own
//! (`blocks` -> `layers` meets the mask decoder's own `transformer.layers`, `.norm` ->
//! `.layer_norm` meets `neck.1` -> `neck.layer_norm1`), the mapping is small and fixed, and a
//! table of whole segments reads in both directions (the other one names the HF key in
//! errors and lets the tests check the map is a bijection) without adding a dependency.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};

/// The image-wide copy of the positional-encoding matrix: the one hub files hold.
pub const IMAGE_WIDE_PE: &str = "shared_image_embedding.positional_embedding";
/// The prompt encoder's copy, tied to [`IMAGE_WIDE_PE`]; dropped when that one is present.
pub const TIED_PE: &str = "prompt_encoder.shared_embedding.positional_embedding";

/// `(HF prefix, official prefix)`, whole dot-separated segments; `#` stands for one block or
/// layer index, the same in both. A key is renamed by the rule whose prefix it starts with;
/// the rest of the key (`weight`, `bias`, `qkv.weight`, `rel_pos_h`, ...) is kept.
const RULES: &[(&str, &str)] = &[
    // The positional-encoding matrix, held twice by SamModel (see TIED_PE).
    (
        IMAGE_WIDE_PE,
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ),
    (
        TIED_PE,
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ),
    // SamVisionEncoder -> ImageEncoderViT.
    (
        "vision_encoder.patch_embed.projection",
        "image_encoder.patch_embed.proj",
    ),
    ("vision_encoder.pos_embed", "image_encoder.pos_embed"),
    (
        "vision_encoder.layers.#.layer_norm1",
        "image_encoder.blocks.#.norm1",
    ),
    (
        "vision_encoder.layers.#.layer_norm2",
        "image_encoder.blocks.#.norm2",
    ),
    (
        "vision_encoder.layers.#.attn",
        "image_encoder.blocks.#.attn",
    ),
    ("vision_encoder.layers.#.mlp", "image_encoder.blocks.#.mlp"),
    ("vision_encoder.neck.conv1", "image_encoder.neck.0"),
    ("vision_encoder.neck.layer_norm1", "image_encoder.neck.1"),
    ("vision_encoder.neck.conv2", "image_encoder.neck.2"),
    ("vision_encoder.neck.layer_norm2", "image_encoder.neck.3"),
    // SamPromptEncoder -> PromptEncoder.
    (
        "prompt_encoder.point_embed.#",
        "prompt_encoder.point_embeddings.#",
    ),
    (
        "prompt_encoder.not_a_point_embed",
        "prompt_encoder.not_a_point_embed",
    ),
    (
        "prompt_encoder.no_mask_embed",
        "prompt_encoder.no_mask_embed",
    ),
    (
        "prompt_encoder.mask_embed.conv1",
        "prompt_encoder.mask_downscaling.0",
    ),
    (
        "prompt_encoder.mask_embed.layer_norm1",
        "prompt_encoder.mask_downscaling.1",
    ),
    (
        "prompt_encoder.mask_embed.conv2",
        "prompt_encoder.mask_downscaling.3",
    ),
    (
        "prompt_encoder.mask_embed.layer_norm2",
        "prompt_encoder.mask_downscaling.4",
    ),
    (
        "prompt_encoder.mask_embed.conv3",
        "prompt_encoder.mask_downscaling.6",
    ),
    // SamMaskDecoder -> MaskDecoder.
    ("mask_decoder.iou_token", "mask_decoder.iou_token"),
    ("mask_decoder.mask_tokens", "mask_decoder.mask_tokens"),
    (
        "mask_decoder.upscale_conv1",
        "mask_decoder.output_upscaling.0",
    ),
    (
        "mask_decoder.upscale_layer_norm",
        "mask_decoder.output_upscaling.1",
    ),
    (
        "mask_decoder.upscale_conv2",
        "mask_decoder.output_upscaling.3",
    ),
    // SAM's three-layer MLP heads are SamFeedForward (proj_in, layers.0, proj_out) there, as
    // transformers' conversion maps them (it handles three layers only, as here).
    (
        "mask_decoder.iou_prediction_head.proj_in",
        "mask_decoder.iou_prediction_head.layers.0",
    ),
    (
        "mask_decoder.iou_prediction_head.layers.0",
        "mask_decoder.iou_prediction_head.layers.1",
    ),
    (
        "mask_decoder.iou_prediction_head.proj_out",
        "mask_decoder.iou_prediction_head.layers.2",
    ),
    (
        "mask_decoder.output_hypernetworks_mlps.#.proj_in",
        "mask_decoder.output_hypernetworks_mlps.#.layers.0",
    ),
    (
        "mask_decoder.output_hypernetworks_mlps.#.layers.0",
        "mask_decoder.output_hypernetworks_mlps.#.layers.1",
    ),
    (
        "mask_decoder.output_hypernetworks_mlps.#.proj_out",
        "mask_decoder.output_hypernetworks_mlps.#.layers.2",
    ),
    // SamTwoWayTransformer -> TwoWayTransformer: only the norms are renamed.
    (
        "mask_decoder.transformer.layers.#.self_attn",
        "mask_decoder.transformer.layers.#.self_attn",
    ),
    (
        "mask_decoder.transformer.layers.#.cross_attn_token_to_image",
        "mask_decoder.transformer.layers.#.cross_attn_token_to_image",
    ),
    (
        "mask_decoder.transformer.layers.#.cross_attn_image_to_token",
        "mask_decoder.transformer.layers.#.cross_attn_image_to_token",
    ),
    (
        "mask_decoder.transformer.layers.#.mlp",
        "mask_decoder.transformer.layers.#.mlp",
    ),
    (
        "mask_decoder.transformer.layers.#.layer_norm1",
        "mask_decoder.transformer.layers.#.norm1",
    ),
    (
        "mask_decoder.transformer.layers.#.layer_norm2",
        "mask_decoder.transformer.layers.#.norm2",
    ),
    (
        "mask_decoder.transformer.layers.#.layer_norm3",
        "mask_decoder.transformer.layers.#.norm3",
    ),
    (
        "mask_decoder.transformer.layers.#.layer_norm4",
        "mask_decoder.transformer.layers.#.norm4",
    ),
    (
        "mask_decoder.transformer.final_attn_token_to_image",
        "mask_decoder.transformer.final_attn_token_to_image",
    ),
    (
        "mask_decoder.transformer.layer_norm_final_attn",
        "mask_decoder.transformer.norm_final_attn",
    ),
];

/// `key` rewritten from prefix `from` to prefix `to` when it starts with `from`'s segments.
fn rewrite(key: &str, from: &str, to: &str) -> Option<String> {
    let mut segments = key.split('.');
    let mut index = None;
    for pattern in from.split('.') {
        let s = segments.next()?;
        if pattern == "#" {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            index = Some(s);
        } else if pattern != s {
            return None;
        }
    }
    let mut out = match index {
        Some(i) => to.replacen('#', i, 1),
        None => to.to_owned(),
    };
    for s in segments {
        out.push('.');
        out.push_str(s);
    }
    Some(out)
}

/// The official name of an HF `SamModel` key; `None` when no rule covers it.
pub fn official_name(hf_key: &str) -> Option<String> {
    RULES.iter().find_map(|(hf, off)| rewrite(hf_key, hf, off))
}

/// The HF `SamModel` name of an official key (for the positional-encoding matrix, the
/// image-wide one that hub files hold); `None` when no rule covers it (TinyViT's keys).
pub fn hf_name(official_key: &str) -> Option<String> {
    RULES
        .iter()
        .find_map(|(hf, off)| rewrite(official_key, off, hf))
}

/// Whether the keys are HF `SamModel` names: one of them is an HF name that is not also an
/// official one (`prompt_encoder.no_mask_embed.weight` is both; it decides nothing).
pub fn is_hf_checkpoint<'a>(keys: impl IntoIterator<Item = &'a str>) -> bool {
    keys.into_iter().any(|k| {
        official_name(k).is_some() && !RULES.iter().any(|(_, off)| rewrite(k, off, off).is_some())
    })
}

/// The renaming of an HF checkpoint's keys: `(HF key, official key)` for every key kept,
/// sorted by official key. [`TIED_PE`] is dropped when [`IMAGE_WIDE_PE`] is there; any other
/// key must have an official counterpart that no other key has, or this is an error naming it.
pub fn to_official<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<Vec<(String, String)>> {
    let keys: BTreeSet<&str> = keys.into_iter().collect();
    let mut renamed: BTreeMap<String, &str> = BTreeMap::new();
    for &key in &keys {
        if key == TIED_PE && keys.contains(IMAGE_WIDE_PE) {
            continue;
        }
        let official = official_name(key).ok_or_else(|| {
            Error::UnsupportedModel(format!(
                "Hugging Face SAM checkpoint: `{key}` is not a key of transformers' SamModel \
                 (ViT-B/L/H) that maps onto the official SAM"
            ))
        })?;
        if let Some(other) = renamed.insert(official.clone(), key) {
            return Err(Error::format(format!(
                "Hugging Face SAM checkpoint: `{other}` and `{key}` are both `{official}`"
            )));
        }
    }
    Ok(renamed
        .into_iter()
        .map(|(official, hf)| (hf.to_owned(), official))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PE: &str = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix";

    #[test]
    fn renames_each_kind_of_key_both_ways() {
        for (hf, official) in [
            (
                "vision_encoder.layers.11.attn.rel_pos_h",
                "image_encoder.blocks.11.attn.rel_pos_h",
            ),
            (
                "vision_encoder.layers.3.layer_norm2.bias",
                "image_encoder.blocks.3.norm2.bias",
            ),
            (
                "vision_encoder.neck.layer_norm1.weight",
                "image_encoder.neck.1.weight",
            ),
            ("vision_encoder.pos_embed", "image_encoder.pos_embed"),
            (IMAGE_WIDE_PE, PE),
            (
                "prompt_encoder.mask_embed.layer_norm2.bias",
                "prompt_encoder.mask_downscaling.4.bias",
            ),
            (
                "prompt_encoder.point_embed.3.weight",
                "prompt_encoder.point_embeddings.3.weight",
            ),
            (
                "mask_decoder.output_hypernetworks_mlps.2.layers.0.weight",
                "mask_decoder.output_hypernetworks_mlps.2.layers.1.weight",
            ),
            (
                "mask_decoder.iou_prediction_head.proj_out.bias",
                "mask_decoder.iou_prediction_head.layers.2.bias",
            ),
            (
                "mask_decoder.transformer.layers.1.layer_norm4.weight",
                "mask_decoder.transformer.layers.1.norm4.weight",
            ),
            (
                "mask_decoder.transformer.layer_norm_final_attn.bias",
                "mask_decoder.transformer.norm_final_attn.bias",
            ),
        ] {
            assert_eq!(official_name(hf).as_deref(), Some(official), "{hf}");
            assert_eq!(hf_name(official).as_deref(), Some(hf), "{official}");
        }
        assert_eq!(official_name(TIED_PE).as_deref(), Some(PE));
        // Not SAM names, or not whole segments.
        for key in [
            "vision_encoder.layers.x.attn.qkv.weight",
            "vision_encoder.layer.0.attn.qkv.weight",
            "vision_encoder.pos_embedding",
            "mask_decoder.iou_prediction_head.layers.1.weight",
            "image_encoder.blocks.0.norm1.weight",
        ] {
            assert_eq!(official_name(key), None, "{key}");
        }
    }

    #[test]
    fn tells_hf_keys_from_official_ones() {
        assert!(is_hf_checkpoint(["vision_encoder.pos_embed"]));
        assert!(is_hf_checkpoint([
            "mask_decoder.iou_token.weight",
            "mask_decoder.upscale_conv1.weight"
        ]));
        // Names both use, official names and other models' names decide nothing.
        assert!(!is_hf_checkpoint([
            "mask_decoder.iou_token.weight",
            "mask_decoder.iou_prediction_head.layers.0.weight",
            "prompt_encoder.no_mask_embed.weight",
            "image_encoder.pos_embed",
            "mask_decoder.output_upscaling.0.weight",
            "image_encoder.layers.0.blocks.0.attn.qkv.weight",
            "a.f32",
        ]));
    }

    #[test]
    fn the_tied_copy_is_dropped_only_beside_the_image_wide_one() {
        let both = to_official([TIED_PE, IMAGE_WIDE_PE]).unwrap();
        assert_eq!(both, [(IMAGE_WIDE_PE.to_owned(), PE.to_owned())]);
        let tied = to_official([TIED_PE]).unwrap();
        assert_eq!(tied, [(TIED_PE.to_owned(), PE.to_owned())]);
    }

    #[test]
    fn unknown_and_clashing_keys_are_errors_naming_them() {
        let err = to_official(["vision_encoder.pos_embed", "vision_encoder.extra.weight"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`vision_encoder.extra.weight`"), "{err}");
        // An official key in an HF checkpoint is not renamed: an error, not a silent mix.
        let err = to_official(["vision_encoder.pos_embed", "image_encoder.neck.0.weight"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`image_encoder.neck.0.weight`"), "{err}");
        let err = to_official([
            "mask_decoder.iou_prediction_head.proj_in.weight",
            "mask_decoder.iou_prediction_head.layers.0.weight",
            "mask_decoder.iou_prediction_head.layers.1.weight",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`mask_decoder.iou_prediction_head.layers.1.weight`"),
            "{err}"
        );
    }
}
