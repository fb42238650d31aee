//! TinyViT-5M, MobileSAM's image encoder, on the GPU engine. Mirrors the CPU port in
//! `src/model/tiny_vit.rs` (one struct per reference class, same weight keys); the
//! `Conv2d_BN` folding and the attention bias index table come from the CPU port itself.
//!
//! Differences in form, not in result:
//! - conv stages run NCHW; attention stages run on tokens `[B, H*W, C]`, as the reference;
//! - a conv's bias, GELU and residual are fused into the conv, an `Mlp`'s GELU into `fc1`, the
//!   window padding into the partition and the crop plus residual into the reverse;
//! - the neck's 1x1 conv runs as a `linear` on the tokens and its first `LayerNorm2d` as a
//!   `LayerNorm` over their channels (the same normalisation), so only one transpose to NCHW
//!   is needed, before the 3x3 conv.

use crate::error::{Error, Result};
use crate::gpu::kernels::attention::attention;
use crate::gpu::kernels::conv::{conv2d, conv2d_residual, Conv2dOpts};
use crate::gpu::kernels::elementwise::{binary, Binary};
use crate::gpu::kernels::layout::{permute, slice, window_partition, window_reverse};
use crate::gpu::kernels::matmul::linear;
use crate::gpu::kernels::norm::layer_norm_2d;
use crate::gpu::kernels::Activation;
use crate::gpu::model::layers::{upload, upload_gemm, LayerNorm, Linear};
use crate::gpu::{GpuContext, GpuTensor, Recorder};
use crate::model::config::{TinyVitConfig, LAYER_NORM_2D_EPS};
use crate::model::conv::conv_out_size;
use crate::model::tiny_vit::{attention_bias_idxs, fold_conv2d_bn};
use crate::model::weights::WeightPath;

/// `PatchEmbed`: two 3x3 convs of stride 2, padding 1.
const PATCH_EMBED_KERNEL: usize = 3;
const PATCH_EMBED_STRIDE: usize = 2;
/// The depthwise convs of `MBConv` and `PatchMerging` are 3x3.
const DEPTHWISE_KERNEL: usize = 3;
/// `PatchMerging` halves the grid unless its `out_dim` is in `STRIDE_ONE_OUT_DIMS`.
const PATCH_MERGING_STRIDE: usize = 2;
/// The neck's second conv is 3x3 with padding 1.
const NECK_KERNEL: usize = 3;

/// `NCHW [B, C, H, W]` -> tokens `[B, H*W, C]`.
fn to_tokens(rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
    let (b, c, hw) = (x.dim(0), x.dim(1), x.dim(2) * x.dim(3));
    permute(rec, &x.reshape(&[b, c, hw])?, &[0, 2, 1])
}

/// Tokens `[B, h*w, C]` -> `NCHW [B, C, h, w]`.
fn to_nchw(rec: &mut Recorder, x: &GpuTensor, (h, w): (usize, usize)) -> Result<GpuTensor> {
    let (b, c) = (x.dim(0), x.dim(2));
    permute(rec, x, &[0, 2, 1])?.reshape(&[b, c, h, w])
}

/// `Conv2d_BN` folded at load (by the CPU port's [`fold_conv2d_bn`]): a conv with bias.
struct Conv2dBN {
    weight: GpuTensor,
    bias: GpuTensor,
    opts: Conv2dOpts,
}

