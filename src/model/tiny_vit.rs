//! TinyViT-5M, MobileSAM's image encoder.
//! Follows `mobile_sam/modeling/tiny_vit_sam.py` (MobileSAM's copy of TinyViT): one struct per
//! Python class, weight keys as in the checkpoint under `image_encoder.`.
//!
//! Differences in form, not in result:
//! - every `Conv2d_BN` is folded into one conv with bias at load, as the reference's `fuse()`;
//! - the attention bias table `attention_biases[:, attention_bias_idxs]` is gathered once at
//!   load, as the reference does in `train(False)` (`self.ab`);
//! - depthwise convs run on [`DepthwiseConv2d`], a direct kernel, instead of candle's grouped
//!   conv2d (one small conv per channel);
//! - the GELU after a conv (and the residual of `MBConv`) is fused into the conv's output pass
//!   ([`Epilogue`]), the same erf GELU computed with a vectorizable erf;
//! - the classifier (`head`, `norm_head`) is not loaded: `forward` never used it.

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};
use crate::model::config::{TinyVitConfig, LAYER_NORM_2D_EPS};
use crate::model::conv::{conv2d, conv_out_size, Activation, DepthwiseConv2d, Epilogue};
use crate::model::ops::{contiguous, softmax_last_scaled, LayerNorm, LayerNorm2d, Linear};
use crate::model::weights::WeightPath;
use crate::threads;

/// `PatchEmbed`: two 3x3 convs of stride 2 (padding 1), so the grid is a quarter of the image.
const PATCH_EMBED_KERNEL: usize = 3;
const PATCH_EMBED_STRIDE: usize = 2;
/// The depthwise convs of `MBConv` and `PatchMerging` are 3x3 in the reference (fixed there,
/// unlike the blocks' `local_conv_size`).
const DEPTHWISE_KERNEL: usize = 3;
/// `PatchMerging` halves the grid unless its `out_dim` is in `STRIDE_ONE_OUT_DIMS`.
const PATCH_MERGING_STRIDE: usize = 2;
/// `TinyViTBlock` builds its `Attention` with `attn_ratio=1` (values as wide as keys).
const BLOCK_ATTN_RATIO: usize = 1;
/// The neck's second conv is 3x3 with padding 1.
const NECK_KERNEL: usize = 3;

/// Padding that keeps the grid size for an odd kernel (`ks // 2`).
fn same_padding(kernel: usize) -> usize {
    kernel / 2
}

/// The arguments of `Conv2d_BN(a, b, ks=1, stride=1, pad=0, groups=1)`.
#[derive(Debug, Clone, Copy)]
struct Conv2dBnArgs {
    in_chans: usize,
    out_chans: usize,
    kernel_size: usize,
    stride: usize,
    padding: usize,
    groups: usize,
}

impl Conv2dBnArgs {
    /// `Conv2d_BN(a, b)`: a 1x1 conv.
    fn new(in_chans: usize, out_chans: usize) -> Self {
        Self {
            in_chans,
            out_chans,
            kernel_size: 1,
            stride: 1,
            padding: 0,
            groups: 1,
        }
    }

    fn kernel(self, kernel_size: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel_size,
            stride,
            padding,
            ..self
        }
    }

    fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }
}

/// A conv with folded batch norm: dense on candle (its bias added by the [`Epilogue`]),
/// depthwise on the direct kernel.
#[derive(Debug, Clone)]
enum FoldedConv {
    Dense {
        weight: Tensor,
        /// `[out]`.
        bias: Vec<f32>,
        stride: usize,
        padding: usize,
    },
    Depthwise(DepthwiseConv2d),
}

