//! Convolutions over NCHW f32 tensors, as PyTorch's `nn.Conv2d` and the 2x2 stride-2
//! `nn.ConvTranspose2d` of SAM's mask decoder, with bias, residual and activation fused.
//!
//! - Dense convs (groups 1, or any grouping that is not depthwise) run as a tiled implicit
//!   GEMM (`conv.wgsl`): weight `[Cout, Cin*kh*kw]` times the input's patches, gathered into
//!   workgroup memory tile by tile, never materialised. A 1x1 stride-1 conv reads the input
//!   as the `[Cin, H*W]` matrix it already is (`conv_gemm_pointwise`).
//! - Depthwise convs (groups == Cin == Cout) run one thread per output
//!   (`conv_depthwise.wgsl`): there is nothing to reuse across channels.
//! - The transposed conv is the same GEMM with the weight read transposed and the result
//!   scattered to its 2x2 patch (`conv_gemm_transpose2x2`).

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::{gemm_source, u32_of, Accumulate, Activation, COMMON_WGSL};
use crate::gpu::pipeline::{Kernel, KernelSpec};
use crate::gpu::recorder::Recorder;
use crate::gpu::tensor::{GpuDType, GpuTensor};

/// Stride, padding (the same on every side) and groups of a [`conv2d`]; dilation is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOpts {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl Default for Conv2dOpts {
    /// Stride 1, no padding, one group.
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            groups: 1,
        }
    }
}

/// Output side of a convolution: `(input + 2 * padding - kernel) / stride + 1`.
fn out_size(input: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (input + 2 * padding - kernel) / stride + 1
}

/// Tile of the GEMM kernel (rows = output channels, columns = output pixels).
const GEMM_TILE_M: usize = 64;
const GEMM_TILE_N: usize = 64;
/// Workgroup side of the depthwise kernel (16 x 16 output pixels).
const DEPTHWISE_TILE: usize = 16;

/// How the GEMM kernel reads its operands (the `MODE` const of `conv.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GemmMode {
    Im2col,
    Pointwise,
    Transpose2x2,
}

impl GemmMode {
    fn code(self) -> u32 {
        match self {
            GemmMode::Im2col => 0,
            GemmMode::Pointwise => 1,
            GemmMode::Transpose2x2 => 2,
        }
    }

    fn key(self) -> &'static str {
        match self {
            GemmMode::Im2col => "conv_gemm_im2col_t64x64x16",
            GemmMode::Pointwise => "conv_gemm_pointwise_t64x64x16",
            GemmMode::Transpose2x2 => "conv_gemm_transpose2x2_t64x64x16",
        }
    }
}

/// Epilogue flags, as `conv.wgsl` and `conv_depthwise.wgsl` read them.
const HAS_BIAS: u32 = 1;
const HAS_RESIDUAL: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    groups: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    out_h: u32,
    out_w: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    flags: u32,
    act: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DepthwiseParams {
    c: u32,
    h: u32,
    w: u32,
    out_h: u32,
    out_w: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    flags: u32,
    act: u32,
    _pad0: u32,
}

/// The GEMM kernel for `mode` reading weights of `weights` type (f16: see [`gemm_source`]).
fn gemm_kernel(
    ctx: &GpuContext,
    mode: GemmMode,
    weights: GpuDType,
) -> Result<std::sync::Arc<Kernel>> {
    let half = weights == GpuDType::F16;
    let key = format!("{}{}", mode.key(), if half { "_f16" } else { "" });
    ctx.pipelines().get(
        ctx,
        KernelSpec {
            key: &key,
            entry: "main",
            inputs: 4,
            outputs: 1,
            f16_inputs: if half { 0b0010 } else { 0 },
        },
        || {
            let accs: Vec<Accumulate> = ["a.x", "a.y", "a.z", "a.w"]
                .iter()
                .enumerate()
                .map(|(i, a)| Accumulate {
                    acc: format!("acc[{i}]"),
                    a: a.to_string(),
                    b: "b".into(),
                })
                .collect();
            gemm_source(
                weights,
                &format!("const MODE: u32 = {}u;", mode.code()),
                include_str!("conv.wgsl"),
                &accs,
                |a| format!("{} += {} * {};", a.acc, a.a, a.b),
            )
        },
    )
}

fn depthwise_kernel(ctx: &GpuContext) -> Result<std::sync::Arc<Kernel>> {
    ctx.pipelines().get(
        ctx,
        KernelSpec {
            key: "conv_depthwise_t16x16",
            entry: "main",
            inputs: 4,
            outputs: 1,
            f16_inputs: 0,
        },
        || format!("{COMMON_WGSL}\n{}", include_str!("conv_depthwise.wgsl")),
    )
}

