//! SAM's two-way transformer and mask decoder on the GPU engine, following
//! `segment_anything/modeling/{transformer,mask_decoder,prompt_encoder}.py` as the CPU port in
//! `src/model/` does (same keys, same order of operations). The image side runs channel-last
//! (`[B, HW, C]` tokens), as the transformer consumes it.

use crate::error::Result;
use crate::gpu::kernels::attention::attention;
use crate::gpu::kernels::conv::{conv2d, conv_transpose2x2, Conv2dOpts};
use crate::gpu::kernels::elementwise::{binary, Binary};
use crate::gpu::kernels::layout::{permute, slice};
use crate::gpu::kernels::matmul::{matmul, MatmulOpts};
use crate::gpu::kernels::norm::layer_norm_2d;
use crate::gpu::kernels::Activation;
use crate::gpu::model::layers::{upload, upload_gemm, LayerNorm, Linear};
use crate::gpu::{GpuContext, GpuTensor, Recorder};
use crate::model::config::{
    MaskDecoderConfig, PromptEncoderConfig, TransformerConfig, LAYER_NORM_2D_EPS,
};
use crate::model::weights::WeightPath;

fn add(rec: &mut Recorder, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
    binary(rec, a, b, Binary::Add)
}

/// `Attention`: projections to `internal_dim = dim / downsample_rate`, heads, output projection.
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    internal_dim: usize,
}

impl Attention {
    fn new(
        ctx: &GpuContext,
        vb: &WeightPath,
        dim: usize,
        num_heads: usize,
        downsample_rate: usize,
    ) -> Result<Self> {
        let internal_dim = dim / downsample_rate;
        Ok(Self {
            q_proj: Linear::new(ctx, &vb.pp("q_proj"), dim, internal_dim)?,
            k_proj: Linear::new(ctx, &vb.pp("k_proj"), dim, internal_dim)?,
            v_proj: Linear::new(ctx, &vb.pp("v_proj"), dim, internal_dim)?,
            out_proj: Linear::new(ctx, &vb.pp("out_proj"), internal_dim, dim)?,
            num_heads,
            internal_dim,
        })
    }

    /// `[B, N, internal]` -> `[B, heads, N, internal / heads]`.
    fn separate_heads(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        let (b, n) = (x.dim(0), x.dim(1));
        let x = x.reshape(&[b, n, self.num_heads, self.internal_dim / self.num_heads])?;
        permute(rec, &x, &[0, 2, 1, 3])
    }

    fn forward(
        &self,
        rec: &mut Recorder,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
    ) -> Result<GpuTensor> {
        let (k, v) = self.project_kv(rec, k, v)?;
        self.forward_projected(rec, q, &k, &v)
    }

    /// Input projections of keys and values, separated into heads.
    fn project_kv(
        &self,
        rec: &mut Recorder,
        k: &GpuTensor,
        v: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let k = self.k_proj.forward(rec, k, Activation::None)?;
        let v = self.v_proj.forward(rec, v, Activation::None)?;
        Ok((self.separate_heads(rec, &k)?, self.separate_heads(rec, &v)?))
    }

    /// The attention given keys and values from [`Attention::project_kv`].
    fn forward_projected(
        &self,
        rec: &mut Recorder,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
    ) -> Result<GpuTensor> {
        // Input projections
        let q = self.q_proj.forward(rec, q, Activation::None)?;
        // Separate into heads
        let q = self.separate_heads(rec, &q)?;
        // Attention
        let head_dim = self.internal_dim / self.num_heads;
        let out = attention(rec, &q, k, v, None, 1.0 / (head_dim as f32).sqrt())?;
        // Get output: recombine heads
        let (b, n) = (out.dim(0), out.dim(2));
        let out = permute(rec, &out, &[0, 2, 1, 3])?.reshape(&[b, n, self.internal_dim])?;
        self.out_proj.forward(rec, &out, Activation::None)
    }
}

/// `MLPBlock`: lin1, ReLU, lin2.
struct MlpBlock {
    lin1: Linear,
    lin2: Linear,
}

impl MlpBlock {
    fn forward(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        let h = self.lin1.forward(rec, x, Activation::Relu)?;
        self.lin2.forward(rec, &h, Activation::None)
    }
}

