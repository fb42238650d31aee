//! Follows `segment_anything/modeling/transformer.py` (TwoWayTransformer, TwoWayAttentionBlock,
//! Attention). The image side runs as tokens `[B, HW, C]`, as the reference's transformer
//! consumes it.

use crate::error::{Error, Result};
use crate::model::backend::{dims3, load, Activation, Backend, Gemm, Param};
use crate::model::common::{LayerNorm, Linear, MLPBlock};
use crate::model::config::TransformerConfig;
use crate::model::weights::WeightPath;

/// An attention layer that can downscale the size of the embedding after projection to
/// queries, keys and values (`internal_dim = embedding_dim / downsample_rate`).
///
/// The cross attentions between the few prompt tokens and the 4096 image tokens also run in
/// an absorbed form ([`Attention::attend_to_image`], [`Attention::attend_from_image`]): the
/// projections on the image side are folded into the tokens' side, so no 4096-row projection
/// is computed. It is the same function, summed in another order.
#[derive(Debug, Clone)]
pub struct Attention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    num_heads: usize,
    per_head: usize,
    /// `k_proj.weight` per head, `[heads, C' / heads, C]`.
    k_heads: B::Tensor,
    /// `v_proj.weight` per head, transposed: `[heads, C, C' / heads]`; and its bias,
    /// `[heads, 1, C' / heads]`.
    v_heads_t: B::Tensor,
    v_bias: B::Tensor,
    /// `q_proj.weight` per head, `[heads, C' / heads, C]`; and its bias, `[heads, C' / heads, 1]`.
    q_heads: B::Tensor,
    q_bias: B::Tensor,
    /// `out_proj.weight` transposed, per head: `[heads, C' / heads, C]`; and its bias `[C]`.
    out_heads: B::Tensor,
    out_bias: B::Tensor,
}

impl<B: Backend> Attention<B> {
    pub fn new(
        dev: &B::Device,
        vb: &WeightPath,
        embedding_dim: usize,
        num_heads: usize,
        downsample_rate: usize,
    ) -> Result<Self> {
        let internal_dim = embedding_dim / downsample_rate;
        if num_heads == 0 || !internal_dim.is_multiple_of(num_heads) {
            return Err(Error::invalid(format!(
                "num_heads ({num_heads}) must divide the attention's internal dim ({internal_dim})"
            )));
        }
        let (dim, heads, per_head) = (embedding_dim, num_heads, internal_dim / num_heads);
        // `[internal, C]` weight -> `[heads, C' / heads, C]` (rows of one head together).
        let by_head = |name: &str| -> Result<candle_core::Tensor> {
            Ok(vb
                .pp(name)
                .get(&[internal_dim, dim], "weight")?
                .reshape((heads, per_head, dim))?)
        };
        let bias = |name: &str| vb.pp(name).get(&[internal_dim], "bias");
        let plain = |t: candle_core::Tensor| B::param(dev, &t.contiguous()?, Param::Plain);
        Ok(Self {
            q_proj: Linear::new(dev, &vb.pp("q_proj"), embedding_dim, internal_dim, true)?,
            k_proj: Linear::new(dev, &vb.pp("k_proj"), embedding_dim, internal_dim, true)?,
            v_proj: Linear::new(dev, &vb.pp("v_proj"), embedding_dim, internal_dim, true)?,
            out_proj: Linear::new(dev, &vb.pp("out_proj"), internal_dim, embedding_dim, true)?,
            num_heads,
            per_head,
            k_heads: plain(by_head("k_proj")?)?,
            v_heads_t: plain(by_head("v_proj")?.transpose(1, 2)?)?,
            v_bias: plain(bias("v_proj")?.reshape((heads, 1, per_head))?)?,
            q_heads: plain(by_head("q_proj")?)?,
            q_bias: plain(bias("q_proj")?.reshape((heads, per_head, 1))?)?,
            out_heads: plain(
                vb.pp("out_proj")
                    .get(&[dim, internal_dim], "weight")?
                    .t()?
                    .reshape((heads, per_head, dim))?,
            )?,
            out_bias: load::<B>(dev, &vb.pp("out_proj"), &[dim], "bias", Param::Plain)?,
        })
    }

    fn scale(&self) -> f32 {
        1.0 / (self.per_head as f32).sqrt()
    }