/// The folded weight `[out, in_per_group, k, k]` and bias `[out]` of the `Conv2d_BN` at `vb`
/// (also used by the GPU port, so that both fold the same way).
pub(crate) fn fold_conv2d_bn(
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
struct Conv2dBN {
    conv: FoldedConv,
}

impl Conv2dBN {
    fn new(vb: &WeightPath, args: Conv2dBnArgs, bn_eps: f64) -> Result<Self> {
        let Conv2dBnArgs {
            in_chans,
            out_chans,
            kernel_size: k,
            stride,
            padding,
            groups,
        } = args;
        let depthwise = groups > 1 && groups == in_chans && groups == out_chans;
        if groups != 1 && !depthwise {
            return Err(Error::UnsupportedModel(format!(
                "`{}`: grouped conv {in_chans}->{out_chans} with {groups} groups (only dense and depthwise are implemented)",
                vb.key("c")
            )));
        }
        let (weight, bias) = fold_conv2d_bn(vb, out_chans, in_chans / groups, k, bn_eps)?;

        let conv = if depthwise {
            FoldedConv::Depthwise(DepthwiseConv2d::new(&weight, &bias, stride, padding)?)
        } else {
            FoldedConv::Dense {
                weight,
                bias: bias.to_vec1::<f32>()?,
                stride,
                padding,
            }
        };
        Ok(Self { conv })
    }

    /// `x`: `[B, C, H, W]` -> `act(conv(x))`.
    fn forward(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match &self.conv {
            FoldedConv::Dense {
                weight,
                bias,
                stride,
                padding,
            } => Epilogue {
                bias: Some(bias),
                act,
            }
            .apply(conv2d(x, weight, *stride, *padding)?),
            FoldedConv::Depthwise(conv) => conv.forward(x, act),
        }
    }

    /// `act(conv(x) + residual)`.
    fn forward_residual(&self, x: &Tensor, residual: &Tensor, act: Activation) -> Result<Tensor> {
        match &self.conv {
            FoldedConv::Dense {
                weight,
                bias,
                stride,
                padding,
            } => Epilogue {
                bias: Some(bias),
                act,
            }
            .apply_with_residual(conv2d(x, weight, *stride, *padding)?, residual),
            FoldedConv::Depthwise(conv) => {
                let y = conv.forward(x, Activation::Identity)?;
                Epilogue { bias: None, act }.apply_with_residual(y, residual)
            }
        }
    }
}

/// `PatchEmbed`: `seq` = Conv2d_BN(in, n/2, 3, 2, 1), GELU, Conv2d_BN(n/2, n, 3, 2, 1).
#[derive(Debug, Clone)]
struct PatchEmbed {
    seq_0: Conv2dBN,
    seq_2: Conv2dBN,
}

impl PatchEmbed {
    fn new(vb: &WeightPath, in_chans: usize, embed_dim: usize, bn_eps: f64) -> Result<Self> {
        let n = embed_dim;
        let (k, s) = (PATCH_EMBED_KERNEL, PATCH_EMBED_STRIDE);
        let p = same_padding(k);
        let seq = vb.pp("seq");
        Ok(Self {
            seq_0: Conv2dBN::new(
                &seq.pp(0),
                Conv2dBnArgs::new(in_chans, n / 2).kernel(k, s, p),
                bn_eps,
            )?,
            seq_2: Conv2dBN::new(
                &seq.pp(2),
                Conv2dBnArgs::new(n / 2, n).kernel(k, s, p),
                bn_eps,
            )?,
        })
    }

    /// Grid side after the two strided convs.
    fn patches_resolution(img_size: usize) -> usize {
        let (k, s) = (PATCH_EMBED_KERNEL, PATCH_EMBED_STRIDE);
        let p = same_padding(k);
        conv_out_size(conv_out_size(img_size, k, s, p), k, s, p)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // seq.0, seq.1 (GELU)
        let x = self.seq_0.forward(x, Activation::Gelu)?;
        self.seq_2.forward(&x, Activation::Identity)
    }
}

/// `MBConv`: 1x1 expand, 3x3 depthwise, 1x1 project, residual, each conv with BN, GELU between.
#[derive(Debug, Clone)]
struct MBConv {
    conv1: Conv2dBN,
    conv2: Conv2dBN,
    conv3: Conv2dBN,
}

impl MBConv {
    fn new(
        vb: &WeightPath,
        in_chans: usize,
        out_chans: usize,
        expand_ratio: usize,
        bn_eps: f64,
    ) -> Result<Self> {
        let hidden_chans = in_chans * expand_ratio;
        let k = DEPTHWISE_KERNEL;
        Ok(Self {
            conv1: Conv2dBN::new(
                &vb.pp("conv1"),
                Conv2dBnArgs::new(in_chans, hidden_chans),
                bn_eps,
            )?,
            conv2: Conv2dBN::new(
                &vb.pp("conv2"),
                Conv2dBnArgs::new(hidden_chans, hidden_chans)
                    .kernel(k, /* stride */ 1, same_padding(k))
                    .groups(hidden_chans),
                bn_eps,
            )?,
            conv3: Conv2dBN::new(
                &vb.pp("conv3"),
                Conv2dBnArgs::new(hidden_chans, out_chans),
                bn_eps,
            )?,
        })
    }

    /// `x`: `[B, C, H, W]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shortcut = x;

        // conv1, act1
        let x = self.conv1.forward(x, Activation::Gelu)?;

        // conv2, act2
        let x = self.conv2.forward(&x, Activation::Gelu)?;

        // conv3, x += shortcut, act3
        self.conv3.forward_residual(&x, shortcut, Activation::Gelu)
    }
}