impl Conv2dBN {
    /// `Conv2d_BN(in_chans, out_chans, k, stride, padding, groups)`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: &GpuContext,
        vb: &WeightPath,
        (in_chans, out_chans): (usize, usize),
        k: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        bn_eps: f64,
    ) -> Result<Self> {
        let (weight, bias) = fold_conv2d_bn(vb, out_chans, in_chans / groups, k, bn_eps)?;
        // Depthwise convs have their own kernel, in f32; the others are GEMMs.
        let weight = if groups > 1 && groups == in_chans && groups == out_chans {
            GpuTensor::from_candle(ctx, &weight)?
        } else {
            upload_gemm(ctx, &weight)?
        };
        Ok(Self {
            weight,
            bias: GpuTensor::from_candle(ctx, &bias)?,
            opts: Conv2dOpts {
                stride,
                padding,
                groups,
            },
        })
    }

    /// A 1x1 `Conv2d_BN(a, b)`.
    fn pointwise(
        ctx: &GpuContext,
        vb: &WeightPath,
        chans: (usize, usize),
        bn_eps: f64,
    ) -> Result<Self> {
        Self::new(ctx, vb, chans, 1, 1, 0, 1, bn_eps)
    }

    /// A depthwise `Conv2d_BN(c, c, k, stride, k // 2, groups=c)`.
    fn depthwise(
        ctx: &GpuContext,
        vb: &WeightPath,
        c: usize,
        k: usize,
        stride: usize,
        bn_eps: f64,
    ) -> Result<Self> {
        Self::new(ctx, vb, (c, c), k, stride, k / 2, c, bn_eps)
    }

    /// `x`: `[B, C, H, W]` -> `act(conv(x))`.
    fn forward(&self, rec: &mut Recorder, x: &GpuTensor, act: Activation) -> Result<GpuTensor> {
        conv2d(rec, x, &self.weight, Some(&self.bias), &self.opts, act)
    }

    /// `act(conv(x) + residual)`.
    fn forward_residual(
        &self,
        rec: &mut Recorder,
        x: &GpuTensor,
        residual: &GpuTensor,
        act: Activation,
    ) -> Result<GpuTensor> {
        conv2d_residual(
            rec,
            x,
            &self.weight,
            Some(&self.bias),
            residual,
            &self.opts,
            act,
        )
    }
}

/// `PatchEmbed`: Conv2d_BN(in, n/2, 3, 2, 1), GELU, Conv2d_BN(n/2, n, 3, 2, 1).
struct PatchEmbed {
    seq_0: Conv2dBN,
    seq_2: Conv2dBN,
}

impl PatchEmbed {
    fn new(
        ctx: &GpuContext,
        vb: &WeightPath,
        in_chans: usize,
        embed_dim: usize,
        bn_eps: f64,
    ) -> Result<Self> {
        let (k, s) = (PATCH_EMBED_KERNEL, PATCH_EMBED_STRIDE);
        let seq = vb.pp("seq");
        let n = embed_dim;
        Ok(Self {
            seq_0: Conv2dBN::new(ctx, &seq.pp(0), (in_chans, n / 2), k, s, k / 2, 1, bn_eps)?,
            seq_2: Conv2dBN::new(ctx, &seq.pp(2), (n / 2, n), k, s, k / 2, 1, bn_eps)?,
        })
    }

    fn patches_resolution(img_size: usize) -> usize {
        let (k, s) = (PATCH_EMBED_KERNEL, PATCH_EMBED_STRIDE);
        conv_out_size(conv_out_size(img_size, k, s, k / 2), k, s, k / 2)
    }

    fn forward(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        // seq.0, seq.1 (GELU)
        let x = self.seq_0.forward(rec, x, Activation::Gelu)?;
        self.seq_2.forward(rec, &x, Activation::None)
    }
}

/// `MBConv`: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU after each.
struct MBConv {
    conv1: Conv2dBN,
    conv2: Conv2dBN,
    conv3: Conv2dBN,
}

impl MBConv {
    fn new(
        ctx: &GpuContext,
        vb: &WeightPath,
        dim: usize,
        expand_ratio: usize,
        bn_eps: f64,
    ) -> Result<Self> {
        let hidden = dim * expand_ratio;
        Ok(Self {
            conv1: Conv2dBN::pointwise(ctx, &vb.pp("conv1"), (dim, hidden), bn_eps)?,
            conv2: Conv2dBN::depthwise(ctx, &vb.pp("conv2"), hidden, DEPTHWISE_KERNEL, 1, bn_eps)?,
            conv3: Conv2dBN::pointwise(ctx, &vb.pp("conv3"), (hidden, dim), bn_eps)?,
        })
    }

    /// `x`: `[B, C, H, W]`.
    fn forward(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        let h = self.conv1.forward(rec, x, Activation::Gelu)?;
        let h = self.conv2.forward(rec, &h, Activation::Gelu)?;
        // conv3, x += shortcut, act3
        self.conv3.forward_residual(rec, &h, x, Activation::Gelu)
    }
}

