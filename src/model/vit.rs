//! SAM's ViT image encoder (ViT-B, ViT-L, ViT-H).
//! Follows `segment_anything/modeling/image_encoder.py`: one struct per Python class, weight
//! keys as in the official checkpoints under `image_encoder.`. The configuration is read from
//! the checkpoint itself ([`VitConfig::detect`]), so any encoder of this structure loads.
//!
//! Differences in form, not in result:
//! - the blocks run on tokens `[B, H*W, C]`, the reference's `[B, H, W, C]` row-major;
//! - `get_rel_pos` (its interpolation included) runs once at load, each attention keeping its
//!   `Rh`, `Rw` tables `[q, k, head_dim]`;
//! - `add_decomposed_rel_pos`'s `rel_h` and `rel_w` are two batched products that reach the
//!   attention as one tensor `[B, heads, N, kh + kw]`; the scores with them added are never
//!   held whole ([`Backend::attention_rel_pos`]);
//! - the MLP's GELU is fused into `lin1`, the window padding into the partition and the crop
//!   plus residual into the reverse;
//! - the neck is [`Neck`], shared with TinyViT.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::backend::{Activation, Backend, ConvOpts, Gemm, Param};
use crate::model::common::{LayerNorm, Linear, MLPBlock, Neck, PatchEmbed};
use crate::model::weights::WeightPath;

/// `nn.LayerNorm`'s eps in the blocks (`partial(torch.nn.LayerNorm, eps=1e-6)` in
/// `build_sam.py`).
const LAYER_NORM_EPS: f64 = 1e-6;

/// The structure of one ViT encoder. [`VitConfig::vit_b`], [`VitConfig::vit_l`] and
/// [`VitConfig::vit_h`] are `build_sam.py`'s; [`VitConfig::detect`] reads any checkpoint's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VitConfig {
    /// Side of the (square) input image: 1024.
    pub img_size: usize,
    /// Side of a patch, the patch embedding's kernel and stride: 16.
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// Hidden width of each block's MLP (`embed_dim * mlp_ratio`).
    pub mlp_dim: usize,
    /// Side of the attention windows of the blocks that are not global: 14.
    pub window_size: usize,
    /// The blocks that attend over the whole grid.
    pub global_attn_indexes: Vec<usize>,
    /// Channels of the embedding (the neck's output): 256.
    pub out_chans: usize,
    /// Rows of each block's `rel_pos_h` and `rel_pos_w`, as the checkpoint has them
    /// (`get_rel_pos` interpolates where they differ from `2 * size - 1`).
    pub rel_pos_lens: Vec<(usize, usize)>,
}

impl VitConfig {
    fn official(embed_dim: usize, depth: usize, num_heads: usize, global: [usize; 4]) -> Self {
        let (img_size, patch_size, window_size) = (1024, 16, 14);
        let grid = img_size / patch_size;
        let rel_pos_lens = (0..depth)
            .map(|i| {
                let side = if global.contains(&i) {
                    grid
                } else {
                    window_size
                };
                (2 * side - 1, 2 * side - 1)
            })
            .collect();
        Self {
            img_size,
            patch_size,
            in_chans: 3,
            embed_dim,
            depth,
            num_heads,
            mlp_dim: 4 * embed_dim,
            window_size,
            global_attn_indexes: global.to_vec(),
            out_chans: 256,
            rel_pos_lens,
        }
    }

    /// `build_sam_vit_b`.
    pub fn vit_b() -> Self {
        Self::official(768, 12, 12, [2, 5, 8, 11])
    }

    /// `build_sam_vit_l`.
    pub fn vit_l() -> Self {
        Self::official(1024, 24, 16, [5, 11, 17, 23])
    }

    /// `build_sam_vit_h`.
    pub fn vit_h() -> Self {
        Self::official(1280, 32, 16, [7, 15, 23, 31])
    }