/// `PatchMerging`: 1x1 conv, GELU, 3x3 depthwise conv (stride 2, or 1 for the widths in
/// `STRIDE_ONE_OUT_DIMS`), GELU, 1x1 conv; returns tokens `[B, L, out_dim]`.
#[derive(Debug, Clone)]
struct PatchMerging {
    /// `(H, W)` of token inputs.
    input_resolution: (usize, usize),
    conv1: Conv2dBN,
    conv2: Conv2dBN,
    conv3: Conv2dBN,
}

impl PatchMerging {
    fn new(
        vb: &WeightPath,
        input_resolution: (usize, usize),
        dim: usize,
        out_dim: usize,
        bn_eps: f64,
    ) -> Result<Self> {
        let k = DEPTHWISE_KERNEL;
        Ok(Self {
            input_resolution,
            conv1: Conv2dBN::new(&vb.pp("conv1"), Conv2dBnArgs::new(dim, out_dim), bn_eps)?,
            conv2: Conv2dBN::new(
                &vb.pp("conv2"),
                Conv2dBnArgs::new(out_dim, out_dim)
                    .kernel(k, Self::stride(out_dim), same_padding(k))
                    .groups(out_dim),
                bn_eps,
            )?,
            conv3: Conv2dBN::new(&vb.pp("conv3"), Conv2dBnArgs::new(out_dim, out_dim), bn_eps)?,
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

    /// `x`: `[B, C, H, W]` or tokens `[B, H*W, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if x.rank() == 3 {
            let (h, w) = self.input_resolution;
            let b = x.dim(0)?;
            // (B, C, H, W)
            contiguous(&x.reshape((b, h, w, ()))?.permute((0, 3, 1, 2))?)?
        } else {
            x.clone()
        };

        // conv1, act
        let x = self.conv1.forward(&x, Activation::Gelu)?;

        // conv2, act
        let x = self.conv2.forward(&x, Activation::Gelu)?;
        let x = self.conv3.forward(&x, Activation::Identity)?;
        contiguous(&x.flatten_from(2)?.transpose(1, 2)?)
    }
}

/// `ConvLayer`: the first stage, `MBConv` blocks then `PatchMerging`.
#[derive(Debug, Clone)]
struct ConvLayer {
    blocks: Vec<MBConv>,
    downsample: Option<PatchMerging>,
}

/// What a stage needs to know beyond its weights (the reference's `BasicLayer` kwargs).
#[derive(Debug, Clone, Copy)]
struct StageArgs {
    dim: usize,
    /// Side of the square token grid the stage sees.
    input_resolution: usize,
    depth: usize,
    /// `Some(out_dim)`: end with a `PatchMerging` to `out_dim`.
    downsample_to: Option<usize>,
}

impl ConvLayer {
    fn new(vb: &WeightPath, args: StageArgs, cfg: &TinyVitConfig) -> Result<Self> {
        // build blocks
        let blocks = (0..args.depth)
            .map(|i| {
                MBConv::new(
                    &vb.pp("blocks").pp(i),
                    args.dim,
                    args.dim,
                    cfg.mbconv_expand_ratio,
                    cfg.batch_norm_eps,
                )
            })
            .collect::<Result<Vec<_>>>()?;

        // patch merging layer
        let res = args.input_resolution;
        let downsample = args
            .downsample_to
            .map(|out_dim| {
                PatchMerging::new(
                    &vb.pp("downsample"),
                    (res, res),
                    args.dim,
                    out_dim,
                    cfg.batch_norm_eps,
                )
            })
            .transpose()?;
        Ok(Self { blocks, downsample })
    }

