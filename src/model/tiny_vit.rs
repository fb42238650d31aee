//! TinyViT-5M, MobileSAM's image encoder.
//! Follows `mobile_sam/modeling/tiny_vit_sam.py` (MobileSAM's copy of TinyViT): one struct per
//! Python class, weight keys as in the checkpoint under `image_encoder.`.
//!
//! Differences in form, not in result:
//! - every `Conv2d_BN` is folded into one conv with bias at load, as the reference's `fuse()`;
//! - the attention bias table `attention_biases[:, attention_bias_idxs]` is gathered once at
//!   load, as the reference does in `train(False)` (`self.ab`);
//! - conv stages run NCHW; attention stages run on tokens `[B, H*W, C]`, as the reference;
//! - a conv's bias, GELU and residual are fused into the conv, an `Mlp`'s GELU into `fc1`, the
//!   window padding into the partition and the crop plus residual into the reverse;
//! - the neck is [`Neck`], shared with SAM's ViT (its 1x1 conv a linear layer on the tokens);
//! - the classifier (`head`, `norm_head`) is not loaded: `forward` never used it.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::backend::{Activation, Backend, ConvOpts, Param};
use crate::model::common::{to_nchw, to_tokens, LayerNorm, Linear, Neck};
use crate::model::config::TinyVitConfig;
use crate::model::conv::conv_out_size;
use crate::model::weights::WeightPath;

/// `PatchEmbed`: two 3x3 convs of stride 2 (padding 1), so the grid is a quarter of the image.
const PATCH_EMBED_KERNEL: usize = 3;
const PATCH_EMBED_STRIDE: usize = 2;
/// The depthwise convs of `MBConv` and `PatchMerging` are 3x3 in the reference (fixed there,
/// unlike the blocks' `local_conv_size`).
const DEPTHWISE_KERNEL: usize = 3;
/// `PatchMerging` halves the grid unless its `out_dim` is in `STRIDE_ONE_OUT_DIMS`.
const PATCH_MERGING_STRIDE: usize = 2;

/// Padding that keeps the grid size for an odd kernel (`ks // 2`).
fn same_padding(kernel: usize) -> usize {
    kernel / 2
}

/// The folded weight `[out, in_per_group, k, k]` and bias `[out]` of the `Conv2d_BN` at `vb`
fn fold_conv2d_bn(
    vb: &WeightPath,
    out_chans: usize,
    in_per_group: usize,
    k: usize,
    bn_eps: f64,
) -> Result<(Tensor, Tensor)> {
    let c = vb.pp("c");
    let bn = vb.pp("bn");
    let w = c.get(&[out_chans, in_per_group, k, k], "weight")?;
    let gamma = bn.get(&[out_chans], "weight")?;
    let beta = bn.get(&[out_chans], "bias")?;
    let mean = bn.get(&[out_chans], "running_mean")?;
    let var = bn.get(&[out_chans], "running_var")?;

    // w = bn.weight / (bn.running_var + bn.eps)**0.5
    let scale = (gamma / (var + bn_eps)?.sqrt()?)?;
    let weight = w.broadcast_mul(&scale.reshape((out_chans, 1, 1, 1))?)?;
    // b = bn.bias - bn.running_mean * bn.weight / (bn.running_var + bn.eps)**0.5
    let bias = (beta - (mean * &scale)?)?;
    Ok((weight, bias))
}

/// `Conv2d_BN`: `c` (conv, no bias) then `bn` (BatchNorm2d in eval mode), folded at load into
/// one conv with `w' = w * gamma / sqrt(var + eps)` and `b' = beta - mean * gamma / sqrt(var + eps)`.
#[derive(Debug, Clone)]
struct Conv2dBN<B: Backend> {
    weight: B::Tensor,
    bias: B::Tensor,
    opts: ConvOpts,
}

