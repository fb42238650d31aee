//! Follows `segment_anything/modeling/transformer.py` (TwoWayTransformer, TwoWayAttentionBlock,
//! Attention) and `MLPBlock` from `segment_anything/modeling/common.py`.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::config::TransformerConfig;
use crate::model::ops::{self, LayerNorm, Linear};
use crate::model::weights::WeightPath;
use crate::threads;

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
///
/// The cross attentions between the few prompt tokens and the 4096 image tokens also run in
/// an absorbed form ([`Attention::attend_to_image`], [`Attention::attend_from_image`]): the
/// projections on the image side are folded into the tokens' side, so no 4096-row projection
/// is computed. It is the same function, summed in another order.
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    /// `k_proj.weight` per head, `[heads, C' / heads, C]`.
    k_heads: Tensor,
    /// `v_proj.weight` per head, transposed: `[heads, C, C' / heads]`; and its bias,
    /// `[heads, 1, C' / heads]`.
    v_heads_t: Tensor,
    v_bias: Tensor,
    /// `q_proj.weight` per head, transposed: `[heads, C, C' / heads]`; and its bias,
    /// `[heads, 1, C' / heads]`.
    q_heads_t: Tensor,
    q_bias: Tensor,
    /// `out_proj.weight` transposed, per head: `[heads, C' / heads, C]`; and its bias `[C]`.
    out_heads: Tensor,
    out_bias: Tensor,
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
        let (dim, heads, per_head) = (embedding_dim, num_heads, internal_dim / num_heads);
        // `[internal, C]` weight -> `[heads, C' / heads, C]` (rows of one head together).
        let by_head = |name: &str| -> Result<Tensor> {
            Ok(vb
                .pp(name)
                .get(&[internal_dim, dim], "weight")?
                .reshape((heads, per_head, dim))?)
        };
        let bias_by_head = |name: &str| -> Result<Tensor> {
            Ok(vb
                .pp(name)
                .get(&[internal_dim], "bias")?
                .reshape((heads, 1, per_head))?)
        };
        Ok(Self {
            q_proj: Linear::new(&vb.pp("q_proj"), embedding_dim, internal_dim, true)?,
            k_proj: Linear::new(&vb.pp("k_proj"), embedding_dim, internal_dim, true)?,
            v_proj: Linear::new(&vb.pp("v_proj"), embedding_dim, internal_dim, true)?,
            out_proj: Linear::new(&vb.pp("out_proj"), internal_dim, embedding_dim, true)?,
            num_heads,
            k_heads: by_head("k_proj")?,
            v_heads_t: by_head("v_proj")?.transpose(1, 2)?.contiguous()?,
            v_bias: bias_by_head("v_proj")?,
            q_heads_t: by_head("q_proj")?.transpose(1, 2)?.contiguous()?,
            q_bias: bias_by_head("q_proj")?,
            out_heads: vb
                .pp("out_proj")
                .get(&[dim, internal_dim], "weight")?
                .t()?
                .contiguous()?
                .reshape((heads, per_head, dim))?,
            out_bias: vb.pp("out_proj").get(&[dim], "bias")?,
        })
    }

    /// Channels per head after projection.
    fn per_head(&self) -> Result<usize> {
        Ok(self.k_heads.dim(1)?)
    }

    /// Tokens attending to the image: `forward(q, k, v)` with `q` `[B, Nq, C]` the few tokens
    /// and `k` (image + positional encoding), `v` (image) `[B, N, C]`.
    ///
    /// Absorbed, when the tokens are fewer than the channels per head: the logits of head `h`
    /// are `(q_h Wk_h) k^T` (plus `q_h . bk_h`, the same for every key, which the softmax
    /// cancels) and its output `(A_h v) Wv_h^T + bv_h` (each row of `A_h` sums to 1): two
    /// `[heads * Nq, N] x C` products instead of two `N x C x C'` projections.
    pub fn attend_to_image(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, nq, _) = q.dims3()?;
        let (heads, per_head) = (self.num_heads, self.per_head()?);
        if nq >= per_head {
            return self.forward(q, k, v);
        }
        let q = self
            .project_q(q)?
            .reshape((b, heads, nq, per_head))?
            .broadcast_matmul(&self.k_heads)? // B x heads x Nq x C
            .reshape((b, heads * nq, ()))?;
        let attn = (threads::matmul(&q, &k.t()?)? / (per_head as f64).sqrt())?; // B x heads*Nq x N
        let attn = ops::softmax_last(&attn)?;
        let out = threads::matmul(&attn, v)? // B x heads*Nq x C
            .reshape((b, heads, nq, ()))?
            .broadcast_matmul(&self.v_heads_t)?
            .broadcast_add(&self.v_bias)? // B x heads x Nq x C'/heads
            .reshape((b * heads, nq, per_head))?;
        self.out_proj.forward(&self.recombine_heads(&out, b)?)
    }

    /// The image attending to tokens: `forward(q, k, v)` with `q` `[B, N, C]` the image (plus
    /// positional encoding) and `k`, `v` `[B, Nt, C]` the few tokens. `q_heads`, when given,
    /// is `project_q(q)` done beforehand (once per image).
    ///
    /// Absorbed, when the tokens are fewer than the channels per head: the logits of head `h`
    /// are `q (Wq_h^T k_h^T) + bq_h k_h^T` and the output `sum_h A_h (v_h Wo_h^T) + bo`: two
    /// `N x C x (heads * Nt)` products instead of two `N x C x C'` projections.
    pub fn attend_from_image(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        q_heads: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, n, _) = q.dims3()?;
        let nt = k.dim(1)?;
        let (heads, per_head) = (self.num_heads, self.per_head()?);
        if nt >= per_head {
            return match q_heads {
                Some(q_heads) => self.attend(q_heads, &self.project_k(k)?, &self.project_v(v)?, b),
                None => self.forward(q, k, v),
            };
        }
        let k = self.project_k(k)?.reshape((b, heads, nt, per_head))?;
        let scale = 1.0 / (per_head as f64).sqrt();
        let attn = match q_heads {
            Some(q_heads) => {
                // B*heads x N x Nt -> B x N x heads x Nt
                let attn = (q_heads.matmul(&k.reshape((b * heads, nt, per_head))?.t()?)? * scale)?;
                ops::softmax_last(&attn)?
                    .reshape((b, heads, n, nt))?
                    .transpose(1, 2)?
                    .contiguous()?
            }
            None => {
                let k_t = k.transpose(2, 3)?; // B x heads x C'/heads x Nt
                let m = self
                    .q_heads_t
                    .broadcast_matmul(&k_t)? // B x heads x C x Nt
                    .permute((0, 2, 1, 3))?
                    .contiguous()?
                    .reshape((b, (), heads * nt))?;
                let bias = self
                    .q_bias
                    .broadcast_matmul(&k_t)? // B x heads x 1 x Nt
                    .reshape((b, 1, heads * nt))?;
                let attn = (threads::matmul(q, &m)?.broadcast_add(&bias)? * scale)?; // B x N x heads*Nt
                ops::softmax_last(&attn.reshape((b, n, heads, nt))?)?
            }
        };
        let values = self
            .project_v(v)?
            .reshape((b, heads, nt, per_head))?
            .broadcast_matmul(&self.out_heads)? // B x heads x Nt x C
            .reshape((b, heads * nt, ()))?;
        Ok(
            threads::matmul(&attn.reshape((b, n, heads * nt))?, &values)?
                .broadcast_add(&self.out_bias)?,
        )
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
        let attn = threads::matmul(q, &k.t()?)?; // (B * N_heads) x N_tokens x N_tokens
        let attn = (attn / (c_per_head as f64).sqrt())?;
        let attn = ops::softmax_last(&attn)?;

        // Get output
        let out = threads::matmul(&attn, v)?;
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
                let out = self
                    .cross_attn_token_to_image
                    .attend_to_image(&q, &k, keys)?;
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
        let attn_out = self.cross_attn_image_to_token.attend_from_image(
            &k,
            &q,
            &queries,
            side.map(|side| &side.image_to_token_q),
        )?;
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
        let attn_out = self
            .final_attn_token_to_image
            .attend_to_image(&q, &k, &keys)?;
        let queries = (queries + attn_out)?;
        let queries = self.norm_final_attn.forward(&queries)?;

        Ok((queries, keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::max_abs_diff;
    use crate::model::weights::Weights;
    use candle_core::Device;

    /// Max |a - b| relative to max |b|.
    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs_diff(a, b) / max_abs_diff(b, &b.zeros_like().unwrap())
    }

    /// The absorbed cross attentions equal the reference's `forward`, in both directions,
    /// with and without the image's queries projected beforehand, for token counts below the
    /// channels per head (absorbed) and at or above it (the plain path), batch 2.
    #[test]
    fn absorbed_cross_attention_matches_forward() {
        let dev = Device::Cpu;
        let (dim, heads, rate) = (32, 4, 2); // 16 internal channels, 4 per head
        let internal = dim / rate;
        let randn = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let mut tensors = Vec::new();
        for (name, (out, inp)) in [
            ("q_proj", (internal, dim)),
            ("k_proj", (internal, dim)),
            ("v_proj", (internal, dim)),
            ("out_proj", (dim, internal)),
        ] {
            // Scaled as a trained layer's (std 1 / sqrt(fan in)), so the softmax is not saturated.
            let w = (randn(&[out, inp]) / (inp as f64).sqrt()).unwrap();
            tensors.push((format!("{name}.weight"), w));
            tensors.push((format!("{name}.bias"), randn(&[out])));
        }
        let weights = Weights::from_tensors(tensors).unwrap();
        let attn = Attention::new(&weights.pp(""), dim, heads, rate).unwrap();
        let image = randn(&[2, 50, dim]);
        let image_pe = randn(&[2, 50, dim]);
        for tokens in [1, 3, 4, 7] {
            let t = randn(&[2, tokens, dim]);
            let t_pe = randn(&[2, tokens, dim]);
            let expected = attn.forward(&t, &image_pe, &image).unwrap();
            let got = attn.attend_to_image(&t, &image_pe, &image).unwrap();
            let d = max_rel_diff(&got, &expected);
            assert!(d < 1e-6, "to image, {tokens} tokens: {d}");

            let expected = attn.forward(&image_pe, &t_pe, &t).unwrap();
            let got = attn.attend_from_image(&image_pe, &t_pe, &t, None).unwrap();
            let d = max_rel_diff(&got, &expected);
            assert!(d < 1e-6, "from image, {tokens} tokens: {d}");
            let q = attn.project_q(&image_pe).unwrap();
            let got = attn
                .attend_from_image(&image_pe, &t_pe, &t, Some(&q))
                .unwrap();
            let d = max_rel_diff(&got, &expected);
            assert!(d < 1e-6, "from image, queries given, {tokens} tokens: {d}");
        }
    }
}