    /// `x`: `[B, C, H, W]`; tokens `[B, L, out_dim]` after the downsample.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for blk in &self.blocks {
            x = blk.forward(&x)?;
        }
        match &self.downsample {
            Some(downsample) => downsample.forward(&x),
            None => Ok(x),
        }
    }
}

/// `Mlp`: LayerNorm, fc1, GELU, fc2 (dropout is 0).
#[derive(Debug, Clone)]
struct Mlp {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(vb: &WeightPath, in_features: usize, hidden_features: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(&vb.pp("norm"), in_features, eps)?,
            fc1: Linear::new(&vb.pp("fc1"), in_features, hidden_features, true)?,
            fc2: Linear::new(&vb.pp("fc2"), hidden_features, in_features, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.norm.forward(x)?;

        let x = self.fc1.forward(&x)?;
        let x = Epilogue {
            bias: None,
            act: Activation::Gelu,
        }
        .apply(x)?;
        self.fc2.forward(&x)
    }
}

/// `Attention(dim, key_dim, num_heads, attn_ratio, resolution)`.
#[derive(Debug, Clone, Copy)]
struct AttentionArgs {
    dim: usize,
    key_dim: usize,
    num_heads: usize,
    attn_ratio: usize,
    /// `(h, w)` of the window.
    resolution: (usize, usize),
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

/// `Attention`: LayerNorm, fused qkv, multi-head attention with a learned bias per head and
/// window offset, output projection.
#[derive(Debug, Clone)]
struct Attention {
    num_heads: usize,
    scale: f64,
    key_dim: usize,
    /// Value width per head (`attn_ratio * key_dim`).
    d: usize,
    /// Value width over all heads.
    dh: usize,
    norm: LayerNorm,
    qkv: Linear,
    proj: Linear,
    /// `attention_biases[:, attention_bias_idxs]`: `[num_heads, N, N]`, flat (the softmax adds
    /// it to every window's logits).
    ab: Vec<f32>,
}

impl Attention {
    fn new(vb: &WeightPath, args: AttentionArgs, eps: f64) -> Result<Self> {
        let AttentionArgs {
            dim,
            key_dim,
            num_heads,
            attn_ratio,
            resolution,
        } = args;
        let nh_kd = key_dim * num_heads;
        let d = attn_ratio * key_dim;
        let dh = d * num_heads;
        let h = dh + nh_kd * 2;

        let (idxs, num_offsets) = attention_bias_idxs(resolution);
        let n = resolution.0 * resolution.1;
        let attention_biases = vb.get(&[num_heads, num_offsets], "attention_biases")?;
        let idxs = Tensor::from_vec(idxs, n * n, attention_biases.device())?;
        let ab = attention_biases
            .index_select(&idxs, 1)?
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1()?;

        Ok(Self {
            num_heads,
            scale: (key_dim as f64).powf(-0.5),
            key_dim,
            d,
            dh,
            norm: LayerNorm::new(&vb.pp("norm"), dim, eps)?,
            qkv: Linear::new(&vb.pp("qkv"), dim, h, true)?,
            proj: Linear::new(&vb.pp("proj"), dh, dim, true)?,
            ab,
        })
    }