    /// Side of the patch grid: 64.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// The name of the official configuration this is, if it is one.
    pub fn name(&self) -> Option<&'static str> {
        [
            ("ViT-B", Self::vit_b()),
            ("ViT-L", Self::vit_l()),
            ("ViT-H", Self::vit_h()),
        ]
        .into_iter()
        .find(|(_, c)| c == self)
        .map(|(n, _)| n)
    }

    /// Reads the configuration from a checkpoint's shapes, `shape_of` answering for keys
    /// under `image_encoder.`: the depth from the blocks' keys, the widths from
    /// `patch_embed.proj.weight`, `pos_embed`, `blocks.0.mlp.lin1.weight` and
    /// `neck.0.weight`, the head dim (so the number of heads) from `rel_pos_h`'s columns, and
    /// which blocks are global from the rows of their `rel_pos_h`: the blocks with the fewest
    /// are windowed (`2 * window - 1` rows), the others attend over the whole grid.
    pub fn detect(shape_of: &dyn Fn(&str) -> Option<Vec<usize>>) -> Result<Self> {
        let need = |key: &str, rank: usize| -> Result<Vec<usize>> {
            match shape_of(key) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => Err(Error::UnsupportedModel(format!(
                    "SAM ViT encoder: `image_encoder.{key}` has shape {s:?}, expected rank {rank}"
                ))),
                None => Err(Error::UnsupportedModel(format!(
                    "SAM ViT encoder: `image_encoder.{key}` is missing"
                ))),
            }
        };
        let patch = need("patch_embed.proj.weight", 4)?;
        let (embed_dim, in_chans, patch_size) = (patch[0], patch[1], patch[2]);
        if patch[3] != patch_size || patch_size == 0 {
            return Err(Error::UnsupportedModel(format!(
                "SAM ViT encoder: a {}x{} patch embedding (square patches only)",
                patch[2], patch[3]
            )));
        }
        let pos = need("pos_embed", 4)?;
        let grid = pos[1];
        if pos != [1, grid, grid, embed_dim] || grid == 0 {
            return Err(Error::UnsupportedModel(format!(
                "SAM ViT encoder: `image_encoder.pos_embed` has shape {pos:?}, expected [1, g, g, {embed_dim}]"
            )));
        }
        let depth = (0..)
            .take_while(|i| shape_of(&format!("blocks.{i}.norm1.weight")).is_some())
            .count();
        if depth == 0 {
            return Err(Error::UnsupportedModel(
                "SAM ViT encoder: no `image_encoder.blocks.0.*`".into(),
            ));
        }
        let mut rel_pos_lens = Vec::with_capacity(depth);
        let mut head_dim = None;
        for i in 0..depth {
            let h = need(&format!("blocks.{i}.attn.rel_pos_h"), 2)?;
            let w = need(&format!("blocks.{i}.attn.rel_pos_w"), 2)?;
            if h[1] != w[1] || *head_dim.get_or_insert(h[1]) != h[1] {
                return Err(Error::UnsupportedModel(format!(
                    "SAM ViT encoder: block {i}'s relative positions {h:?} and {w:?} disagree with the head dim {head_dim:?}"
                )));
            }
            rel_pos_lens.push((h[0], w[0]));
        }
        let head_dim = head_dim.unwrap_or(0);
        if head_dim == 0 || embed_dim % head_dim != 0 {
            return Err(Error::UnsupportedModel(format!(
                "SAM ViT encoder: head dim {head_dim} does not divide the width {embed_dim}"
            )));
        }
        let shortest = rel_pos_lens.iter().map(|&(h, _)| h).min().unwrap_or(0);
        let global_attn_indexes: Vec<usize> = (0..depth)
            .filter(|&i| rel_pos_lens[i].0 > shortest || shortest >= 2 * grid - 1)
            .collect();
        let window_size = if global_attn_indexes.len() == depth {
            0
        } else {
            shortest.div_ceil(2)
        };
        let lin1 = need("blocks.0.mlp.lin1.weight", 2)?;
        let neck = need("neck.0.weight", 4)?;
        if lin1[1] != embed_dim || neck[1] != embed_dim {
            return Err(Error::UnsupportedModel(format!(
                "SAM ViT encoder: the MLP's {lin1:?} or the neck's {neck:?} do not take the width {embed_dim}"
            )));
        }
        Ok(Self {
            img_size: grid * patch_size,
            patch_size,
            in_chans,
            embed_dim,
            depth,
            num_heads: embed_dim / head_dim,
            mlp_dim: lin1[0],
            window_size,
            global_attn_indexes,
            out_chans: neck[0],
            rel_pos_lens,
        })
    }
}