    /// Tokens `[B, N, C']` -> heads `[B, heads, N, C' / heads]`.
    pub fn heads(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let (n_b, n, c) = dims3::<B>(x)?;
        let x = b.reshape(x, &[n_b, n, self.num_heads, c / self.num_heads])?;
        b.permute(&x, &[0, 2, 1, 3])
    }

    /// The query projection `[B, N, C]` -> `[B, N, C']` (heads side by side).
    pub fn project_q(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        self.q_proj.forward(b, x, Activation::None)
    }

    /// The key projection.
    pub fn project_k(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        self.k_proj.forward(b, x, Activation::None)
    }

    /// The value projection.
    pub fn project_v(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        self.v_proj.forward(b, x, Activation::None)
    }

    /// The query projection split into heads, `[B, heads, N, C' / heads]`: what
    /// [`Attention::attend_from_image`] takes done beforehand.
    pub fn project_q_heads(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let q = self.project_q(b, x)?;
        self.heads(b, &q)
    }

    /// `q` `[B, Nq, C]`, `k` and `v` `[B, Nk, C]` -> `[B, Nq, C]`.
    pub fn forward(
        &self,
        b: &mut B,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
    ) -> Result<B::Tensor> {
        let q = self.project_q(b, q)?;
        let k = self.project_k(b, k)?;
        let v = self.project_v(b, v)?;
        self.attend(b, &q, &k, &v)
    }

    /// Attention of projected tokens (from `project_*`) and the output projection: `forward`
    /// with its projections done beforehand (e.g. once per image).
    pub fn attend(
        &self,
        b: &mut B,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
    ) -> Result<B::Tensor> {
        let out = b.multi_head_attention(q, k, v, self.num_heads, self.scale())?;
        self.out_proj.forward(b, &out, Activation::None)
    }

    /// Tokens attending to the image: `forward(q, k, v)` with `q` `[B, Nq, C]` the few tokens
    /// and `k` (image + positional encoding), `v` (image) `[B, N, C]`.
    ///
    /// Absorbed, when the tokens are fewer than the channels per head: the logits of head `h`
    /// are `(q_h Wk_h) k^T` (plus `q_h . bk_h`, the same for every key, which the softmax
    /// cancels) and its output `(A_h v) Wv_h^T + bv_h` (each row of `A_h` sums to 1): two
    /// `[heads * Nq, N] x C` products instead of two `N x C x C'` projections. The rows of the
    /// products are (token, head) pairs, so the tokens' layout is kept throughout.
    pub fn attend_to_image(
        &self,
        b: &mut B,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
    ) -> Result<B::Tensor> {
        let (n_b, nq, c) = dims3::<B>(q)?;
        let (heads, per_head) = (self.num_heads, self.per_head);
        if nq >= per_head {
            return self.forward(b, q, k, v);
        }
        let q = self.project_q(b, q)?;
        let q = b.reshape(&q, &[n_b, nq, heads, 1, per_head])?;
        let q = b.matmul(&q, &self.k_heads, Gemm::default())?; // B x Nq x heads x 1 x C
        let q = b.reshape(&q, &[n_b, 1, nq * heads, c])?;
        let n = dims3::<B>(k)?.1;
        let k = b.reshape(k, &[n_b, 1, n, c])?;
        let v = b.reshape(v, &[n_b, 1, n, c])?;
        let out = b.attention(&q, &k, &v, None, self.scale())?; // B x 1 x Nq*heads x C
        let out = b.reshape(&out, &[n_b, nq, heads, 1, c])?;
        let out = b.matmul(&out, &self.v_heads_t, Gemm::default().bias(&self.v_bias))?;
        let out = b.reshape(&out, &[n_b, nq, heads * per_head])?;
        self.out_proj.forward(b, &out, Activation::None)
    }

