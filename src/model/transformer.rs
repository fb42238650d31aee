//! Follows `segment_anything/modeling/transformer.py` (TwoWayTransformer, TwoWayAttentionBlock,
//! Attention) and `MLPBlock` from `segment_anything/modeling/common.py`.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::config::TransformerConfig;
use crate::model::ops::{self, LayerNorm, Linear};
use crate::model::weights::WeightPath;

/// `common.MLPBlock`: `lin2(act(lin1(x)))`. The two-way transformer builds it with ReLU.
#[derive(Debug, Clone)]
pub struct MLPBlock {
    lin1: Linear,
    lin2: Linear,
    act: fn(&Tensor) -> Result<Tensor>,
}

impl MLPBlock {
    pub fn new(
        vb: &WeightPath,
        embedding_dim: usize,
        mlp_dim: usize,
        act: fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        Ok(Self {
            lin1: Linear::new(&vb.pp("lin1"), embedding_dim, mlp_dim, true)?,
            lin2: Linear::new(&vb.pp("lin2"), mlp_dim, embedding_dim, true)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.lin2.forward(&(self.act)(&self.lin1.forward(x)?)?)
    }
}

/// An attention layer that can downscale the size of the embedding after projection to
/// queries, keys and values (`internal_dim = embedding_dim / downsample_rate`).
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
}

impl Attention {
    pub fn new(
        vb: &WeightPath,
        embedding_dim: usize,
        num_heads: usize,
        downsample_rate: usize,
    ) -> Result<Self> {
        let internal_dim = embedding_dim / downsample_rate;
        if !internal_dim.is_multiple_of(num_heads) {
            return Err(Error::invalid(format!(
                "num_heads ({num_heads}) must divide the attention's internal dim ({internal_dim})"
            )));
        }
        Ok(Self {
            q_proj: Linear::new(&vb.pp("q_proj"), embedding_dim, internal_dim, true)?,
            k_proj: Linear::new(&vb.pp("k_proj"), embedding_dim, internal_dim, true)?,
            v_proj: Linear::new(&vb.pp("v_proj"), embedding_dim, internal_dim, true)?,
            out_proj: Linear::new(&vb.pp("out_proj"), internal_dim, embedding_dim, true)?,
            num_heads,
        })
    }

    /// `[B, N, C]` -> `[B * heads, N, C / heads]`: heads become a batch dim of the matmuls, so
    /// each attention product is one batched GEMM rather than a loop of small ones per head.
    fn separate_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let c_per_head = c / self.num_heads;
        Ok(x.reshape((b, n, self.num_heads, c_per_head))?
            .transpose(1, 2)? // B x N_heads x N_tokens x C_per_head
            .contiguous()?
            .reshape((b * self.num_heads, n, c_per_head))?)
    }

    /// `[B * heads, N, C / heads]` -> `[B, N, C]`.
    fn recombine_heads(&self, x: &Tensor, b: usize) -> Result<Tensor> {
        let (_, n_tokens, c_per_head) = x.dims3()?;
        Ok(x.reshape((b, self.num_heads, n_tokens, c_per_head))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n_tokens, self.num_heads * c_per_head))?) // B x N_tokens x C
    }

    /// `q` `[B, Nq, C]`, `k` and `v` `[B, Nk, C]` -> `[B, Nq, C]`.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let b = q.dim(0)?;
        // Input projections
        let q = self.q_proj.forward(q)?;
        let k = self.k_proj.forward(k)?;
        let v = self.v_proj.forward(v)?;

        // Separate into heads
        let q = self.separate_heads(&q)?;
        let k = self.separate_heads(&k)?;
        let v = self.separate_heads(&v)?;

        // Attention
        let c_per_head = q.dim(2)?;
        // k.t() is a strided view that the batched GEMM reads as is, without a copy.
        let attn = q.matmul(&k.t()?)?; // (B * N_heads) x N_tokens x N_tokens
        let attn = (attn / (c_per_head as f64).sqrt())?;
        let attn = ops::softmax_last(&attn)?;

        // Get output
        let out = attn.matmul(&v)?;
        let out = self.recombine_heads(&out, b)?;
        self.out_proj.forward(&out)
    }
}