impl<B: Backend> Conv2dBN<B> {
    /// `Conv2d_BN(in_chans, out_chans, k, stride, padding, groups)`: dense (groups 1) or
    /// depthwise (groups = channels).
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        (in_chans, out_chans): (usize, usize),
        k: usize,
        opts: ConvOpts,
        bn_eps: f64,
    ) -> Result<Self> {
        let groups = opts.groups;
        let depthwise = groups > 1 && groups == in_chans && groups == out_chans;
        if groups != 1 && !depthwise {
            return Err(Error::UnsupportedModel(format!(
                "`{}`: grouped conv {in_chans}->{out_chans} with {groups} groups (only dense and depthwise are implemented)",
                vb.key("c")
            )));
        }
        let (weight, bias) = fold_conv2d_bn(vb, out_chans, in_chans / groups, k, bn_eps)?;
        let use_ = if depthwise {
            Param::Depthwise
        } else {
            Param::Conv
        };
        Ok(Self {
            weight: B::param(dev, &weight, use_)?,
            bias: B::param(dev, &bias, Param::Plain)?,
            opts,
        })
    }

    /// A 1x1 `Conv2d_BN(a, b)`.
    fn pointwise(
        dev: &B::Device,
        vb: &WeightPath,
        chans: (usize, usize),
        bn_eps: f64,
    ) -> Result<Self> {
        Self::new(dev, vb, chans, 1, ConvOpts::new(1, 0), bn_eps)
    }

    /// A depthwise `Conv2d_BN(c, c, k, stride, k // 2, groups=c)`.
    fn depthwise(
        dev: &B::Device,
        vb: &WeightPath,
        c: usize,
        k: usize,
        stride: usize,
        bn_eps: f64,
    ) -> Result<Self> {
        let opts = ConvOpts::new(stride, same_padding(k)).groups(c);
        Self::new(dev, vb, (c, c), k, opts, bn_eps)
    }

    /// `x`: `[B, C, H, W]` -> `act(conv(x) (+ residual))`.
    fn forward(
        &self,
        b: &mut B,
        x: &B::Tensor,
        act: Activation,
        residual: Option<&B::Tensor>,
    ) -> Result<B::Tensor> {
        b.conv2d(x, &self.weight, Some(&self.bias), self.opts, act, residual)
    }
}

/// `PatchEmbed`: `seq` = Conv2d_BN(in, n/2, 3, 2, 1), GELU, Conv2d_BN(n/2, n, 3, 2, 1).
#[derive(Debug, Clone)]
struct PatchEmbed<B: Backend> {
    seq_0: Conv2dBN<B>,
    seq_2: Conv2dBN<B>,
}

impl<B: Backend> PatchEmbed<B> {
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        in_chans: usize,
        embed_dim: usize,
        bn_eps: f64,
    ) -> Result<Self> {
        let n = embed_dim;
        let k = PATCH_EMBED_KERNEL;
        let opts = ConvOpts::new(PATCH_EMBED_STRIDE, same_padding(k));
        let seq = vb.pp("seq");
        Ok(Self {
            seq_0: Conv2dBN::new(dev, &seq.pp(0), (in_chans, n / 2), k, opts, bn_eps)?,
            seq_2: Conv2dBN::new(dev, &seq.pp(2), (n / 2, n), k, opts, bn_eps)?,
        })
    }

    /// Grid side after the two strided convs.
    fn patches_resolution(img_size: usize) -> usize {
        let (k, s) = (PATCH_EMBED_KERNEL, PATCH_EMBED_STRIDE);
        let p = same_padding(k);
        conv_out_size(conv_out_size(img_size, k, s, p), k, s, p)
    }

    fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        // seq.0, seq.1 (GELU)
        let x = self.seq_0.forward(b, x, Activation::Gelu, None)?;
        self.seq_2.forward(b, &x, Activation::None, None)
    }
}

/// `MBConv`: 1x1 expand, 3x3 depthwise, 1x1 project, residual, each conv with BN, GELU between.
#[derive(Debug, Clone)]
struct MBConv<B: Backend> {
    conv1: Conv2dBN<B>,
    conv2: Conv2dBN<B>,
    conv3: Conv2dBN<B>,
}