    /// The image attending to tokens: `forward(q, k, v)` with `q` `[B, N, C]` the image (plus
    /// positional encoding) and `k`, `v` `[B, Nt, C]` the few tokens. `q_heads`, when given,
    /// is `project_q_heads(q)` done beforehand (once per image).
    ///
    /// Absorbed, when the tokens are fewer than the channels per head: the logits of head `h`
    /// are `q (Wq_h^T k_h^T) + bq_h k_h^T` and the output `sum_h A_h (v_h Wo_h^T) + bo`: two
    /// `N x C x (heads * Nt)` products instead of two `N x C x C'` projections.
    pub fn attend_from_image(
        &self,
        b: &mut B,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
        q_heads: Option<&B::Tensor>,
    ) -> Result<B::Tensor> {
        let (n_b, n, c) = dims3::<B>(q)?;
        let nt = dims3::<B>(k)?.1;
        let (heads, per_head) = (self.num_heads, self.per_head);
        let scale = self.scale();
        if nt >= per_head {
            let k = self.project_k(b, k)?;
            let v = self.project_v(b, v)?;
            return match q_heads {
                Some(q_heads) => {
                    let (k, v) = (self.heads(b, &k)?, self.heads(b, &v)?);
                    let out = b.attention(q_heads, &k, &v, None, scale)?;
                    let out = b.permute(&out, &[0, 2, 1, 3])?;
                    let out = b.reshape(&out, &[n_b, n, heads * per_head])?;
                    self.out_proj.forward(b, &out, Activation::None)
                }
                None => {
                    let q = self.project_q(b, q)?;
                    self.attend(b, &q, &k, &v)
                }
            };
        }
        let k = self.project_k(b, k)?;
        let k = self.heads(b, &k)?; // B x heads x Nt x C'/heads
        let attn = match q_heads {
            Some(q_heads) => {
                // B x heads x N x Nt -> B x N x heads x Nt
                let gemm = Gemm::default().trans_b().alpha(scale);
                let logits = b.matmul(q_heads, &k, gemm)?;
                let attn = b.softmax(&logits)?;
                b.permute(&attn, &[0, 2, 1, 3])?
            }
            None => {
                // Rows (head, token) of (Wq_h^T k_h^T)^T and of bq_h k_h^T, scaled.
                let m = b.matmul(&k, &self.q_heads, Gemm::default().alpha(scale))?;
                let m = b.reshape(&m, &[n_b, heads * nt, c])?;
                let bias = b.matmul(&k, &self.q_bias, Gemm::default().alpha(scale))?;
                let bias = b.reshape(&bias, &[n_b, 1, heads * nt])?;
                let logits = b.matmul(q, &m, Gemm::default().trans_b().bias(&bias))?;
                let logits = b.reshape(&logits, &[n_b, n, heads, nt])?;
                b.softmax(&logits)?
            }
        };
        let attn = b.reshape(&attn, &[n_b, n, heads * nt])?;
        let v = self.project_v(b, v)?;
        let v = self.heads(b, &v)?;
        let values = b.matmul(&v, &self.out_heads, Gemm::default())?; // B x heads x Nt x C
        let values = b.reshape(&values, &[n_b, heads * nt, c])?;
        b.matmul(&attn, &values, Gemm::default().bias(&self.out_bias))
    }
}

/// A transformer block with four layers: (1) self-attention of sparse inputs, (2) cross
/// attention of sparse inputs to dense inputs, (3) MLP block on sparse inputs, and (4) cross
/// attention of dense inputs to sparse inputs.
#[derive(Debug, Clone)]
pub struct TwoWayAttentionBlock<B: Backend> {
    self_attn: Attention<B>,
    norm1: LayerNorm<B>,
    cross_attn_token_to_image: Attention<B>,
    norm2: LayerNorm<B>,
    mlp: MLPBlock<B>,
    norm3: LayerNorm<B>,
    norm4: LayerNorm<B>,
    cross_attn_image_to_token: Attention<B>,
    skip_first_layer_pe: bool,
}