/// A transformer block with four layers: (1) self-attention of sparse inputs, (2) cross
/// attention of sparse inputs to dense inputs, (3) MLP block on sparse inputs, and (4) cross
/// attention of dense inputs to sparse inputs.
#[derive(Debug, Clone)]
pub struct TwoWayAttentionBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_attn_token_to_image: Attention,
    norm2: LayerNorm,
    mlp: MLPBlock,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    pub fn new(
        cfg: &TransformerConfig,
        vb: &WeightPath,
        skip_first_layer_pe: bool,
    ) -> Result<Self> {
        let dim = cfg.embedding_dim;
        let heads = cfg.num_heads;
        let rate = cfg.attention_downsample_rate;
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            self_attn: Attention::new(&vb.pp("self_attn"), dim, heads, /* downsample */ 1)?,
            norm1: LayerNorm::new(&vb.pp("norm1"), dim, eps)?,
            cross_attn_token_to_image: Attention::new(
                &vb.pp("cross_attn_token_to_image"),
                dim,
                heads,
                rate,
            )?,
            norm2: LayerNorm::new(&vb.pp("norm2"), dim, eps)?,
            mlp: MLPBlock::new(&vb.pp("mlp"), dim, cfg.mlp_dim, ops::relu)?,
            norm3: LayerNorm::new(&vb.pp("norm3"), dim, eps)?,
            norm4: LayerNorm::new(&vb.pp("norm4"), dim, eps)?,
            cross_attn_image_to_token: Attention::new(
                &vb.pp("cross_attn_image_to_token"),
                dim,
                heads,
                rate,
            )?,
            skip_first_layer_pe,
        })
    }

    /// Returns the updated `(queries, keys)`.
    pub fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        // Self attention block
        let queries = if self.skip_first_layer_pe {
            // No residual here: the reference replaces the queries with the attention output.
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            let attn_out = self.self_attn.forward(&q, &q, queries)?;
            (queries + attn_out)?
        };
        let queries = self.norm1.forward(&queries)?;

        // Cross attention block, tokens attending to image embedding
        let q = (&queries + query_pe)?;
        // `keys + key_pe` is used again by the image-to-token attention below, where the
        // reference recomputes it from the same, unchanged keys.
        let k = keys.broadcast_add(key_pe)?;
        let attn_out = self.cross_attn_token_to_image.forward(&q, &k, keys)?;
        let queries = (queries + attn_out)?;
        let queries = self.norm2.forward(&queries)?;

        // MLP block
        let mlp_out = self.mlp.forward(&queries)?;
        let queries = (queries + mlp_out)?;
        let queries = self.norm3.forward(&queries)?;

        // Cross attention block, image embedding attending to tokens
        let q = (&queries + query_pe)?;
        let attn_out = self.cross_attn_image_to_token.forward(&k, &q, &queries)?;
        let keys = (keys + attn_out)?;
        let keys = self.norm4.forward(&keys)?;

        Ok((queries, keys))
    }
}

/// A transformer decoder that attends to an input image using queries whose positional
/// embedding is supplied.
#[derive(Debug, Clone)]
pub struct TwoWayTransformer {
    layers: Vec<TwoWayAttentionBlock>,
    final_attn_token_to_image: Attention,
    norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    /// `vb` is `weights.pp("mask_decoder").pp("transformer")`.
    pub fn new(cfg: &TransformerConfig, vb: &WeightPath) -> Result<Self> {
        let layers = (0..cfg.depth)
            .map(|i| {
                TwoWayAttentionBlock::new(cfg, &vb.pp("layers").pp(i), /* skip pe */ i == 0)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::new(
                &vb.pp("final_attn_token_to_image"),
                cfg.embedding_dim,
                cfg.num_heads,
                cfg.attention_downsample_rate,
            )?,
            norm_final_attn: LayerNorm::new(
                &vb.pp("norm_final_attn"),
                cfg.embedding_dim,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// `image_embedding` `[B, C, h, w]`, `image_pe` `[B or 1, C, h, w]` (broadcast over the
    /// batch), `point_embedding` `[B, N_points, C]`.
    /// Returns the processed point embedding `[B, N_points, C]` and image embedding
    /// `[B, h * w, C]`.
    pub fn forward(
        &self,
        image_embedding: &Tensor,
        image_pe: &Tensor,
        point_embedding: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        // BxCxHxW -> BxHWxC == B x N_image_tokens x C
        let image_embedding = image_embedding
            .flatten_from(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let image_pe = image_pe.flatten_from(2)?.transpose(1, 2)?.contiguous()?;

        // Prepare queries
        let mut queries = point_embedding.clone();
        let mut keys = image_embedding;

        // Apply transformer blocks and final layernorm
        for layer in &self.layers {
            (queries, keys) = layer.forward(&queries, &keys, point_embedding, &image_pe)?;
        }

        // Apply the final attention layer from the points to the image
        let q = (&queries + point_embedding)?;
        let k = keys.broadcast_add(&image_pe)?;
        let attn_out = self.final_attn_token_to_image.forward(&q, &k, &keys)?;
        let queries = (queries + attn_out)?;
        let queries = self.norm_final_attn.forward(&queries)?;

        Ok((queries, keys))
    }
}