impl<B: Backend> MBConv<B> {
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        dim: usize,
        expand_ratio: usize,
        bn_eps: f64,
    ) -> Result<Self> {
        let hidden = dim * expand_ratio;
        Ok(Self {
            conv1: Conv2dBN::pointwise(dev, &vb.pp("conv1"), (dim, hidden), bn_eps)?,
            conv2: Conv2dBN::depthwise(dev, &vb.pp("conv2"), hidden, DEPTHWISE_KERNEL, 1, bn_eps)?,
            conv3: Conv2dBN::pointwise(dev, &vb.pp("conv3"), (hidden, dim), bn_eps)?,
        })
    }

    /// `x`: `[B, C, H, W]`.
    fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let shortcut = x;
        // conv1, act1
        let h = self.conv1.forward(b, x, Activation::Gelu, None)?;
        // conv2, act2
        let h = self.conv2.forward(b, &h, Activation::Gelu, None)?;
        // conv3, x += shortcut, act3
        self.conv3.forward(b, &h, Activation::Gelu, Some(shortcut))
    }
}

/// `PatchMerging`: 1x1 conv, GELU, 3x3 depthwise conv (stride 2, or 1 for the widths in
/// `STRIDE_ONE_OUT_DIMS`), GELU, 1x1 conv; returns tokens `[B, L, out_dim]`.
#[derive(Debug, Clone)]
struct PatchMerging<B: Backend> {
    /// `(H, W)` of token inputs.
    input_resolution: (usize, usize),
    conv1: Conv2dBN<B>,
    conv2: Conv2dBN<B>,
    conv3: Conv2dBN<B>,
}

impl<B: Backend> PatchMerging<B> {
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        input_resolution: usize,
        dim: usize,
        out_dim: usize,
        bn_eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            input_resolution: (input_resolution, input_resolution),
            conv1: Conv2dBN::pointwise(dev, &vb.pp("conv1"), (dim, out_dim), bn_eps)?,
            conv2: Conv2dBN::depthwise(
                dev,
                &vb.pp("conv2"),
                out_dim,
                DEPTHWISE_KERNEL,
                Self::stride(out_dim),
                bn_eps,
            )?,
            conv3: Conv2dBN::pointwise(dev, &vb.pp("conv3"), (out_dim, out_dim), bn_eps)?,
        })
    }

    fn stride(out_dim: usize) -> usize {
        if TinyVitConfig::STRIDE_ONE_OUT_DIMS.contains(&out_dim) {
            1
        } else {
            PATCH_MERGING_STRIDE
        }
    }

    /// Grid side after merging a grid of side `input`.
    fn output_resolution(input: usize, out_dim: usize) -> usize {
        let k = DEPTHWISE_KERNEL;
        conv_out_size(input, k, Self::stride(out_dim), same_padding(k))
    }

    /// `x`: `[B, C, H, W]` or tokens `[B, H*W, C]` -> tokens `[B, H'*W', out_dim]`.
    fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let x = if B::dims(x).len() == 3 {
            to_nchw(b, x, self.input_resolution)?
        } else {
            x.clone()
        };
        // conv1, act
        let x = self.conv1.forward(b, &x, Activation::Gelu, None)?;
        // conv2, act
        let x = self.conv2.forward(b, &x, Activation::Gelu, None)?;
        let x = self.conv3.forward(b, &x, Activation::None, None)?;
        to_tokens(b, &x)
    }
}

/// `Mlp`: LayerNorm, fc1, GELU (fused), fc2 (dropout is 0).
#[derive(Debug, Clone)]
struct Mlp<B: Backend> {
    norm: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        in_features: usize,
        hidden_features: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(dev, &vb.pp("norm"), in_features, eps)?,
            fc1: Linear::new(dev, &vb.pp("fc1"), in_features, hidden_features, true)?,
            fc2: Linear::new(dev, &vb.pp("fc2"), hidden_features, in_features, true)?,
        })
    }

    fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let x = self.norm.forward(b, x)?;
        let x = self.fc1.forward(b, &x, Activation::Gelu)?;
        self.fc2.forward(b, &x, Activation::None)
    }
}

/// `attention_bias_idxs` as the reference builds it: for every pair of points of the window
/// (row-major), the index of their offset `(|dy|, |dx|)`, numbering offsets in the order they
/// are first met. Returns the table `[N * N]` and the number of offsets.
pub(crate) fn attention_bias_idxs((h, w): (usize, usize)) -> (Vec<u32>, usize) {
    let points: Vec<(usize, usize)> = (0..h).flat_map(|y| (0..w).map(move |x| (y, x))).collect();
    // offsets lie in [0, h) x [0, w): a dense table stands in for the reference's dict.
    let mut attention_offsets: Vec<Option<u32>> = vec![None; h * w];
    let mut num_offsets = 0u32;
    let mut idxs = Vec::with_capacity(points.len() * points.len());
    for p1 in &points {
        for p2 in &points {
            let offset = p1.0.abs_diff(p2.0) * w + p1.1.abs_diff(p2.1);
            let idx = *attention_offsets[offset].get_or_insert_with(|| {
                num_offsets += 1;
                num_offsets - 1
            });
            idxs.push(idx);
        }
    }
    (idxs, num_offsets as usize)
}