impl<B: Backend> TwoWayAttentionBlock<B> {
    pub fn new(
        dev: &B::Device,
        cfg: &TransformerConfig,
        vb: &WeightPath,
        skip_first_layer_pe: bool,
    ) -> Result<Self> {
        let dim = cfg.embedding_dim;
        let heads = cfg.num_heads;
        let rate = cfg.attention_downsample_rate;
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            self_attn: Attention::new(
                dev,
                &vb.pp("self_attn"),
                dim,
                heads,
                /* downsample */ 1,
            )?,
            norm1: LayerNorm::new(dev, &vb.pp("norm1"), dim, eps)?,
            cross_attn_token_to_image: Attention::new(
                dev,
                &vb.pp("cross_attn_token_to_image"),
                dim,
                heads,
                rate,
            )?,
            norm2: LayerNorm::new(dev, &vb.pp("norm2"), dim, eps)?,
            mlp: MLPBlock::with_keys(
                dev,
                &vb.pp("mlp"),
                cfg.mlp_keys,
                dim,
                cfg.mlp_dim,
                Activation::Relu,
            )?,
            norm3: LayerNorm::new(dev, &vb.pp("norm3"), dim, eps)?,
            norm4: LayerNorm::new(dev, &vb.pp("norm4"), dim, eps)?,
            cross_attn_image_to_token: Attention::new(
                dev,
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
    pub fn image_side(
        &self,
        b: &mut B,
        keys: &B::Tensor,
        key_pe: &B::Tensor,
    ) -> Result<ImageSide<B>> {
        let keys_pe = b.add(keys, key_pe)?;
        let attn = &self.cross_attn_token_to_image;
        let k = attn.project_k(b, &keys_pe)?;
        let v = attn.project_v(b, keys)?;
        Ok(ImageSide {
            // In heads: read as they lie by every decode's attention.
            token_to_image_k: attn.heads(b, &k)?,
            token_to_image_v: attn.heads(b, &v)?,
            image_to_token_q: self
                .cross_attn_image_to_token
                .project_q_heads(b, &keys_pe)?,
            keys: keys.clone(),
            keys_pe,
        })
    }

    /// Returns the updated `(queries, keys)`. With `side` (from `image_side` on these same
    /// `keys` and `key_pe`, batch 1) the image-only projections are taken from it.
    pub fn forward(
        &self,
        b: &mut B,
        queries: &B::Tensor,
        keys: &B::Tensor,
        query_pe: &B::Tensor,
        key_pe: &B::Tensor,
        side: Option<&ImageSide<B>>,
    ) -> Result<(B::Tensor, B::Tensor)> {
        // Self attention block
        let queries = if self.skip_first_layer_pe {
            // No residual here: the reference replaces the queries with the attention output.
            self.self_attn.forward(b, queries, queries, queries)?
        } else {
            let q = b.add(queries, query_pe)?;
            let attn_out = self.self_attn.forward(b, &q, &q, queries)?;
            b.add(queries, &attn_out)?
        };
        let queries = self.norm1.forward(b, &queries)?;

        // Cross attention block, tokens attending to image embedding
        let q = b.add(&queries, query_pe)?;
        // `keys + key_pe` is used again by the image-to-token attention below, where the
        // reference recomputes it from the same, unchanged keys.
        let (k, attn_out) = match side {
            Some(side) => {
                let attn = &self.cross_attn_token_to_image;
                let q = attn.project_q(b, &q)?;
                let out = attn.attend(b, &q, &side.token_to_image_k, &side.token_to_image_v)?;
                (side.keys_pe.clone(), out)
            }
            None => {
                let k = b.add(keys, key_pe)?;
                let out = self
                    .cross_attn_token_to_image
                    .attend_to_image(b, &q, &k, keys)?;
                (k, out)
            }
        };
        let queries = b.add(&queries, &attn_out)?;
        let queries = self.norm2.forward(b, &queries)?;

        // MLP block
        let mlp_out = self.mlp.forward(b, &queries)?;
        let queries = b.add(&queries, &mlp_out)?;
        let queries = self.norm3.forward(b, &queries)?;

        // Cross attention block, image embedding attending to tokens
        let q = b.add(&queries, query_pe)?;
        let attn_out = self.cross_attn_image_to_token.attend_from_image(
            b,
            &k,
            &q,
            &queries,
            side.map(|side| &side.image_to_token_q),
        )?;
        let keys = b.add(keys, &attn_out)?;
        let keys = self.norm4.forward(b, &keys)?;

        Ok((queries, keys))
    }
}

/// The first block's image-only work, done once per image: the image tokens and those plus
/// their positional encoding, the token-to-image attention's keys and values and the
/// image-to-token attention's queries, split into heads.
#[derive(Debug, Clone)]
pub struct ImageSide<B: Backend> {
    keys: B::Tensor,
    keys_pe: B::Tensor,
    token_to_image_k: B::Tensor,
    token_to_image_v: B::Tensor,
    image_to_token_q: B::Tensor,
}

impl<B: Backend> ImageSide<B> {
    /// The image tokens it was computed from.
    pub fn keys(&self) -> &B::Tensor {
        &self.keys
    }
}

/// A transformer decoder that attends to an input image using queries whose positional
/// embedding is supplied.
#[derive(Debug, Clone)]
pub struct TwoWayTransformer<B: Backend> {
    layers: Vec<TwoWayAttentionBlock<B>>,
    final_attn_token_to_image: Attention<B>,
    norm_final_attn: LayerNorm<B>,
}

impl<B: Backend> TwoWayTransformer<B> {
    /// `vb` is `weights.pp("mask_decoder").pp("transformer")`.
    pub fn new(dev: &B::Device, cfg: &TransformerConfig, vb: &WeightPath) -> Result<Self> {
        let layers = (0..cfg.depth)
            .map(|i| {
                TwoWayAttentionBlock::new(
                    dev,
                    cfg,
                    &vb.pp("layers").pp(i),
                    /* skip pe */ i == 0,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        if layers.is_empty() {
            return Err(Error::invalid("the transformer has no layers"));
        }
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::new(
                dev,
                &vb.pp("final_attn_token_to_image"),
                cfg.embedding_dim,
                cfg.num_heads,
                cfg.attention_downsample_rate,
            )?,
            norm_final_attn: LayerNorm::new(
                dev,
                &vb.pp("norm_final_attn"),
                cfg.embedding_dim,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// The first block's image-only work for `image_embedding` tokens `[1, HW, C]` (the image
    /// plus the no-mask embedding) and `image_pe` tokens `[1, HW, C]`, to pass to `forward`
    /// for every prompt on this image.
    pub fn image_side(
        &self,
        b: &mut B,
        image_embedding: &B::Tensor,
        image_pe: &B::Tensor,
    ) -> Result<ImageSide<B>> {
        self.layers[0].image_side(b, image_embedding, image_pe)
    }

    /// `image_embedding` tokens `[B, HW, C]`, `image_pe` tokens `[1, HW, C]` (broadcast over
    /// the batch), `point_embedding` `[B, N_points, C]`. With `side` (from `image_side` on the
    /// same inputs; batch 1) the first block's image-only work is not done again.
    /// Returns the processed point embedding `[B, N_points, C]` and image embedding
    /// `[B, HW, C]`.
    pub fn forward(
        &self,
        b: &mut B,
        image_embedding: &B::Tensor,
        image_pe: &B::Tensor,
        point_embedding: &B::Tensor,
        side: Option<&ImageSide<B>>,
    ) -> Result<(B::Tensor, B::Tensor)> {
        // Prepare queries
        let mut queries = point_embedding.clone();
        let mut keys = image_embedding.clone();

        // Apply transformer blocks and final layernorm
        for (i, layer) in self.layers.iter().enumerate() {
            let side = if i == 0 { side } else { None };
            (queries, keys) = layer.forward(b, &queries, &keys, point_embedding, image_pe, side)?;
        }

        // Apply the final attention layer from the points to the image
        let q = b.add(&queries, point_embedding)?;
        let k = b.add(&keys, image_pe)?;
        let attn_out = self
            .final_attn_token_to_image
            .attend_to_image(b, &q, &k, &keys)?;
        let queries = b.add(&queries, &attn_out)?;
        let queries = self.norm_final_attn.forward(b, &queries)?;

        Ok((queries, keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::Cpu;
    use crate::model::test_util::max_abs_diff;
    use crate::model::weights::Weights;
    use candle_core::{Device, Tensor};

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
        let attn = Attention::<Cpu>::new(&(), &weights.pp(""), dim, heads, rate).unwrap();
        let b = &mut Cpu;
        let image = randn(&[2, 50, dim]);
        let image_pe = randn(&[2, 50, dim]);
        for tokens in [1, 3, 4, 7] {
            let t = randn(&[2, tokens, dim]);
            let t_pe = randn(&[2, tokens, dim]);
            let expected = attn.forward(b, &t, &image_pe, &image).unwrap();
            let got = attn.attend_to_image(b, &t, &image_pe, &image).unwrap();
            let d = max_rel_diff(&got, &expected);
            assert!(d < 1e-6, "to image, {tokens} tokens: {d}");

            let expected = attn.forward(b, &image_pe, &t_pe, &t).unwrap();
            let got = attn
                .attend_from_image(b, &image_pe, &t_pe, &t, None)
                .unwrap();
            let d = max_rel_diff(&got, &expected);
            assert!(d < 1e-6, "from image, {tokens} tokens: {d}");
            let q = attn.project_q_heads(b, &image_pe).unwrap();
            let got = attn
                .attend_from_image(b, &image_pe, &t_pe, &t, Some(&q))
                .unwrap();
            let d = max_rel_diff(&got, &expected);
            assert!(d < 1e-6, "from image, queries given, {tokens} tokens: {d}");
        }
    }
}