/// `F.interpolate(x, size=out, mode="linear")` (align_corners False) along the rows of
/// `x` `[L, C]`: `[out, C]`.
fn interpolate_rows(x: &Tensor, out: usize) -> Result<Tensor> {
    let (len, c) = x.dims2()?;
    let src: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let scale = len as f32 / out as f32;
    let mut y = vec![0f32; out * c];
    for (i, row) in y.chunks_mut(c.max(1)).enumerate() {
        let at = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (at as usize).min(len - 1);
        let i1 = (i0 + 1).min(len - 1);
        let l1 = at - i0 as f32;
        let l0 = 1.0 - l1;
        for (j, v) in row.iter_mut().enumerate() {
            *v = l0 * src[i0 * c + j] + l1 * src[i1 * c + j];
        }
    }
    Ok(Tensor::from_vec(y, (out, c), x.device())?)
}

/// `get_rel_pos(q_size, k_size, rel_pos)`: the relative-position embedding of every (query,
/// key) pair along one axis, `[q_size, k_size, C]`, `rel_pos` `[L, C]` resized to
/// `2 * max(q_size, k_size) - 1` rows first when it has another length.
pub fn get_rel_pos(q_size: usize, k_size: usize, rel_pos: &Tensor) -> Result<Tensor> {
    let max_rel_dist = 2 * q_size.max(k_size) - 1;
    let (len, c) = rel_pos.dims2()?;
    if len == 0 || q_size == 0 || k_size == 0 {
        return Err(Error::invalid(format!(
            "relative positions of {len} rows for {q_size} queries and {k_size} keys"
        )));
    }
    let resized = if len != max_rel_dist {
        interpolate_rows(rel_pos, max_rel_dist)?
    } else {
        rel_pos.clone()
    };
    // The reference's coordinates, in f32 as torch's default dtype, truncated by `.long()`.
    let q_scale = (k_size as f32 / q_size as f32).max(1.0);
    let k_scale = (q_size as f32 / k_size as f32).max(1.0);
    let mut idx = Vec::with_capacity(q_size * k_size);
    for q in 0..q_size {
        for k in 0..k_size {
            let coord = (q as f32 * q_scale - k as f32 * k_scale) + (k_size - 1) as f32 * k_scale;
            idx.push((coord as u32).min(max_rel_dist as u32 - 1));
        }
    }
    let idx = Tensor::from_vec(idx, q_size * k_size, rel_pos.device())?;
    Ok(resized
        .index_select(&idx, 0)?
        .reshape((q_size, k_size, c))?)
}

/// `Attention` with `use_rel_pos=True` over a `size` grid (a window, or the whole grid).
#[derive(Debug, Clone)]
struct Attention<B: Backend> {
    num_heads: usize,
    head_dim: usize,
    scale: f32,
    size: (usize, usize),
    qkv: Linear<B>,
    proj: Linear<B>,
    /// `get_rel_pos(h, h, rel_pos_h)`: `[h, h, head_dim]`.
    rel_h: B::Tensor,
    /// `get_rel_pos(w, w, rel_pos_w)`: `[w, w, head_dim]`.
    rel_w: B::Tensor,
}