/// `Attention` with `attn_ratio = 1` (as `TinyViTBlock` builds it: values as wide as keys):
/// LayerNorm, fused qkv, multi-head attention with a learned bias per head and window offset,
/// output projection.
#[derive(Debug, Clone)]
struct Attention<B: Backend> {
    num_heads: usize,
    key_dim: usize,
    scale: f32,
    norm: LayerNorm<B>,
    qkv: Linear<B>,
    proj: Linear<B>,
    /// `attention_biases[:, attention_bias_idxs]`: `[num_heads, N, N]`.
    ab: B::Tensor,
}

impl<B: Backend> Attention<B> {
    /// `Attention(dim, key_dim = dim / num_heads, num_heads, attn_ratio=1, resolution=(ws, ws))`.
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        dim: usize,
        num_heads: usize,
        window_size: usize,
        eps: f64,
    ) -> Result<Self> {
        let key_dim = dim / num_heads;
        let dh = key_dim * num_heads;
        let (idxs, num_offsets) = attention_bias_idxs((window_size, window_size));
        let n = window_size * window_size;
        let attention_biases = vb.get(&[num_heads, num_offsets], "attention_biases")?;
        let idxs = candle_core::Tensor::from_vec(idxs, n * n, attention_biases.device())?;
        let ab = attention_biases
            .index_select(&idxs, 1)?
            .reshape((num_heads, n, n))?;
        Ok(Self {
            num_heads,
            key_dim,
            scale: (key_dim as f64).powf(-0.5) as f32,
            norm: LayerNorm::new(dev, &vb.pp("norm"), dim, eps)?,
            qkv: Linear::new(dev, &vb.pp("qkv"), dim, 3 * dh, true)?,
            proj: Linear::new(dev, &vb.pp("proj"), dh, dim, true)?,
            ab: B::param(dev, &ab, Param::Plain)?,
        })
    }

    /// `x`: `[B, N, C]` (B windows of N tokens).
    fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let &[n_b, n, _] = B::dims(x) else {
            return Err(Error::invalid(format!(
                "TinyViT attention of {:?}",
                B::dims(x)
            )));
        };
        let (heads, kd) = (self.num_heads, self.key_dim);
        // Normalization
        let x = self.norm.forward(b, x)?;
        let qkv = self.qkv.forward(b, &x, Activation::None)?;
        // (B, N, heads, [q k v]) -> (B, heads, N, [q k v])
        let qkv = b.reshape(&qkv, &[n_b, n, heads, 3 * kd])?;
        let qkv = b.permute(&qkv, &[0, 2, 1, 3])?;
        let q = b.slice(&qkv, 3, 0, kd)?;
        let k = b.slice(&qkv, 3, kd, kd)?;
        let v = b.slice(&qkv, 3, 2 * kd, kd)?;
        let o = b.attention(&q, &k, &v, Some(&self.ab), self.scale)?;
        // (B, heads, N, d) -> (B, N, heads * d)
        let o = b.permute(&o, &[0, 2, 1, 3])?;
        let o = b.reshape(&o, &[n_b, n, heads * kd])?;
        self.proj.forward(b, &o, Activation::None)
    }
}

/// `TinyViTBlock`: windowed attention (the grid padded to a multiple of the window), residual;
/// a depthwise `local_conv`; MLP, residual.
#[derive(Debug, Clone)]
struct TinyViTBlock<B: Backend> {
    input_resolution: (usize, usize),
    window_size: usize,
    attn: Attention<B>,
    local_conv: Conv2dBN<B>,
    mlp: Mlp<B>,
}