/// `TwoWayAttentionBlock`.
struct TwoWayAttentionBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_attn_token_to_image: Attention,
    norm2: LayerNorm,
    mlp: MlpBlock,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    fn new(
        ctx: &GpuContext,
        cfg: &TransformerConfig,
        vb: &WeightPath,
        skip_first_layer_pe: bool,
    ) -> Result<Self> {
        let dim = cfg.embedding_dim;
        let eps = cfg.layer_norm_eps;
        let rate = cfg.attention_downsample_rate;
        Ok(Self {
            self_attn: Attention::new(
                ctx,
                &vb.pp("self_attn"),
                dim,
                cfg.num_heads,
                /* downsample */ 1,
            )?,
            norm1: LayerNorm::new(ctx, &vb.pp("norm1"), dim, eps)?,
            cross_attn_token_to_image: Attention::new(
                ctx,
                &vb.pp("cross_attn_token_to_image"),
                dim,
                cfg.num_heads,
                rate,
            )?,
            norm2: LayerNorm::new(ctx, &vb.pp("norm2"), dim, eps)?,
            mlp: MlpBlock {
                lin1: Linear::new(ctx, &vb.pp("mlp").pp("lin1"), dim, cfg.mlp_dim)?,
                lin2: Linear::new(ctx, &vb.pp("mlp").pp("lin2"), cfg.mlp_dim, dim)?,
            },
            norm3: LayerNorm::new(ctx, &vb.pp("norm3"), dim, eps)?,
            norm4: LayerNorm::new(ctx, &vb.pp("norm4"), dim, eps)?,
            cross_attn_image_to_token: Attention::new(
                ctx,
                &vb.pp("cross_attn_image_to_token"),
                dim,
                cfg.num_heads,
                rate,
            )?,
            skip_first_layer_pe,
        })
    }

    /// `image_side`: this block's image-only work done beforehand (first layer, no mask input).
    fn forward(
        &self,
        rec: &mut Recorder,
        queries: &GpuTensor,
        keys: &GpuTensor,
        query_pe: &GpuTensor,
        key_pe: &GpuTensor,
        image_side: Option<&ImageSide>,
    ) -> Result<(GpuTensor, GpuTensor)> {
        // Self attention block
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(rec, queries, queries, queries)?
        } else {
            let q = add(rec, queries, query_pe)?;
            let attn_out = self.self_attn.forward(rec, &q, &q, queries)?;
            add(rec, queries, &attn_out)?
        };
        let queries = self.norm1.forward(rec, &queries)?;

        // Cross attention block, tokens attending to image embedding
        let q = add(rec, &queries, query_pe)?;
        let (k, attn_out) = match image_side {
            Some(side) => {
                let attn = &self.cross_attn_token_to_image;
                let out = attn.forward_projected(rec, &q, &side.k_heads, &side.v_heads)?;
                (side.src_pe.clone(), out)
            }
            None => {
                let k = add(rec, keys, key_pe)?;
                let out = self.cross_attn_token_to_image.forward(rec, &q, &k, keys)?;
                (k, out)
            }
        };
        let queries = add(rec, &queries, &attn_out)?;
        let queries = self.norm2.forward(rec, &queries)?;

        // MLP block
        let mlp_out = self.mlp.forward(rec, &queries)?;
        let queries = add(rec, &queries, &mlp_out)?;
        let queries = self.norm3.forward(rec, &queries)?;

        // Cross attention block, image embedding attending to tokens
        let q = add(rec, &queries, query_pe)?;
        let attn_out = self
            .cross_attn_image_to_token
            .forward(rec, &k, &q, &queries)?;
        let keys = add(rec, keys, &attn_out)?;
        let keys = self.norm4.forward(rec, &keys)?;
        Ok((queries, keys))
    }
}