impl<B: Backend> Attention<B> {
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        dim: usize,
        num_heads: usize,
        size: (usize, usize),
        rel_pos_lens: (usize, usize),
    ) -> Result<Self> {
        let head_dim = dim / num_heads;
        let rel_pos_h = vb.get(&[rel_pos_lens.0, head_dim], "rel_pos_h")?;
        let rel_pos_w = vb.get(&[rel_pos_lens.1, head_dim], "rel_pos_w")?;
        Ok(Self {
            num_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5) as f32,
            size,
            qkv: Linear::new(dev, &vb.pp("qkv"), dim, 3 * dim, true)?,
            proj: Linear::new(dev, &vb.pp("proj"), dim, dim, true)?,
            rel_h: B::param(dev, &get_rel_pos(size.0, size.0, &rel_pos_h)?, Param::Plain)?,
            rel_w: B::param(dev, &get_rel_pos(size.1, size.1, &rel_pos_w)?, Param::Plain)?,
        })
    }

    /// `x`: `[B, h*w, C]`, B windows (or the whole grid) of `self.size`.
    fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let (heads, hd) = (self.num_heads, self.head_dim);
        let (h, w) = self.size;
        let &[n_b, n, c] = B::dims(x) else {
            return Err(Error::invalid(format!("ViT attention of {:?}", B::dims(x))));
        };
        if n != h * w || c != heads * hd {
            return Err(Error::invalid(format!(
                "ViT attention over a {h}x{w} grid in {heads} heads of {hd} got {:?}",
                B::dims(x)
            )));
        }
        // qkv with shape (3, B, nHead, H * W, C)
        let qkv = self.qkv.forward(b, x, Activation::None)?;
        let qkv = b.reshape(&qkv, &[n_b, n, 3, heads, hd])?;
        let qkv = b.permute(&qkv, &[2, 0, 3, 1, 4])?;
        let part = |b: &mut B, i: usize| -> Result<B::Tensor> {
            let t = b.slice(&qkv, 0, i, 1)?;
            b.reshape(&t, &[n_b, heads, n, hd])
        };
        let (q, k, v) = (part(b, 0)?, part(b, 1)?, part(b, 2)?);
        // add_decomposed_rel_pos: rel_h = einsum("bhwc,hkc->bhwk", r_q, Rh), rel_w likewise
        // over the columns, with r_q the unscaled queries on their grid.
        let r_q = b.reshape(&q, &[n_b * heads, h, w, hd])?;
        let rel_h = b.matmul(&r_q, &self.rel_h, Gemm::default().trans_b())?;
        let r_q_t = b.permute(&r_q, &[0, 2, 1, 3])?;
        let rel_w = b.matmul(&r_q_t, &self.rel_w, Gemm::default().trans_b())?;
        let rel_w = b.permute(&rel_w, &[0, 2, 1, 3])?;
        let rel = b.concat(&[&rel_h, &rel_w], 3)?;
        let rel = b.reshape(&rel, &[n_b, heads, n, h + w])?;
        let o = b.attention_rel_pos(&q, &k, &v, &rel, (h, w), self.scale)?;
        // (B, nHead, N, C) -> (B, N, nHead * C)
        let o = b.permute(&o, &[0, 2, 1, 3])?;
        let o = b.reshape(&o, &[n_b, n, c])?;
        self.proj.forward(b, &o, Activation::None)
    }
}

/// `Block`: attention in windows (the grid zero-padded to a multiple of the window) or over
/// the whole grid, residual; MLP, residual.
#[derive(Debug, Clone)]
struct Block<B: Backend> {
    /// 0 for a global block.
    window_size: usize,
    norm1: LayerNorm<B>,
    attn: Attention<B>,
    norm2: LayerNorm<B>,
    mlp: MLPBlock<B>,
}

impl<B: Backend> Block<B> {
    fn new(dev: &B::Device, vb: &WeightPath, cfg: &VitConfig, i: usize) -> Result<Self> {
        let global = cfg.global_attn_indexes.contains(&i);
        let window_size = if global { 0 } else { cfg.window_size };
        let grid = cfg.grid();
        let side = if global { grid } else { window_size };
        let dim = cfg.embed_dim;
        Ok(Self {
            window_size,
            norm1: LayerNorm::new(dev, &vb.pp("norm1"), dim, LAYER_NORM_EPS)?,
            attn: Attention::new(
                dev,
                &vb.pp("attn"),
                dim,
                cfg.num_heads,
                (side, side),
                cfg.rel_pos_lens[i],
            )?,
            norm2: LayerNorm::new(dev, &vb.pp("norm2"), dim, LAYER_NORM_EPS)?,
            mlp: MLPBlock::new(dev, &vb.pp("mlp"), dim, cfg.mlp_dim, Activation::Gelu)?,
        })
    }

