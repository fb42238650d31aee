//! Every constant of the reference models, named. Values follow `segment_anything/build_sam.py`
//! and MobileSAM's `build_sam_vit_t`.

/// Side of the square frame the image encoder sees (`ImageEncoderViT.img_size`).
pub const IMAGE_SIZE: usize = 1024;
/// Channels of the image embedding and of every prompt token.
pub const EMBED_DIM: usize = 256;
/// Side of the image embedding grid (`IMAGE_SIZE / 16`).
pub const EMBEDDING_SIDE: usize = 64;
/// Side of the low-res mask logits (4x the embedding grid).
pub const LOW_RES_SIDE: usize = 4 * EMBEDDING_SIDE;
/// Per-channel pixel mean (RGB, 0..255).
pub const PIXEL_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
/// Per-channel pixel std (RGB, 0..255).
pub const PIXEL_STD: [f32; 3] = [58.395, 57.12, 57.375];
/// Threshold on mask logits (`Sam.mask_threshold`).
pub const MASK_THRESHOLD: f32 = 0.0;
/// Offset used by the stability score (`SamAutomaticMaskGenerator.stability_score_offset`).
pub const STABILITY_SCORE_OFFSET: f32 = 1.0;

/// `PromptEncoder` constants.
#[derive(Debug, Clone)]
pub struct PromptEncoderConfig {
    pub embed_dim: usize,
    /// Side of the image embedding grid.
    pub embedding_side: usize,
    /// Side of the input frame (points are normalised by it).
    pub input_image_size: usize,
    /// Hidden channels of the mask downscaling convs.
    pub mask_in_chans: usize,
    /// Number of learned point embeddings: positive, negative, box top-left, box bottom-right.
    pub num_point_embeddings: usize,
}

/// `TwoWayTransformer` constants.
#[derive(Debug, Clone)]
pub struct TransformerConfig {
    pub depth: usize,
    pub embedding_dim: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    /// Cross-attention works in `embedding_dim / attention_downsample_rate` channels.
    pub attention_downsample_rate: usize,
    /// `nn.LayerNorm` default eps.
    pub layer_norm_eps: f64,
    /// The keys of each block's MLP layers: SAM's `MLPBlock` (`lin1`, `lin2`), SAM 2's `MLP`
    /// (`layers.0`, `layers.1`).
    pub mlp_keys: [&'static str; 2],
}

/// `MaskDecoder` constants.
#[derive(Debug, Clone)]
pub struct MaskDecoderConfig {
    pub transformer_dim: usize,
    pub num_multimask_outputs: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
    pub transformer: TransformerConfig,
    /// SAM 2's decoder (`sam2/modeling/sam/mask_decoder.py`) where set.
    pub sam2: Option<Sam2DecoderConfig>,
}

/// What SAM 2's mask decoder adds, as `build_sam2` builds it for the SAM 2.1 checkpoints: an
/// object-score token before the IoU token, a sigmoid on the IoU head, the image encoder's
/// high-resolution features added in the upscaling, and (`apply_postprocessing`, the image
/// predictor's default) a single-mask request that falls back to the best of the three
/// candidates when the single mask is unstable.
#[derive(Debug, Clone, PartialEq)]
pub struct Sam2DecoderConfig {
    /// `dynamic_multimask_stability_delta`: the logit band of the stability score.
    pub stability_delta: f32,
    /// `dynamic_multimask_stability_thresh`: the stability a single mask needs to be kept.
    pub stability_thresh: f32,
}

impl MaskDecoderConfig {
    /// SAM's (and MobileSAM's) mask decoder.
    pub fn sam1() -> Self {
        Self {
            transformer_dim: EMBED_DIM,
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
            transformer: TransformerConfig {
                depth: 2,
                embedding_dim: EMBED_DIM,
                num_heads: 8,
                mlp_dim: 2048,
                attention_downsample_rate: 2,
                layer_norm_eps: 1e-5,
                mlp_keys: ["lin1", "lin2"],
            },
            sam2: None,
        }
    }

    /// SAM 2.1's mask decoder (`SAM2Base._build_sam_heads` with the SAM 2.1 configurations'
    /// flags and `build_sam2`'s post-processing overrides).
    pub fn sam2() -> Self {
        let mut cfg = Self::sam1();
        cfg.transformer.mlp_keys = ["layers.0", "layers.1"];
        cfg.sam2 = Some(Sam2DecoderConfig {
            stability_delta: 0.05,
            stability_thresh: 0.98,
        });
        cfg
    }

    /// Multimask candidates plus the single-mask token.
    pub fn num_mask_tokens(&self) -> usize {
        self.num_multimask_outputs + 1
    }
}

/// TinyViT (MobileSAM's image encoder) constants.
#[derive(Debug, Clone)]
pub struct TinyVitConfig {
    pub img_size: usize,
    pub in_chans: usize,
    pub embed_dims: [usize; 4],
    pub depths: [usize; 4],
    pub num_heads: [usize; 4],
    pub window_sizes: [usize; 4],
    pub mlp_ratio: usize,
    pub mbconv_expand_ratio: usize,
    pub local_conv_size: usize,
    /// Output channels of the neck (the image embedding's channels).
    pub out_chans: usize,
    /// `nn.LayerNorm` default eps inside the blocks.
    pub layer_norm_eps: f64,
    /// `BatchNorm2d` default eps (folded into the convs at load).
    pub batch_norm_eps: f64,
}

impl TinyVitConfig {
    /// `PatchMerging` keeps the resolution (stride 1) for these output widths, as the reference
    /// does to end at a 64x64 grid.
    pub const STRIDE_ONE_OUT_DIMS: [usize; 3] = [320, 448, 576];
}

/// `LayerNorm2d` eps in the prompt encoder, mask decoder and encoder necks.
pub const LAYER_NORM_2D_EPS: f64 = 1e-6;

/// The full MobileSAM / SAM configuration.
#[derive(Debug, Clone)]
pub struct SamConfig {
    pub prompt_encoder: PromptEncoderConfig,
    pub mask_decoder: MaskDecoderConfig,
    pub tiny_vit: TinyVitConfig,
}

impl SamConfig {
    /// MobileSAM: TinyViT-5M encoder with SAM's prompt encoder and mask decoder.
    pub fn mobile_sam() -> Self {
        Self {
            prompt_encoder: PromptEncoderConfig {
                embed_dim: EMBED_DIM,
                embedding_side: EMBEDDING_SIDE,
                input_image_size: IMAGE_SIZE,
                mask_in_chans: 16,
                num_point_embeddings: 4,
            },
            mask_decoder: MaskDecoderConfig::sam1(),
            tiny_vit: TinyVitConfig {
                img_size: IMAGE_SIZE,
                in_chans: 3,
                embed_dims: [64, 128, 160, 320],
                depths: [2, 2, 6, 2],
                num_heads: [2, 4, 5, 10],
                window_sizes: [7, 7, 14, 7],
                mlp_ratio: 4,
                mbconv_expand_ratio: 4,
                local_conv_size: 3,
                out_chans: EMBED_DIM,
                layer_norm_eps: 1e-5,
                batch_norm_eps: 1e-5,
            },
        }
    }
}