/// Checks an optional bias (`[channels]`) and residual (the output's shape); returns the
/// epilogue flags.
fn epilogue_flags(
    what: &str,
    bias: Option<&GpuTensor>,
    residual: Option<&GpuTensor>,
    channels: usize,
    out_shape: &[usize],
) -> Result<u32> {
    let mut flags = 0;
    if let Some(b) = bias {
        if b.shape() != [channels] {
            return Err(Error::invalid(format!(
                "{what}: bias {:?} for {channels} output channels",
                b.shape()
            )));
        }
        flags |= HAS_BIAS;
    }
    if let Some(r) = residual {
        if r.shape() != out_shape {
            return Err(Error::invalid(format!(
                "{what}: residual {:?} for an output of shape {out_shape:?}",
                r.shape()
            )));
        }
        flags |= HAS_RESIDUAL;
    }
    Ok(flags)
}

/// Workgroups along one grid dimension, checked against the device's limit.
fn groups_along(ctx: &GpuContext, n: usize, what: &str) -> Result<u32> {
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    if n > max {
        return Err(Error::gpu(format!(
            "{what}: {n} workgroups exceed the device's limit of {max} per dimension"
        )));
    }
    u32_of(n, what)
}

/// `act(conv2d(x, weight) + bias)`: `x` `[B, Cin, H, W]`, `weight` `[Cout, Cin/groups, kh, kw]`,
/// `bias` `[Cout]` -> `[B, Cout, H', W']`, as PyTorch's `nn.Conv2d` (dilation 1).
pub fn conv2d(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: Option<&GpuTensor>,
    opts: &Conv2dOpts,
    act: Activation,
) -> Result<GpuTensor> {
    conv2d_impl(rec, x, weight, bias, None, opts, act)
}

/// `act(conv2d(x, weight) + bias + residual)` in one pass, `residual` of the output's shape
/// (TinyViT's MBConv: conv3, shortcut, GELU).
pub fn conv2d_residual(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: Option<&GpuTensor>,
    residual: &GpuTensor,
    opts: &Conv2dOpts,
    act: Activation,
) -> Result<GpuTensor> {
    conv2d_impl(rec, x, weight, bias, Some(residual), opts, act)
}

fn conv2d_impl(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: Option<&GpuTensor>,
    residual: Option<&GpuTensor>,
    opts: &Conv2dOpts,
    act: Activation,
) -> Result<GpuTensor> {
    let (&[b, c_in, h, w], &[c_out, c_per_group, kh, kw]) = (x.shape(), weight.shape()) else {
        return Err(Error::invalid(format!(
            "conv2d: input {:?} and weight {:?} must both be 4-d (NCHW, [Cout, Cin/groups, kh, kw])",
            x.shape(),
            weight.shape()
        )));
    };
    let Conv2dOpts {
        stride,
        padding,
        groups,
    } = *opts;
    if groups == 0 || c_in % groups != 0 || c_out % groups != 0 || c_per_group != c_in / groups {
        return Err(Error::invalid(format!(
            "conv2d: input {:?} and weight {:?} do not fit {groups} groups",
            x.shape(),
            weight.shape()
        )));
    }
    if stride == 0 || kh == 0 || kw == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
        return Err(Error::invalid(format!(
            "conv2d: a {kh}x{kw} kernel with stride {stride} and padding {padding} does not fit input {:?}",
            x.shape()
        )));
    }
    let (out_h, out_w) = (
        out_size(h, kh, stride, padding),
        out_size(w, kw, stride, padding),
    );
    let out_shape = [b, c_out, out_h, out_w];
    let flags = epilogue_flags("conv2d", bias, residual, c_out, &out_shape)?;
    let ctx = rec.ctx().clone();
    let y = GpuTensor::empty(&ctx, &out_shape)?;
    // Unused bindings get a tensor already bound (read-only aliasing is allowed).
    let bias_t = bias.unwrap_or(x);
    let res_t = residual.unwrap_or(x);

    if groups > 1 && groups == c_in && groups == c_out {
        let kernel = depthwise_kernel(&ctx)?;
        let params = DepthwiseParams {
            c: u32_of(c_in, "channels")?,
            h: u32_of(h, "height")?,
            w: u32_of(w, "width")?,
            out_h: u32_of(out_h, "output height")?,
            out_w: u32_of(out_w, "output width")?,
            kh: u32_of(kh, "kernel height")?,
            kw: u32_of(kw, "kernel width")?,
            stride: u32_of(stride, "stride")?,
            pad: u32_of(padding, "padding")?,
            flags,
            act: act.code(),
            _pad0: 0,
        };
        let grid = [
            groups_along(
                &ctx,
                out_w.div_ceil(DEPTHWISE_TILE),
                "depthwise conv columns",
            )?,
            groups_along(&ctx, out_h.div_ceil(DEPTHWISE_TILE), "depthwise conv rows")?,
            groups_along(&ctx, b * c_in, "depthwise conv planes")?,
        ];
        rec.dispatch(&kernel, &params, &[x, weight, bias_t, res_t], &[&y], grid)?;
        return Ok(y);
    }

    let mode = if (kh, kw, stride, padding) == (1, 1, 1, 0) {
        GemmMode::Pointwise
    } else {
        GemmMode::Im2col
    };
    let kernel = gemm_kernel(&ctx, mode, weight.dtype())?;
    let (m, n, k) = (c_out / groups, out_h * out_w, c_per_group * kh * kw);
    let params = GemmParams {
        m: u32_of(m, "output channels")?,
        n: u32_of(n, "output pixels")?,
        k: u32_of(k, "patch size")?,
        groups: u32_of(groups, "groups")?,
        c_in: u32_of(c_in, "input channels")?,
        h: u32_of(h, "height")?,
        w: u32_of(w, "width")?,
        c_out: u32_of(c_out, "output channels")?,
        out_h: u32_of(out_h, "output height")?,
        out_w: u32_of(out_w, "output width")?,
        kh: u32_of(kh, "kernel height")?,
        kw: u32_of(kw, "kernel width")?,
        stride: u32_of(stride, "stride")?,
        pad: u32_of(padding, "padding")?,
        flags,
        act: act.code(),
    };
    u32_of(y.numel(), "output values")?;
    u32_of(x.numel(), "input values")?;
    let grid = [
        groups_along(&ctx, n.div_ceil(GEMM_TILE_N), "conv2d pixel tiles")?,
        groups_along(&ctx, m.div_ceil(GEMM_TILE_M), "conv2d channel tiles")?,
        groups_along(&ctx, b * groups, "conv2d batches x groups")?,
    ];
    rec.dispatch(&kernel, &params, &[x, weight, bias_t, res_t], &[&y], grid)?;
    Ok(y)
}