    /// `x`: tokens `[1, h*w, C]` of a `grid`.
    fn forward(&self, b: &mut B, x: &B::Tensor, grid: (usize, usize)) -> Result<B::Tensor> {
        let shortcut = x;
        let h = self.norm1.forward(b, x)?;
        let x = if self.window_size > 0 {
            let ws = self.window_size;
            let windows = b.window_partition(&h, grid, ws)?;
            let a = self.attn.forward(b, &windows)?;
            b.window_reverse(&a, grid, ws, Some(shortcut))?
        } else {
            let a = self.attn.forward(b, &h)?;
            b.add(shortcut, &a)?
        };
        let m = self.norm2.forward(b, &x)?;
        let m = self.mlp.forward(b, &m)?;
        b.add(&x, &m)
    }
}

/// `ImageEncoderViT` with `use_abs_pos` and `use_rel_pos`, as SAM builds it:
/// `[1, 3, 1024, 1024]` -> `[1, 256, 64, 64]`.
#[derive(Debug, Clone)]
pub struct ImageEncoderViT<B: Backend> {
    cfg: VitConfig,
    /// `patch_embed.proj`: `[C, 3, 16, 16]` and its bias.
    patch_embed: PatchEmbed<B>,
    /// `pos_embed` `[1, 64, 64, C]` as tokens `[1, 64*64, C]`.
    pos_embed: B::Tensor,
    blocks: Vec<Block<B>>,
    neck: Neck<B>,
}