/// `PatchMerging`: 1x1 conv, GELU, 3x3 depthwise conv (stride 2, or 1 for the widths in
/// `STRIDE_ONE_OUT_DIMS`), GELU, 1x1 conv; returns tokens `[B, L, out_dim]`.
struct PatchMerging {
    /// `(H, W)` of token inputs.
    input_resolution: (usize, usize),
    conv1: Conv2dBN,
    conv2: Conv2dBN,
    conv3: Conv2dBN,
}

impl PatchMerging {
    fn new(
        ctx: &GpuContext,
        vb: &WeightPath,
        input_resolution: usize,
        dim: usize,
        out_dim: usize,
        bn_eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            input_resolution: (input_resolution, input_resolution),
            conv1: Conv2dBN::pointwise(ctx, &vb.pp("conv1"), (dim, out_dim), bn_eps)?,
            conv2: Conv2dBN::depthwise(
                ctx,
                &vb.pp("conv2"),
                out_dim,
                DEPTHWISE_KERNEL,
                Self::stride(out_dim),
                bn_eps,
            )?,
            conv3: Conv2dBN::pointwise(ctx, &vb.pp("conv3"), (out_dim, out_dim), bn_eps)?,
        })
    }

    fn stride(out_dim: usize) -> usize {
        if TinyVitConfig::STRIDE_ONE_OUT_DIMS.contains(&out_dim) {
            1
        } else {
            PATCH_MERGING_STRIDE
        }
    }

    fn output_resolution(input: usize, out_dim: usize) -> usize {
        let k = DEPTHWISE_KERNEL;
        conv_out_size(input, k, Self::stride(out_dim), k / 2)
    }

    /// `x`: `[B, C, H, W]` or tokens `[B, H*W, C]` -> tokens `[B, H'*W', out_dim]`.
    fn forward(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        let x = if x.rank() == 3 {
            to_nchw(rec, x, self.input_resolution)?
        } else {
            x.clone()
        };
        let x = self.conv1.forward(rec, &x, Activation::Gelu)?;
        let x = self.conv2.forward(rec, &x, Activation::Gelu)?;
        let x = self.conv3.forward(rec, &x, Activation::None)?;
        to_tokens(rec, &x)
    }
}

/// `Mlp`: LayerNorm, fc1, GELU (fused), fc2.
struct Mlp {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn forward(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        let x = self.norm.forward(rec, x)?;
        let x = self.fc1.forward(rec, &x, Activation::Gelu)?;
        self.fc2.forward(rec, &x, Activation::None)
    }
}

/// `Attention` with `attn_ratio = 1`: LayerNorm, fused qkv, multi-head attention with the
/// gathered bias table `ab` `[heads, N, N]`, output projection.
struct Attention {
    num_heads: usize,
    key_dim: usize,
    scale: f32,
    norm: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ab: GpuTensor,
}

impl Attention {
    fn new(
        ctx: &GpuContext,
        vb: &WeightPath,
        dim: usize,
        num_heads: usize,
        window_size: usize,
        eps: f64,
    ) -> Result<Self> {
        let key_dim = dim / num_heads;
        // attn_ratio 1: values as wide as keys.
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
            norm: LayerNorm::new(ctx, &vb.pp("norm"), dim, eps)?,
            qkv: Linear::new(ctx, &vb.pp("qkv"), dim, 3 * dh)?,
            proj: Linear::new(ctx, &vb.pp("proj"), dh, dim)?,
            ab: GpuTensor::from_candle(ctx, &ab)?,
        })
    }

    /// `x`: `[B, N, C]` (B windows of N tokens).
    fn forward(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        let (b, n) = (x.dim(0), x.dim(1));
        let (heads, kd) = (self.num_heads, self.key_dim);
        let x = self.norm.forward(rec, x)?;
        let qkv = self.qkv.forward(rec, &x, Activation::None)?;
        // (B, N, heads, [q k v]) -> (B, heads, N, [q k v])
        let qkv = permute(rec, &qkv.reshape(&[b, n, heads, 3 * kd])?, &[0, 2, 1, 3])?;
        let q = slice(rec, &qkv, 3, 0, kd)?;
        let k = slice(rec, &qkv, 3, kd, kd)?;
        let v = slice(rec, &qkv, 3, 2 * kd, kd)?;
        let o = attention(rec, &q, &k, &v, Some(&self.ab), self.scale)?;
        // (B, heads, N, d) -> (B, N, heads * d)
        let o = permute(rec, &o, &[0, 2, 1, 3])?.reshape(&[b, n, heads * kd])?;
        self.proj.forward(rec, &o, Activation::None)
    }
}