/// `act(conv_transpose2d(x, weight) + bias)` with kernel 2, stride 2, no padding (SAM's
/// `output_upscaling`): `x` `[B, Cin, H, W]`, `weight` `[Cin, Cout, 2, 2]` as PyTorch stores
/// `nn.ConvTranspose2d`, `bias` `[Cout]` -> `[B, Cout, 2H, 2W]`. Each output pixel reads one
/// input pixel: output `(2i + dy, 2j + dx)` is `sum_c x[c, i, j] * weight[c, :, dy, dx]`.
pub fn conv_transpose2x2(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: Option<&GpuTensor>,
    act: Activation,
) -> Result<GpuTensor> {
    const K: usize = 2;
    let (&[b, c_in, h, w], &[w_in, c_out, kh, kw]) = (x.shape(), weight.shape()) else {
        return Err(Error::invalid(format!(
            "conv_transpose2x2: input {:?} and weight {:?} must both be 4-d (NCHW, [Cin, Cout, 2, 2])",
            x.shape(),
            weight.shape()
        )));
    };
    if w_in != c_in || (kh, kw) != (K, K) {
        return Err(Error::invalid(format!(
            "conv_transpose2x2: weight {:?} for input {:?} must be [{c_in}, Cout, 2, 2]",
            weight.shape(),
            x.shape()
        )));
    }
    let out_shape = [b, c_out, h * K, w * K];
    let flags = epilogue_flags("conv_transpose2x2", bias, None, c_out, &out_shape)?;
    let ctx = rec.ctx().clone();
    let y = GpuTensor::empty(&ctx, &out_shape)?;
    let kernel = gemm_kernel(&ctx, GemmMode::Transpose2x2, weight.dtype())?;
    let (m, n) = (c_out * K * K, h * w);
    let params = GemmParams {
        m: u32_of(m, "output channels x 4")?,
        n: u32_of(n, "input pixels")?,
        k: u32_of(c_in, "input channels")?,
        groups: 1,
        c_in: u32_of(c_in, "input channels")?,
        h: u32_of(h, "height")?,
        w: u32_of(w, "width")?,
        c_out: u32_of(c_out, "output channels")?,
        out_h: u32_of(h * K, "output height")?,
        out_w: u32_of(w * K, "output width")?,
        kh: K as u32,
        kw: K as u32,
        stride: K as u32,
        pad: 0,
        flags,
        act: act.code(),
    };
    u32_of(y.numel(), "output values")?;
    let grid = [
        groups_along(
            &ctx,
            n.div_ceil(GEMM_TILE_N),
            "conv_transpose2x2 pixel tiles",
        )?,
        groups_along(
            &ctx,
            m.div_ceil(GEMM_TILE_M),
            "conv_transpose2x2 channel tiles",
        )?,
        groups_along(&ctx, b, "conv_transpose2x2 batches")?,
    ];
    let bias_t = bias.unwrap_or(x);
    rec.dispatch(&kernel, &params, &[x, weight, bias_t, x], &[&y], grid)?;
    Ok(y)
}
