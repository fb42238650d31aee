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
        self.attend(
            &self.project_q(q)?,
            &self.project_k(k)?,
            &self.project_v(v)?,
            b,
        )
    }

    /// The query projection, split into heads: `[B, N, C]` -> `[B * heads, N, C' / heads]`.
    pub fn project_q(&self, x: &Tensor) -> Result<Tensor> {
        self.separate_heads(&self.q_proj.forward(x)?)
    }

    /// The key projection, split into heads.
    pub fn project_k(&self, x: &Tensor) -> Result<Tensor> {
        self.separate_heads(&self.k_proj.forward(x)?)
    }

    /// The value projection, split into heads.
    pub fn project_v(&self, x: &Tensor) -> Result<Tensor> {
        self.separate_heads(&self.v_proj.forward(x)?)
    }

    /// Attention of projected heads (from `project_*`) and the output projection, for a
    /// batch of `b`: `forward` with its projections done beforehand (e.g. once per image).
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, b: usize) -> Result<Tensor> {
        let c_per_head = q.dim(2)?;
        // k.t() is a strided view that the batched GEMM reads as is, without a copy.
        let attn = q.matmul(&k.t()?)?; // (B * N_heads) x N_tokens x N_tokens
        let attn = (attn / (c_per_head as f64).sqrt())?;
        let attn = ops::softmax_last(&attn)?;

        // Get output
        let out = attn.matmul(v)?;
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

    /// The work of this block that depends on the image alone (its keys at the input, when
    /// the dense prompt is the no-mask embedding): `keys` `[1, N, C]`, `key_pe` `[1, N, C]`.
    pub fn image_side(&self, keys: &Tensor, key_pe: &Tensor) -> Result<ImageSide> {
        let keys_pe = keys.broadcast_add(key_pe)?;
        Ok(ImageSide {
            token_to_image_k: self.cross_attn_token_to_image.project_k(&keys_pe)?,
            token_to_image_v: self.cross_attn_token_to_image.project_v(keys)?,
            image_to_token_q: self.cross_attn_image_to_token.project_q(&keys_pe)?,
            keys: keys.clone(),
            key_pe: key_pe.clone(),
            keys_pe,
        })
    }

    /// Returns the updated `(queries, keys)`. With `side` (from `image_side` on these same
    /// `keys` and `key_pe`, batch 1) the image-only projections are taken from it.
    pub fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
        side: Option<&ImageSide>,
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
        let b = queries.dim(0)?;
        let (k, attn_out) = match side {
            Some(side) => {
                let attn = &self.cross_attn_token_to_image;
                let out = attn.attend(
                    &attn.project_q(&q)?,
                    &side.token_to_image_k,
                    &side.token_to_image_v,
                    b,
                )?;
                (side.keys_pe.clone(), out)
            }
            None => {
                let k = keys.broadcast_add(key_pe)?;
                let out = self.cross_attn_token_to_image.forward(&q, &k, keys)?;
                (k, out)
            }
        };
        let queries = (queries + attn_out)?;
        let queries = self.norm2.forward(&queries)?;

        // MLP block
        let mlp_out = self.mlp.forward(&queries)?;
        let queries = (queries + mlp_out)?;
        let queries = self.norm3.forward(&queries)?;

        // Cross attention block, image embedding attending to tokens
        let q = (&queries + query_pe)?;
        let attn_out = match side {
            Some(side) => {
                let attn = &self.cross_attn_image_to_token;
                attn.attend(
                    &side.image_to_token_q,
                    &attn.project_k(&q)?,
                    &attn.project_v(&queries)?,
                    b,
                )?
            }
            None => self.cross_attn_image_to_token.forward(&k, &q, &queries)?,
        };
        let keys = (keys + attn_out)?;
        let keys = self.norm4.forward(&keys)?;

        Ok((queries, keys))
    }
}

/// The first block's image-only work, done once per image: the image tokens, their positional
/// encoding (in token layout) and the two summed, the token-to-image attention's keys and
/// values and the image-to-token attention's queries, already split into heads.
#[derive(Debug, Clone)]
pub struct ImageSide {
    keys: Tensor,
    key_pe: Tensor,
    keys_pe: Tensor,
    token_to_image_k: Tensor,
    token_to_image_v: Tensor,
    image_to_token_q: Tensor,
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

    /// `[B, C, h, w]` -> `[B, h * w, C]`, the token layout of the image side.
    fn tokens(x: &Tensor) -> Result<Tensor> {
        Ok(x.flatten_from(2)?.transpose(1, 2)?.contiguous()?)
    }

    /// The first block's image-only work for `image_embedding` `[1, C, h, w]` (the image plus
    /// the no-mask embedding) and `image_pe` `[1, C, h, w]`, to pass to `forward` for every
    /// prompt on this image.
    pub fn image_side(&self, image_embedding: &Tensor, image_pe: &Tensor) -> Result<ImageSide> {
        let first = self
            .layers
            .first()
            .ok_or_else(|| Error::invalid("the transformer has no layers"))?;
        first.image_side(&Self::tokens(image_embedding)?, &Self::tokens(image_pe)?)
    }

    /// `image_embedding` `[B, C, h, w]`, `image_pe` `[B or 1, C, h, w]` (broadcast over the
    /// batch), `point_embedding` `[B, N_points, C]`. With `side` (from `image_side` on the same
    /// inputs; batch 1) the first block's image-only work is not done again.
    /// Returns the processed point embedding `[B, N_points, C]` and image embedding
    /// `[B, h * w, C]`.
    pub fn forward(
        &self,
        image_embedding: &Tensor,
        image_pe: &Tensor,
        point_embedding: &Tensor,
        side: Option<&ImageSide>,
    ) -> Result<(Tensor, Tensor)> {
        // BxCxHxW -> BxHWxC == B x N_image_tokens x C (from the image side when given)
        let (mut keys, image_pe) = match side {
            Some(side) => (side.keys.clone(), side.key_pe.clone()),
            None => (Self::tokens(image_embedding)?, Self::tokens(image_pe)?),
        };

        // Prepare queries
        let mut queries = point_embedding.clone();

        // Apply transformer blocks and final layernorm
        for (i, layer) in self.layers.iter().enumerate() {
            let side = if i == 0 { side } else { None };
            (queries, keys) = layer.forward(&queries, &keys, point_embedding, &image_pe, side)?;
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
