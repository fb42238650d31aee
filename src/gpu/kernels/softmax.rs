//! Softmax over the last dim, numerically stable, one workgroup per row.

use crate::error::Result;
use crate::gpu::kernels::u32_of;
use crate::gpu::pipeline::KernelSpec;
use crate::gpu::recorder::Recorder;
use crate::gpu::tensor::GpuTensor;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SoftmaxParams {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

/// Threads per row: a small workgroup for short rows (attention over a few tokens), a wide
/// one for long rows.
pub(crate) fn row_workgroup(cols: usize) -> u32 {
    if cols <= 256 {
        64
    } else {
        256
    }
}

/// `softmax(x)` over the last dim (`exp(x - max) / sum`).
pub fn softmax_last(rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
    let ctx = rec.ctx().clone();
    let y = GpuTensor::empty(&ctx, x.shape())?;
    let cols = x.shape().last().copied().unwrap_or(1);
    if y.numel() == 0 {
        return Ok(y);
    }
    let rows = x.numel() / cols;
    let wg = row_workgroup(cols);
    let key = format!("softmax_last_wg{wg}");
    let kernel = ctx.pipelines().get(
        &ctx,
        KernelSpec {
            key: &key,
            entry: "main",
            inputs: 1,
            outputs: 1,
            f16_inputs: 0,
        },
        || format!("const WG: u32 = {wg}u;\n{}", include_str!("softmax.wgsl")),
    )?;
    let params = SoftmaxParams {
        rows: u32_of(rows, "rows")?,
        cols: u32_of(cols, "row length")?,
        _pad: [0; 2],
    };
    u32_of(x.numel(), "elements")?;
    let grid = ctx.grid(params.rows)?;
    rec.dispatch(&kernel, &params, &[x], &[&y], grid)?;
    Ok(y)
}