impl<B: Backend> TinyViTBlock<B> {
    /// `TinyViTBlock(dim, input_resolution, num_heads, window_size)`.
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        (dim, resolution): (usize, usize),
        num_heads: usize,
        window_size: usize,
        cfg: &TinyVitConfig,
    ) -> Result<Self> {
        if window_size == 0 || num_heads == 0 || dim % num_heads != 0 {
            return Err(Error::invalid(format!(
                "TinyViT block `{}`: dim {dim} must split into {num_heads} heads and the window ({window_size}) be non-empty",
                vb.key("")
            )));
        }
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            input_resolution: (resolution, resolution),
            window_size,
            attn: Attention::new(dev, &vb.pp("attn"), dim, num_heads, window_size, eps)?,
            local_conv: Conv2dBN::depthwise(
                dev,
                &vb.pp("local_conv"),
                dim,
                cfg.local_conv_size,
                1,
                cfg.batch_norm_eps,
            )?,
            mlp: Mlp::new(dev, &vb.pp("mlp"), dim, dim * cfg.mlp_ratio, eps)?,
        })
    }

    /// `x`: tokens `[B, H*W, C]`.
    fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let (h, w) = self.input_resolution;
        let ws = self.window_size;
        let dims = B::dims(x);
        if dims.len() != 3 || dims[1] != h * w {
            return Err(Error::invalid(format!(
                "TinyViT block: input feature has wrong size ({dims:?} for a {h}x{w} grid)"
            )));
        }
        // x = res_x + attn(x), windowed: padding in the partition, crop + residual in the
        // reverse.
        let x = if h == ws && w == ws {
            let a = self.attn.forward(b, x)?;
            b.add(x, &a)?
        } else {
            let windows = b.window_partition(x, (h, w), ws)?;
            let a = self.attn.forward(b, &windows)?;
            b.window_reverse(&a, (h, w), ws, Some(x))?
        };
        let x = to_nchw(b, &x, (h, w))?;
        let x = self.local_conv.forward(b, &x, Activation::None, None)?;
        let x = to_tokens(b, &x)?;
        let mlp = self.mlp.forward(b, &x)?;
        b.add(&x, &mlp)
    }
}

/// A stage's blocks: `layers.0` is a `ConvLayer` (MBConvs), the rest `BasicLayer`s (TinyViT
/// blocks).
#[derive(Debug, Clone)]
enum Blocks<B: Backend> {
    Conv(Vec<MBConv<B>>),
    Attention(Vec<TinyViTBlock<B>>),
}

/// `ConvLayer` / `BasicLayer`: the blocks, then an optional `PatchMerging`.
#[derive(Debug, Clone)]
struct Stage<B: Backend> {
    blocks: Blocks<B>,
    downsample: Option<PatchMerging<B>>,
}

impl<B: Backend> Stage<B> {
    /// `x`: `[B, C, H, W]` (the conv stage) or tokens `[B, L, C]`; tokens `[B, L', out_dim]`
    /// after a downsample.
    fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let mut x = x.clone();
        match &self.blocks {
            Blocks::Conv(blocks) => {
                for blk in blocks {
                    x = blk.forward(b, &x)?;
                }
            }
            Blocks::Attention(blocks) => {
                for blk in blocks {
                    x = blk.forward(b, &x)?;
                }
            }
        }
        match &self.downsample {
            Some(d) => d.forward(b, &x),
            None => Ok(x),
        }
    }
}

/// `TinyViT` with MobileSAM's neck: `[1, 3, 1024, 1024]` -> `[1, 256, 64, 64]`.
#[derive(Debug, Clone)]
pub struct TinyViT<B: Backend> {
    img_size: usize,
    in_chans: usize,
    patch_embed: PatchEmbed<B>,
    layers: Vec<Stage<B>>,
    /// Side of the last stage's grid (the reference hard-codes 64 in `view(B, 64, 64, C)`).
    out_resolution: usize,
    neck: Neck<B>,
}