/// `TinyViTBlock`: windowed attention (grid padded to a multiple of the window), residual; a
/// depthwise `local_conv`; MLP, residual.
struct TinyViTBlock {
    input_resolution: (usize, usize),
    window_size: usize,
    attn: Attention,
    local_conv: Conv2dBN,
    mlp: Mlp,
}

impl TinyViTBlock {
    fn new(
        ctx: &GpuContext,
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
        let hidden = dim * cfg.mlp_ratio;
        let mlp = vb.pp("mlp");
        Ok(Self {
            input_resolution: (resolution, resolution),
            window_size,
            attn: Attention::new(ctx, &vb.pp("attn"), dim, num_heads, window_size, eps)?,
            local_conv: Conv2dBN::depthwise(
                ctx,
                &vb.pp("local_conv"),
                dim,
                cfg.local_conv_size,
                1,
                cfg.batch_norm_eps,
            )?,
            mlp: Mlp {
                norm: LayerNorm::new(ctx, &mlp.pp("norm"), dim, eps)?,
                fc1: Linear::new(ctx, &mlp.pp("fc1"), dim, hidden)?,
                fc2: Linear::new(ctx, &mlp.pp("fc2"), hidden, dim)?,
            },
        })
    }

    /// `x`: tokens `[B, H*W, C]`.
    fn forward(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        let (h, w) = self.input_resolution;
        let ws = self.window_size;
        if x.rank() != 3 || x.dim(1) != h * w {
            return Err(Error::invalid(format!(
                "TinyViT block: tokens {:?} for a {h}x{w} grid",
                x.shape()
            )));
        }
        // x = res_x + attn(x), windowed: padding in the partition, crop + residual in the
        // reverse.
        let x = if h == ws && w == ws {
            let a = self.attn.forward(rec, x)?;
            binary(rec, x, &a, Binary::Add)?
        } else {
            let windows = window_partition(rec, x, (h, w), ws)?;
            let a = self.attn.forward(rec, &windows)?;
            window_reverse(rec, &a, (h, w), ws, Some(x))?
        };
        let x = to_nchw(rec, &x, (h, w))?;
        let x = self.local_conv.forward(rec, &x, Activation::None)?;
        let x = to_tokens(rec, &x)?;
        let mlp = self.mlp.forward(rec, &x)?;
        binary(rec, &x, &mlp, Binary::Add)
    }
}

/// A stage: `layers.0` is a `ConvLayer` (MBConvs), the rest `BasicLayer`s (TinyViT blocks);
/// either may end in a `PatchMerging`.
enum Blocks {
    Conv(Vec<MBConv>),
    Attention(Vec<TinyViTBlock>),
}

struct Stage {
    blocks: Blocks,
    downsample: Option<PatchMerging>,
}

impl Stage {
    fn forward(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        let mut x = x.clone();
        match &self.blocks {
            Blocks::Conv(blocks) => {
                for blk in blocks {
                    x = blk.forward(rec, &x)?;
                }
            }
            Blocks::Attention(blocks) => {
                for blk in blocks {
                    x = blk.forward(rec, &x)?;
                }
            }
        }
        match &self.downsample {
            Some(d) => d.forward(rec, &x),
            None => Ok(x),
        }
    }
}

/// `TinyViT` with MobileSAM's neck on the GPU: `[1, 3, 1024, 1024]` -> `[1, 256, 64, 64]`.
pub struct GpuTinyViT {
    img_size: usize,
    in_chans: usize,
    patch_embed: PatchEmbed,
    layers: Vec<Stage>,
    /// Side of the last stage's grid.
    out_resolution: usize,
    out_chans: usize,
    /// `neck.0` as a linear weight `[out_chans, embed_dims[-1]]`.
    neck_0: GpuTensor,
    /// `neck.1` (LayerNorm2d), applied over the channels of tokens.
    neck_1: LayerNorm,
    /// `neck.2`: `[out_chans, out_chans, 3, 3]`, no bias.
    neck_2: GpuTensor,
    neck_3_weight: GpuTensor,
    neck_3_bias: GpuTensor,
}