/// `TwoWayTransformer`.
struct TwoWayTransformer {
    layers: Vec<TwoWayAttentionBlock>,
    final_attn_token_to_image: Attention,
    norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    fn new(ctx: &GpuContext, cfg: &TransformerConfig, vb: &WeightPath) -> Result<Self> {
        let layers = (0..cfg.depth)
            .map(|i| TwoWayAttentionBlock::new(ctx, cfg, &vb.pp("layers").pp(i), i == 0))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::new(
                ctx,
                &vb.pp("final_attn_token_to_image"),
                cfg.embedding_dim,
                cfg.num_heads,
                cfg.attention_downsample_rate,
            )?,
            norm_final_attn: LayerNorm::new(
                ctx,
                &vb.pp("norm_final_attn"),
                cfg.embedding_dim,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// `image_embedding`, `image_pe`: tokens `[B, HW, C]`; `point_embedding` `[B, N, C]`;
    /// `image_side`: the first layer's image-only work, when done beforehand.
    fn forward(
        &self,
        rec: &mut Recorder,
        image_embedding: &GpuTensor,
        image_pe: &GpuTensor,
        point_embedding: &GpuTensor,
        image_side: Option<&ImageSide>,
    ) -> Result<(GpuTensor, GpuTensor)> {
        // Prepare queries
        let mut queries = point_embedding.clone();
        let mut keys = image_embedding.clone();
        // Apply transformer blocks and final layernorm
        for (i, layer) in self.layers.iter().enumerate() {
            let side = if i == 0 { image_side } else { None };
            (queries, keys) =
                layer.forward(rec, &queries, &keys, point_embedding, image_pe, side)?;
        }
        // Apply the final attention layer from the points to the image
        let q = add(rec, &queries, point_embedding)?;
        let k = add(rec, &keys, image_pe)?;
        let attn_out = self.final_attn_token_to_image.forward(rec, &q, &k, &keys)?;
        let queries = add(rec, &queries, &attn_out)?;
        let queries = self.norm_final_attn.forward(rec, &queries)?;
        Ok((queries, keys))
    }
}

/// The part of a decode that depends on the image alone when there is no mask input: the image
/// tokens plus the no-mask embedding, those plus the positional encoding, and the first
/// layer's token-to-image keys and values. Computed once per image.
#[derive(Debug, Clone)]
pub(crate) struct ImageSide {
    /// `src` = image tokens + no-mask embedding, `[1, HW, C]`.
    pub src: GpuTensor,
    /// `src + pos_src`.
    pub src_pe: GpuTensor,
    /// First layer's cross-attention keys and values, in heads.
    pub k_heads: GpuTensor,
    pub v_heads: GpuTensor,
}

/// What the decoder's image side starts from.
pub(crate) enum ImageInput<'a> {
    /// `src` = image tokens + dense prompt, computed for this decode.
    Src(&'a GpuTensor),
    /// The per-image work done beforehand (no mask input).
    Cached(&'a ImageSide),
}

/// `MLP` of the mask decoder: linears with ReLU between them.
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn new(ctx: &GpuContext, vb: &WeightPath, dims: &[usize]) -> Result<Self> {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, d)| Linear::new(ctx, &vb.pp("layers").pp(i), d[0], d[1]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    fn forward(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        let last = self.layers.len() - 1;
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let act = if i < last {
                Activation::Relu
            } else {
                Activation::None
            };
            x = layer.forward(rec, &x, act)?;
        }
        Ok(x)
    }
}

/// A conv with its bias (`nn.Conv2d` / `nn.ConvTranspose2d`); the weight in the context's GEMM
/// precision.
struct Conv {
    weight: GpuTensor,
    bias: GpuTensor,
}

impl Conv {
    fn new(
        ctx: &GpuContext,
        vb: &WeightPath,
        shape: &[usize],
        out_channels: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: upload_gemm(ctx, &vb.get(shape, "weight")?)?,
            bias: upload(ctx, vb, &[out_channels], "bias")?,
        })
    }

    /// As `nn.Conv2d`, bias added.
    fn conv2d(&self, rec: &mut Recorder, x: &GpuTensor, opts: &Conv2dOpts) -> Result<GpuTensor> {
        conv2d(
            rec,
            x,
            &self.weight,
            Some(&self.bias),
            opts,
            Activation::None,
        )
    }

    /// As `nn.ConvTranspose2d(kernel 2, stride 2)`, bias added, then `act`.
    fn conv_transpose2x2(
        &self,
        rec: &mut Recorder,
        x: &GpuTensor,
        act: Activation,
    ) -> Result<GpuTensor> {
        conv_transpose2x2(rec, x, &self.weight, Some(&self.bias), act)
    }
}