    /// `x`: `[B, N, C]` (B windows of N tokens).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;

        // Normalization
        let x = self.norm.forward(x)?;

        let qkv = self.qkv.forward(&x)?;
        // (B, N, num_heads, d)
        let qkv = qkv.reshape((b, n, self.num_heads, ()))?;
        let (kd, d) = (self.key_dim, self.d);
        // (B, num_heads, N, d)
        let q = contiguous(&qkv.narrow(3, 0, kd)?.permute((0, 2, 1, 3))?)?;
        let k = contiguous(&qkv.narrow(3, kd, kd)?.permute((0, 2, 1, 3))?)?;
        let v = contiguous(&qkv.narrow(3, 2 * kd, d)?.permute((0, 2, 1, 3))?)?;

        let attn = threads::matmul(&q, &k.transpose(D::Minus2, D::Minus1)?)?;
        let attn = softmax_last_scaled(&attn, self.scale as f32, Some(&self.ab))?;
        let x =
            contiguous(&threads::matmul(&attn, &v)?.transpose(1, 2)?)?.reshape((b, n, self.dh))?;
        self.proj.forward(&x)
    }
}

/// `TinyViTBlock`: windowed attention (the grid padded to a multiple of the window), residual;
/// a depthwise `local_conv`; MLP, residual.
#[derive(Debug, Clone)]
struct TinyViTBlock {
    input_resolution: (usize, usize),
    window_size: usize,
    attn: Attention,
    mlp: Mlp,
    local_conv: Conv2dBN,
}

/// `TinyViTBlock(dim, input_resolution, num_heads, window_size)`.
#[derive(Debug, Clone, Copy)]
struct BlockArgs {
    dim: usize,
    input_resolution: (usize, usize),
    num_heads: usize,
    window_size: usize,
}

impl TinyViTBlock {
    fn new(vb: &WeightPath, args: BlockArgs, cfg: &TinyVitConfig) -> Result<Self> {
        let BlockArgs {
            dim,
            input_resolution,
            num_heads,
            window_size,
        } = args;
        if window_size == 0 || num_heads == 0 || dim % num_heads != 0 {
            return Err(Error::invalid(format!(
                "TinyViT block `{}`: dim {dim} must split into {num_heads} heads and the window ({window_size}) be non-empty",
                vb.key("")
            )));
        }
        let head_dim = dim / num_heads;

        let attn = Attention::new(
            &vb.pp("attn"),
            AttentionArgs {
                dim,
                key_dim: head_dim,
                num_heads,
                attn_ratio: BLOCK_ATTN_RATIO,
                resolution: (window_size, window_size),
            },
            cfg.layer_norm_eps,
        )?;

        let mlp_hidden_dim = dim * cfg.mlp_ratio;
        let mlp = Mlp::new(&vb.pp("mlp"), dim, mlp_hidden_dim, cfg.layer_norm_eps)?;

        let k = cfg.local_conv_size;
        let local_conv = Conv2dBN::new(
            &vb.pp("local_conv"),
            Conv2dBnArgs::new(dim, dim)
                .kernel(k, /* stride */ 1, same_padding(k))
                .groups(dim),
            cfg.batch_norm_eps,
        )?;
        Ok(Self {
            input_resolution,
            window_size,
            attn,
            mlp,
            local_conv,
        })
    }