impl<B: Backend> TinyViT<B> {
    /// `vb`: the weights under `image_encoder` (`weights.pp("image_encoder")`).
    pub fn new(dev: &B::Device, cfg: &TinyVitConfig, vb: &WeightPath) -> Result<Self> {
        let embed_dims = cfg.embed_dims;
        let num_layers = cfg.depths.len();
        let patch_embed = PatchEmbed::new(
            dev,
            &vb.pp("patch_embed"),
            cfg.in_chans,
            embed_dims[0],
            cfg.batch_norm_eps,
        )?;
        // build layers
        let mut resolution = PatchEmbed::<B>::patches_resolution(cfg.img_size);
        let mut layers = Vec::with_capacity(num_layers);
        for i_layer in 0..num_layers {
            let dim = embed_dims[i_layer];
            let vb_layer = vb.pp("layers").pp(i_layer);
            let vb_blocks = vb_layer.pp("blocks");
            let blocks = if i_layer == 0 {
                Blocks::Conv(
                    (0..cfg.depths[i_layer])
                        .map(|i| {
                            MBConv::new(
                                dev,
                                &vb_blocks.pp(i),
                                dim,
                                cfg.mbconv_expand_ratio,
                                cfg.batch_norm_eps,
                            )
                        })
                        .collect::<Result<_>>()?,
                )
            } else {
                Blocks::Attention(
                    (0..cfg.depths[i_layer])
                        .map(|i| {
                            TinyViTBlock::new(
                                dev,
                                &vb_blocks.pp(i),
                                (dim, resolution),
                                cfg.num_heads[i_layer],
                                cfg.window_sizes[i_layer],
                                cfg,
                            )
                        })
                        .collect::<Result<_>>()?,
                )
            };
            // patch merging layer
            let downsample = if i_layer < num_layers - 1 {
                let out_dim = embed_dims[i_layer + 1];
                let d = PatchMerging::new(
                    dev,
                    &vb_layer.pp("downsample"),
                    resolution,
                    dim,
                    out_dim,
                    cfg.batch_norm_eps,
                )?;
                resolution = PatchMerging::<B>::output_resolution(resolution, out_dim);
                Some(d)
            } else {
                None
            };
            layers.push(Stage { blocks, downsample });
        }
        Ok(Self {
            img_size: cfg.img_size,
            in_chans: cfg.in_chans,
            patch_embed,
            layers,
            out_resolution: resolution,
            neck: Neck::new(
                dev,
                &vb.pp("neck"),
                embed_dims[num_layers - 1],
                cfg.out_chans,
            )?,
        })
    }

    /// `x`: the preprocessed image `[B, 3, 1024, 1024]` -> the image embedding `[B, 256, 64, 64]`.
    pub fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let s = self.img_size;
        let bad = || {
            Error::invalid(format!(
                "TinyViT expects [B, {}, {s}, {s}], got {:?}",
                self.in_chans,
                B::dims(x)
            ))
        };
        let &[_, c, h, w] = B::dims(x) else {
            return Err(bad());
        };
        if c != self.in_chans || h != s || w != s {
            return Err(bad());
        }
        // x: (N, C, H, W)
        let mut x = self.patch_embed.forward(b, x)?;
        for layer in &self.layers {
            x = layer.forward(b, &x)?;
        }
        let side = self.out_resolution;
        self.neck.forward(b, &x, (side, side))
    }

    /// Side of the embedding grid (64).
    pub fn out_resolution(&self) -> usize {
        self.out_resolution
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_table_matches_the_reference_construction() {
        // Window 2x2: points (0,0),(0,1),(1,0),(1,1); offsets met in the order
        // (0,0)->0, (0,1)->1, (1,0)->2, (1,1)->3.
        let (idxs, n) = attention_bias_idxs((2, 2));
        assert_eq!(n, 4);
        assert_eq!(idxs, vec![0, 1, 2, 3, 1, 0, 3, 2, 2, 3, 0, 1, 3, 2, 1, 0]);
        let (idxs, n) = attention_bias_idxs((7, 7));
        assert_eq!((idxs.len(), n), (49 * 49, 49));
    }

    #[test]
    fn stage_resolutions_follow_the_reference() {
        // patches_resolution // 2**(i-1 if i == 3 else i) for a 1024 image: 256, 128, 64, 64.
        let r0 = PatchEmbed::<crate::model::backend::Cpu>::patches_resolution(1024);
        let r1 = PatchMerging::<crate::model::backend::Cpu>::output_resolution(r0, 128);
        let r2 = PatchMerging::<crate::model::backend::Cpu>::output_resolution(r1, 160);
        let r3 = PatchMerging::<crate::model::backend::Cpu>::output_resolution(r2, 320);
        assert_eq!((r0, r1, r2, r3), (256, 128, 64, 64));
    }
}