impl<B: Backend> ImageEncoderViT<B> {
    /// `vb`: the weights under `image_encoder`, `cfg` read from them ([`VitConfig::detect`]).
    pub fn new(dev: &B::Device, cfg: &VitConfig, vb: &WeightPath) -> Result<Self> {
        let (c, p, grid) = (cfg.embed_dim, cfg.patch_size, cfg.grid());
        if cfg.num_heads == 0
            || c % cfg.num_heads != 0
            || cfg.rel_pos_lens.len() != cfg.depth
            || (cfg.window_size == 0 && cfg.global_attn_indexes.len() != cfg.depth)
        {
            return Err(Error::UnsupportedModel(format!(
                "SAM ViT encoder: an inconsistent configuration {cfg:?}"
            )));
        }
        let pos_embed = vb
            .get(&[1, grid, grid, c], "pos_embed")?
            .reshape((1, grid * grid, c))?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed: PatchEmbed::new(
                dev,
                &vb.pp("patch_embed"),
                (cfg.in_chans, c),
                p,
                ConvOpts::new(p, 0),
            )?,
            pos_embed: B::param(dev, &pos_embed, Param::Plain)?,
            blocks: (0..cfg.depth)
                .map(|i| Block::new(dev, &vb.pp("blocks").pp(i), cfg, i))
                .collect::<Result<_>>()?,
            neck: Neck::new(dev, &vb.pp("neck"), c, cfg.out_chans)?,
        })
    }

    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// Block `i` on tokens `[1, g*g, C]`. The encoder is [`Self::patch_embed`], every block in
    /// order, then [`Self::neck`]: run a step at a time so that a long encode can report its
    /// progress ([`crate::model::sam::ImageEncoder::record_step`]).
    pub fn block(&self, b: &mut B, x: &B::Tensor, i: usize) -> Result<B::Tensor> {
        let blk = self.blocks.get(i).ok_or_else(|| {
            Error::invalid(format!(
                "block {i} of a ViT with {} blocks",
                self.blocks.len()
            ))
        })?;
        let g = self.cfg.grid();
        blk.forward(b, x, (g, g))
    }

    /// `patch_embed` plus `pos_embed`: the image `[1, 3, 1024, 1024]` -> tokens `[1, 64*64, C]`.
    pub fn patch_embed(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let s = self.cfg.img_size;
        let &[_, c, h, w] = B::dims(x) else {
            return Err(Error::invalid(format!(
                "the ViT encoder expects [B, {}, {s}, {s}], got {:?}",
                self.cfg.in_chans,
                B::dims(x)
            )));
        };
        if c != self.cfg.in_chans || h != s || w != s {
            return Err(Error::invalid(format!(
                "the ViT encoder expects [B, {}, {s}, {s}], got {:?}",
                self.cfg.in_chans,
                B::dims(x)
            )));
        }
        let (x, _) = self.patch_embed.forward(b, x)?;
        b.add(&x, &self.pos_embed)
    }

    /// The neck on the last block's tokens: the image embedding `[1, 256, 64, 64]`.
    pub fn neck(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let g = self.cfg.grid();
        self.neck.forward(b, x, (g, g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn shapes(cfg: &VitConfig) -> std::collections::HashMap<String, Vec<usize>> {
        let c = cfg.embed_dim;
        let hd = c / cfg.num_heads;
        let g = cfg.grid();
        let mut m = std::collections::HashMap::new();
        m.insert("patch_embed.proj.weight".into(), vec![c, 3, 16, 16]);
        m.insert("pos_embed".into(), vec![1, g, g, c]);
        for i in 0..cfg.depth {
            m.insert(format!("blocks.{i}.norm1.weight"), vec![c]);
            let (lh, lw) = cfg.rel_pos_lens[i];
            m.insert(format!("blocks.{i}.attn.rel_pos_h"), vec![lh, hd]);
            m.insert(format!("blocks.{i}.attn.rel_pos_w"), vec![lw, hd]);
        }
        m.insert("blocks.0.mlp.lin1.weight".into(), vec![4 * c, c]);
        m.insert("neck.0.weight".into(), vec![256, c, 1, 1]);
        m
    }

    #[test]
    fn detection_reads_back_the_official_configurations() {
        for cfg in [VitConfig::vit_b(), VitConfig::vit_l(), VitConfig::vit_h()] {
            let m = shapes(&cfg);
            let got = VitConfig::detect(&|k| m.get(k).cloned()).unwrap();
            assert_eq!(got, cfg);
            assert!(got.name().is_some());
        }
    }

    #[test]
    fn rel_pos_gather_and_interpolation_follow_the_reference() {
        let dev = Device::Cpu;
        // Rows 0..5 of one column: relative offsets q - k + (k - 1).
        let rel = Tensor::from_vec((0..5).map(|v| v as f32).collect(), (5, 1), &dev).unwrap();
        let r = get_rel_pos(3, 3, &rel).unwrap();
        let r: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(r, vec![2.0, 1.0, 0.0, 3.0, 2.0, 1.0, 4.0, 3.0, 2.0]);
        // What PyTorch answers for F.interpolate(torch.arange(n).reshape(1, 1, n), size=out,
        // mode="linear"): 3 -> 5, and a window's 27 rows -> a global block's 127 (first 8).
        let cases: [(usize, usize, &[f32]); 2] = [
            (3, 5, &[0.0, 0.4, 1.0, 1.6, 2.0]),
            (
                27,
                127,
                &[0.0, 0.0, 0.0315, 0.2441, 0.4567, 0.6693, 0.8819, 1.0945],
            ),
        ];
        for (n, out, want) in cases {
            let rel = Tensor::arange(0f32, n as f32, &dev)
                .unwrap()
                .reshape((n, 1))
                .unwrap();
            let r: Vec<f32> = interpolate_rows(&rel, out)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(r.len(), out);
            for (a, b) in r.iter().zip(want) {
                assert!((a - b).abs() < 1e-4, "{n} -> {out}: {r:?} vs {want:?}");
            }
        }
    }
}