    /// `x`: tokens `[B, H*W, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (h, w) = self.input_resolution;
        let ws = self.window_size;
        let (b, l, c) = x.dims3()?;
        if l != h * w {
            return Err(Error::invalid(format!(
                "TinyViT block: input feature has wrong size ({l} tokens for a {h}x{w} grid)"
            )));
        }
        let res_x = x;
        let x = if h == ws && w == ws {
            self.attn.forward(x)?
        } else {
            let x = x.reshape((b, h, w, c))?;
            let pad_b = (ws - h % ws) % ws;
            let pad_r = (ws - w % ws) % ws;
            let padding = pad_b > 0 || pad_r > 0;

            // Zero tokens, as F.pad: they go through the attention's LayerNorm and are
            // attended to like any other token.
            let x = if padding {
                x.pad_with_zeros(1, 0, pad_b)?.pad_with_zeros(2, 0, pad_r)?
            } else {
                x
            };

            let (p_h, p_w) = (h + pad_b, w + pad_r);
            let n_h = p_h / ws;
            let n_w = p_w / ws;
            // window partition
            let x = contiguous(&x.reshape((b, n_h, ws, n_w, ws, c))?.transpose(2, 3)?)?
                .reshape((b * n_h * n_w, ws * ws, c))?;
            let x = self.attn.forward(&x)?;
            // window reverse
            let x = contiguous(&x.reshape((b, n_h, n_w, ws, ws, c))?.transpose(2, 3)?)?
                .reshape((b, p_h, p_w, c))?;

            let x = if padding {
                contiguous(&x.narrow(1, 0, h)?.narrow(2, 0, w)?)?
            } else {
                x
            };

            x.reshape((b, l, c))?
        };

        let x = (res_x + x)?;

        let x = contiguous(&x.transpose(1, 2)?)?.reshape((b, c, h, w))?;
        let x = self.local_conv.forward(&x, Activation::Identity)?;
        let x = contiguous(&x.reshape((b, c, l))?.transpose(1, 2)?)?;

        let mlp = self.mlp.forward(&x)?;
        Ok((x + mlp)?)
    }
}

/// `BasicLayer`: one attention stage, `TinyViTBlock`s then an optional `PatchMerging`.
#[derive(Debug, Clone)]
struct BasicLayer {
    blocks: Vec<TinyViTBlock>,
    downsample: Option<PatchMerging>,
}

impl BasicLayer {
    fn new(
        vb: &WeightPath,
        args: StageArgs,
        num_heads: usize,
        window_size: usize,
        cfg: &TinyVitConfig,
    ) -> Result<Self> {
        let res = args.input_resolution;
        // build blocks
        let blocks = (0..args.depth)
            .map(|i| {
                TinyViTBlock::new(
                    &vb.pp("blocks").pp(i),
                    BlockArgs {
                        dim: args.dim,
                        input_resolution: (res, res),
                        num_heads,
                        window_size,
                    },
                    cfg,
                )
            })
            .collect::<Result<Vec<_>>>()?;

        // patch merging layer
        let downsample = args
            .downsample_to
            .map(|out_dim| {
                PatchMerging::new(
                    &vb.pp("downsample"),
                    (res, res),
                    args.dim,
                    out_dim,
                    cfg.batch_norm_eps,
                )
            })
            .transpose()?;
        Ok(Self { blocks, downsample })
    }

    /// `x`: tokens `[B, L, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for blk in &self.blocks {
            x = blk.forward(&x)?;
        }
        match &self.downsample {
            Some(downsample) => downsample.forward(&x),
            None => Ok(x),
        }
    }
}

/// `TinyViT` with MobileSAM's neck: `[1, 3, 1024, 1024]` -> `[1, 256, 64, 64]`.
#[derive(Debug, Clone)]
pub struct TinyViT {
    img_size: usize,
    in_chans: usize,
    patch_embed: PatchEmbed,
    /// `layers.0`.
    conv_layer: ConvLayer,
    /// `layers.1..`.
    layers: Vec<BasicLayer>,
    /// Side of the last stage's grid (the reference hard-codes 64 in `view(B, 64, 64, C)`).
    out_resolution: usize,
    out_dim: usize,
    /// `neck.0`: 1x1 conv, no bias, `[out_chans, embed_dims[-1], 1, 1]`.
    neck_0: Tensor,
    neck_1: LayerNorm2d,
    /// `neck.2`: 3x3 conv, no bias, `[out_chans, out_chans, 3, 3]`.
    neck_2: Tensor,
    neck_3: LayerNorm2d,
}