/// LayerNorm2d weights.
struct Norm2d {
    weight: GpuTensor,
    bias: GpuTensor,
}

impl Norm2d {
    fn new(ctx: &GpuContext, vb: &WeightPath, channels: usize) -> Result<Self> {
        Ok(Self {
            weight: upload(ctx, vb, &[channels], "weight")?,
            bias: upload(ctx, vb, &[channels], "bias")?,
        })
    }

    /// LayerNorm2d then GELU, as every use in SAM's decoder and prompt encoder does.
    fn forward_gelu(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        layer_norm_2d(
            rec,
            x,
            &self.weight,
            &self.bias,
            LAYER_NORM_2D_EPS as f32,
            Activation::Gelu,
        )
    }
}

/// The prompt encoder's `mask_downscaling` (the dense prompt from a mask input).
pub(crate) struct MaskDownscaling {
    conv0: Conv,
    norm1: Norm2d,
    conv3: Conv,
    norm4: Norm2d,
    conv6: Conv,
}

impl MaskDownscaling {
    /// `vb` is `weights.pp("prompt_encoder").pp("mask_downscaling")`.
    pub(crate) fn new(
        ctx: &GpuContext,
        cfg: &PromptEncoderConfig,
        vb: &WeightPath,
    ) -> Result<Self> {
        let c = cfg.mask_in_chans;
        let c4 = c / 4;
        Ok(Self {
            conv0: Conv::new(ctx, &vb.pp(0), &[c4, 1, 2, 2], c4)?,
            norm1: Norm2d::new(ctx, &vb.pp(1), c4)?,
            conv3: Conv::new(ctx, &vb.pp(3), &[c, c4, 2, 2], c)?,
            norm4: Norm2d::new(ctx, &vb.pp(4), c)?,
            conv6: Conv::new(ctx, &vb.pp(6), &[cfg.embed_dim, c, 1, 1], cfg.embed_dim)?,
        })
    }

    /// `[B, 1, 256, 256]` -> `[B, C, 64, 64]`.
    pub(crate) fn forward(&self, rec: &mut Recorder, masks: &GpuTensor) -> Result<GpuTensor> {
        let k2s2 = Conv2dOpts {
            stride: 2,
            padding: 0,
            groups: 1,
        };
        let k1 = Conv2dOpts {
            stride: 1,
            padding: 0,
            groups: 1,
        };
        let x = self.conv0.conv2d(rec, masks, &k2s2)?;
        let x = self.norm1.forward_gelu(rec, &x)?;
        let x = self.conv3.conv2d(rec, &x, &k2s2)?;
        let x = self.norm4.forward_gelu(rec, &x)?;
        self.conv6.conv2d(rec, &x, &k1)
    }
}

/// `MaskDecoder` on the GPU.
pub(crate) struct MaskDecoder {
    transformer: TwoWayTransformer,
    num_mask_tokens: usize,
    upscale_conv0: Conv,
    upscale_norm1: Norm2d,
    upscale_conv3: Conv,
    output_hypernetworks_mlps: Vec<Mlp>,
    iou_prediction_head: Mlp,
    embedding_side: usize,
}

impl MaskDecoder {
    /// `vb` is `weights.pp("mask_decoder")`.
    pub(crate) fn new(
        ctx: &GpuContext,
        cfg: &MaskDecoderConfig,
        embedding_side: usize,
        vb: &WeightPath,
    ) -> Result<Self> {
        let dim = cfg.transformer_dim;
        let (c4, c8) = (dim / 4, dim / 8);
        let num_mask_tokens = cfg.num_mask_tokens();
        let up = vb.pp("output_upscaling");
        let hidden = cfg.iou_head_hidden_dim;
        let mut iou_dims = vec![dim];
        iou_dims.extend(std::iter::repeat_n(hidden, cfg.iou_head_depth - 1));
        iou_dims.push(num_mask_tokens);
        Ok(Self {
            transformer: TwoWayTransformer::new(ctx, &cfg.transformer, &vb.pp("transformer"))?,
            num_mask_tokens,
            upscale_conv0: Conv::new(ctx, &up.pp(0), &[dim, c4, 2, 2], c4)?,
            upscale_norm1: Norm2d::new(ctx, &up.pp(1), c4)?,
            upscale_conv3: Conv::new(ctx, &up.pp(3), &[c4, c8, 2, 2], c8)?,
            output_hypernetworks_mlps: (0..num_mask_tokens)
                .map(|i| {
                    Mlp::new(
                        ctx,
                        &vb.pp("output_hypernetworks_mlps").pp(i),
                        &[dim, dim, dim, c8],
                    )
                })
                .collect::<Result<Vec<_>>>()?,
            iou_prediction_head: Mlp::new(ctx, &vb.pp("iou_prediction_head"), &iou_dims)?,
            embedding_side,
        })
    }