impl GpuTinyViT {
    /// `vb`: the weights under `image_encoder` (`weights.pp("image_encoder")`).
    pub fn new(ctx: &GpuContext, cfg: &TinyVitConfig, vb: &WeightPath) -> Result<Self> {
        let embed_dims = cfg.embed_dims;
        let num_layers = cfg.depths.len();
        let patch_embed = PatchEmbed::new(
            ctx,
            &vb.pp("patch_embed"),
            cfg.in_chans,
            embed_dims[0],
            cfg.batch_norm_eps,
        )?;
        let mut resolution = PatchEmbed::patches_resolution(cfg.img_size);
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
                                ctx,
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
                                ctx,
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
            let downsample = if i_layer < num_layers - 1 {
                let out_dim = embed_dims[i_layer + 1];
                let d = PatchMerging::new(
                    ctx,
                    &vb_layer.pp("downsample"),
                    resolution,
                    dim,
                    out_dim,
                    cfg.batch_norm_eps,
                )?;
                resolution = PatchMerging::output_resolution(resolution, out_dim);
                Some(d)
            } else {
                None
            };
            layers.push(Stage { blocks, downsample });
        }
        let out_dim = embed_dims[num_layers - 1];
        let out_chans = cfg.out_chans;
        let neck = vb.pp("neck");
        let neck_0 = neck
            .pp(0)
            .get(&[out_chans, out_dim, 1, 1], "weight")?
            .reshape((out_chans, out_dim))?;
        Ok(Self {
            img_size: cfg.img_size,
            in_chans: cfg.in_chans,
            patch_embed,
            layers,
            out_resolution: resolution,
            out_chans,
            neck_0: upload_gemm(ctx, &neck_0)?,
            neck_1: LayerNorm::new(ctx, &neck.pp(1), out_chans, LAYER_NORM_2D_EPS)?,
            neck_2: upload_gemm(
                ctx,
                &neck
                    .pp(2)
                    .get(&[out_chans, out_chans, NECK_KERNEL, NECK_KERNEL], "weight")?,
            )?,
            neck_3_weight: upload(ctx, &neck.pp(3), &[out_chans], "weight")?,
            neck_3_bias: upload(ctx, &neck.pp(3), &[out_chans], "bias")?,
        })
    }

    /// `x`: the preprocessed image `[B, 3, 1024, 1024]` -> the embedding `[B, 256, 64, 64]`,
    /// recorded into `rec`.
    pub fn forward(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        let s = self.img_size;
        let &[b, c, h, w] = x.shape() else {
            return Err(Error::invalid(format!(
                "TinyViT expects [B, {}, {s}, {s}], got {:?}",
                self.in_chans,
                x.shape()
            )));
        };
        if c != self.in_chans || h != s || w != s {
            return Err(Error::invalid(format!(
                "TinyViT expects [B, {}, {s}, {s}], got {:?}",
                self.in_chans,
                x.shape()
            )));
        }
        let mut x = self.patch_embed.forward(rec, x)?;
        for layer in &self.layers {
            x = layer.forward(rec, &x)?;
        }
        // neck: 1x1 conv and LayerNorm2d on the tokens, then NCHW for the 3x3 conv.
        let x = linear(rec, &x, &self.neck_0, None, Activation::None)?;
        let x = self.neck_1.forward(rec, &x)?;
        let side = self.out_resolution;
        let x = to_nchw(rec, &x, (side, side))?;
        let x = conv2d(
            rec,
            &x,
            &self.neck_2,
            None,
            &Conv2dOpts {
                stride: 1,
                padding: NECK_KERNEL / 2,
                groups: 1,
            },
            Activation::None,
        )?;
        debug_assert_eq!(x.shape(), [b, self.out_chans, side, side]);
        layer_norm_2d(
            rec,
            &x,
            &self.neck_3_weight,
            &self.neck_3_bias,
            LAYER_NORM_2D_EPS as f32,
            Activation::None,
        )
    }

    /// Side of the embedding grid (64).
    pub fn out_resolution(&self) -> usize {
        self.out_resolution
    }
}