impl TinyViT {
    /// `vb`: the weights under `image_encoder` (`weights.pp("image_encoder")`).
    pub fn new(cfg: &TinyVitConfig, vb: &WeightPath) -> Result<Self> {
        let embed_dims = cfg.embed_dims;
        let num_layers = cfg.depths.len();

        let patch_embed = PatchEmbed::new(
            &vb.pp("patch_embed"),
            cfg.in_chans,
            embed_dims[0],
            cfg.batch_norm_eps,
        )?;
        let patches_resolution = PatchEmbed::patches_resolution(cfg.img_size);

        // build layers
        let mut resolution = patches_resolution;
        let mut conv_layer = None;
        let mut layers = Vec::with_capacity(num_layers - 1);
        for i_layer in 0..num_layers {
            let dim = embed_dims[i_layer];
            let downsample_to = (i_layer < num_layers - 1).then(|| embed_dims[i_layer + 1]);
            let args = StageArgs {
                dim,
                input_resolution: resolution,
                depth: cfg.depths[i_layer],
                downsample_to,
            };
            let vb_layer = vb.pp("layers").pp(i_layer);
            if i_layer == 0 {
                conv_layer = Some(ConvLayer::new(&vb_layer, args, cfg)?);
            } else {
                layers.push(BasicLayer::new(
                    &vb_layer,
                    args,
                    cfg.num_heads[i_layer],
                    cfg.window_sizes[i_layer],
                    cfg,
                )?);
            }
            if let Some(out_dim) = downsample_to {
                resolution = PatchMerging::output_resolution(resolution, out_dim);
            }
        }
        let conv_layer = conv_layer.expect("TinyViT has at least one stage");

        let out_dim = embed_dims[num_layers - 1];
        let out_chans = cfg.out_chans;
        let neck = vb.pp("neck");
        Ok(Self {
            img_size: cfg.img_size,
            in_chans: cfg.in_chans,
            patch_embed,
            conv_layer,
            layers,
            out_resolution: resolution,
            out_dim,
            neck_0: neck.pp(0).get(&[out_chans, out_dim, 1, 1], "weight")?,
            neck_1: LayerNorm2d::new(&neck.pp(1), out_chans, LAYER_NORM_2D_EPS)?,
            neck_2: neck
                .pp(2)
                .get(&[out_chans, out_chans, NECK_KERNEL, NECK_KERNEL], "weight")?,
            neck_3: LayerNorm2d::new(&neck.pp(3), out_chans, LAYER_NORM_2D_EPS)?,
        })
    }

    /// `x`: the preprocessed image `[B, 3, 1024, 1024]` -> the image embedding `[B, 256, 64, 64]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        if c != self.in_chans || h != self.img_size || w != self.img_size {
            return Err(Error::invalid(format!(
                "TinyViT expects [B, {}, {s}, {s}], got {:?}",
                self.in_chans,
                x.dims(),
                s = self.img_size
            )));
        }
        // x: (N, C, H, W)
        let x = self.patch_embed.forward(x)?;

        let mut x = self.conv_layer.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        let b = x.dim(0)?;
        let side = self.out_resolution;
        let x = contiguous(
            &x.reshape((b, side, side, self.out_dim))?
                .permute((0, 3, 1, 2))?,
        )?;
        self.neck(&x)
    }

    /// `neck`: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d.
    fn neck(&self, x: &Tensor) -> Result<Tensor> {
        let x = conv2d(x, &self.neck_0, /* stride */ 1, /* padding */ 0)?;
        let x = self.neck_1.forward(&x)?;
        let x = conv2d(
            &x,
            &self.neck_2,
            /* stride */ 1,
            same_padding(NECK_KERNEL),
        )?;
        self.neck_3.forward(&x)
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
        let r0 = PatchEmbed::patches_resolution(1024);
        let r1 = PatchMerging::output_resolution(r0, 128);
        let r2 = PatchMerging::output_resolution(r1, 160);
        let r3 = PatchMerging::output_resolution(r2, 320);
        assert_eq!((r0, r1, r2, r3), (256, 128, 64, 64));
    }
}