    /// The image-only work of a decode without mask input (see [`ImageSide`]).
    pub(crate) fn image_side(
        &self,
        rec: &mut Recorder,
        src: &GpuTensor,
        pos_src: &GpuTensor,
    ) -> Result<ImageSide> {
        let src_pe = add(rec, src, pos_src)?;
        let attn = &self.transformer.layers[0].cross_attn_token_to_image;
        let (k_heads, v_heads) = attn.project_kv(rec, &src_pe, src)?;
        Ok(ImageSide {
            src: src.clone(),
            src_pe,
            k_heads,
            v_heads,
        })
    }

    /// `image`: image tokens + dense prompt (or the per-image work done beforehand);
    /// `pos_src` = dense PE tokens `[1, HW, C]`; `tokens` = output tokens + sparse prompts
    /// `[1, T, C]`. Returns low-res logits `[1, M, 256, 256]` and IoU predictions `[1, M]` for
    /// the selected masks.
    pub(crate) fn forward(
        &self,
        rec: &mut Recorder,
        image: ImageInput<'_>,
        pos_src: &GpuTensor,
        tokens: &GpuTensor,
        multimask_output: bool,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let (src, side) = match image {
            ImageInput::Src(src) => (src, None),
            ImageInput::Cached(side) => (&side.src, Some(side)),
        };
        // Run the transformer
        let (hs, src) = self.transformer.forward(rec, src, pos_src, tokens, side)?;
        let iou_token_out = slice(rec, &hs, 1, 0, 1)?;

        // Upscale mask embeddings and predict masks using the mask tokens
        let (b, hw, c) = (src.dim(0), src.dim(1), src.dim(2));
        let side = self.embedding_side;
        debug_assert_eq!(hw, side * side);
        let src = permute(rec, &src, &[0, 2, 1])?.reshape(&[b, c, side, side])?;
        let x = self
            .upscale_conv0
            .conv_transpose2x2(rec, &src, Activation::None)?;
        let x = self.upscale_norm1.forward_gelu(rec, &x)?;
        let upscaled = self
            .upscale_conv3
            .conv_transpose2x2(rec, &x, Activation::Gelu)?;
        let (uc, uh, uw) = (upscaled.dim(1), upscaled.dim(2), upscaled.dim(3));

        // Select the correct mask or masks for output: only the selected mask tokens go
        // through their hypernetwork (each mask depends on its own token alone).
        let selected = if multimask_output {
            1..self.num_mask_tokens
        } else {
            0..1
        };
        let mut hyper_in = Vec::with_capacity(selected.len());
        for i in selected.clone() {
            let token = slice(rec, &hs, 1, 1 + i, 1)?;
            hyper_in.push(self.output_hypernetworks_mlps[i].forward(rec, &token)?);
        }
        let hyper_in =
            crate::gpu::kernels::layout::concat(rec, &hyper_in.iter().collect::<Vec<_>>(), 1)?;
        let masks = matmul(
            rec,
            &hyper_in,
            &upscaled.reshape(&[b, uc, uh * uw])?,
            &MatmulOpts::default(),
        )?;
        let masks = masks.reshape(&[b, selected.len(), uh, uw])?;

        // Generate mask quality predictions
        let iou_pred = self.iou_prediction_head.forward(rec, &iou_token_out)?;
        let iou_pred = iou_pred.reshape(&[b, self.num_mask_tokens])?;
        let iou_pred = slice(rec, &iou_pred, 1, selected.start, selected.len())?;
        Ok((masks, iou_pred))
    }
}
