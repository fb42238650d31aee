//! Layer norms: PyTorch's `LayerNorm` over the last dim and SAM's `LayerNorm2d` (over the
//! channels of `[B, C, H, W]`), both with biased variance and an optional fused activation
//! on the 2-D one (SAM's upscaling path follows it with GELU).

use crate::error::{Error, Result};
use crate::gpu::kernels::softmax::row_workgroup;
use crate::gpu::kernels::{grid_1d, u32_of, Activation, COMMON_WGSL, WORKGROUP_1D};
use crate::gpu::pipeline::KernelSpec;
use crate::gpu::recorder::Recorder;
use crate::gpu::tensor::GpuTensor;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormParams {
    rows: u32,
    c: u32,
    hw: u32,
    act: u32,
    eps: f32,
    _pad: [u32; 3],
}

fn check_affine(
    op: &str,
    x: &GpuTensor,
    c: usize,
    weight: &GpuTensor,
    bias: &GpuTensor,
) -> Result<()> {
    if weight.shape() != [c] || bias.shape() != [c] {
        return Err(Error::invalid(format!(
            "{op} of x {:?}: weight {:?} and bias {:?} must both be [{c}]",
            x.shape(),
            weight.shape(),
            bias.shape()
        )));
    }
    Ok(())
}

fn record(
    rec: &mut Recorder,
    entry: &str,
    wg: u32,
    params: NormParams,
    tensors: [&GpuTensor; 3],
    grid: [u32; 3],
) -> Result<GpuTensor> {
    let ctx = rec.ctx().clone();
    let key = format!("{entry}_wg{wg}");
    let kernel = ctx.pipelines().get(
        &ctx,
        KernelSpec {
            key: &key,
            entry,
            inputs: 3,
            outputs: 1,
            f16_inputs: 0,
        },
        || {
            format!(
                "{COMMON_WGSL}\nconst WG: u32 = {wg}u;\n{}",
                include_str!("norm.wgsl")
            )
        },
    )?;
    let y = GpuTensor::empty(&ctx, tensors[0].shape())?;
    rec.dispatch(&kernel, &params, &tensors, &[&y], grid)?;
    Ok(y)
}

/// PyTorch's `LayerNorm` over the last dim of `x` (`[.., C]`), `weight` and `bias` `[C]`.
pub fn layer_norm(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: &GpuTensor,
    eps: f32,
) -> Result<GpuTensor> {
    layer_norm_act(rec, x, weight, bias, eps, Activation::None)
}

/// [`layer_norm`], then `act`.
pub fn layer_norm_act(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: &GpuTensor,
    eps: f32,
    act: Activation,
) -> Result<GpuTensor> {
    let c = x.shape().last().copied().unwrap_or(0);
    check_affine("layer_norm", x, c, weight, bias)?;
    if x.numel() == 0 {
        return GpuTensor::empty(rec.ctx(), x.shape());
    }
    let rows = x.numel() / c;
    let params = NormParams {
        rows: u32_of(rows, "rows")?,
        c: u32_of(c, "channels")?,
        hw: 1,
        act: act.code(),
        eps,
        _pad: [0; 3],
    };
    u32_of(x.numel(), "elements")?;
    let grid = rec.ctx().grid(params.rows)?;
    record(
        rec,
        "layer_norm",
        row_workgroup(c),
        params,
        [x, weight, bias],
        grid,
    )
}

/// SAM's `LayerNorm2d`: normalises `x` (`[B, C, H, W]`) over C at each pixel, then
/// `weight[c] * x + bias[c]`, then `act`.
pub fn layer_norm_2d(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: &GpuTensor,
    eps: f32,
    act: Activation,
) -> Result<GpuTensor> {
    let &[b, c, h, w] = x.shape() else {
        return Err(Error::invalid(format!(
            "layer_norm_2d takes x as [B, C, H, W], given {:?}",
            x.shape()
        )));
    };
    check_affine("layer_norm_2d", x, c, weight, bias)?;
    if x.numel() == 0 {
        return GpuTensor::empty(rec.ctx(), x.shape());
    }
    let pixels = b * h * w;
    let params = NormParams {
        rows: u32_of(pixels, "pixels")?,
        c: u32_of(c, "channels")?,
        hw: u32_of(h * w, "pixels per image")?,
        act: act.code(),
        eps,
        _pad: [0; 3],
    };
    u32_of(x.numel(), "elements")?;
    let grid = grid_1d(rec.ctx(), pixels, WORKGROUP_1D)?;
    record(
        rec,
        "layer_norm_2d",
        WORKGROUP_1D,
        params,
        [x, weight, bias],
        grid,
    )
}
