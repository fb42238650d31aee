//! Bilinear resize of NCHW planes, as `F.interpolate(mode="bilinear", align_corners=False)`
//! followed by a crop to the top-left corner: SAM's `postprocess_masks` (low-res logits to
//! 1024, crop to the resized image, then to the original size) in two dispatches, with the
//! same f32 arithmetic as [`crate::image::postprocess_logits`].

use crate::error::{Error, Result};
use crate::gpu::kernels::u32_of;
use crate::gpu::pipeline::KernelSpec;
use crate::gpu::recorder::Recorder;
use crate::gpu::tensor::GpuTensor;

/// Workgroup side (16 x 16 output pixels).
const TILE: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ResizeParams {
    in_h: u32,
    in_w: u32,
    keep_h: u32,
    keep_w: u32,
    scale_h: f32,
    scale_w: f32,
    _pad: [u32; 2],
}

/// `x` `[B, C, H, W]` resized bilinearly (`align_corners=False`) to `out_h x out_w`, of which
/// only the top-left `keep_h x keep_w` block is computed and returned: `[B, C, keep_h, keep_w]`.
pub fn resize_bilinear(
    rec: &mut Recorder,
    x: &GpuTensor,
    out_h: usize,
    out_w: usize,
    keep_h: usize,
    keep_w: usize,
) -> Result<GpuTensor> {
    let &[b, c, in_h, in_w] = x.shape() else {
        return Err(Error::invalid(format!(
            "resize_bilinear: input {:?} must be 4-d (NCHW)",
            x.shape()
        )));
    };
    if in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
        return Err(Error::invalid(format!(
            "resize_bilinear: cannot resize {in_h}x{in_w} to {out_h}x{out_w}"
        )));
    }
    if keep_h > out_h || keep_w > out_w {
        return Err(Error::invalid(format!(
            "resize_bilinear: cannot keep {keep_h}x{keep_w} of a {out_h}x{out_w} output"
        )));
    }
    let ctx = rec.ctx().clone();
    let kernel = ctx.pipelines().get(
        &ctx,
        KernelSpec {
            key: "resize_bilinear_t16x16",
            entry: "main",
            inputs: 1,
            outputs: 1,
            f16_inputs: 0,
        },
        || include_str!("resize.wgsl").to_owned(),
    )?;
    let y = GpuTensor::empty(&ctx, &[b, c, keep_h, keep_w])?;
    u32_of(x.numel(), "input values")?;
    u32_of(y.numel(), "output values")?;
    let params = ResizeParams {
        in_h: u32_of(in_h, "input height")?,
        in_w: u32_of(in_w, "input width")?,
        keep_h: u32_of(keep_h, "kept height")?,
        keep_w: u32_of(keep_w, "kept width")?,
        // As websam::image::linear_taps: the ratio of the two sizes in f32.
        scale_h: in_h as f32 / out_h as f32,
        scale_w: in_w as f32 / out_w as f32,
        _pad: [0; 2],
    };
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    let planes = b * c;
    if planes > max || keep_h.div_ceil(TILE) > max || keep_w.div_ceil(TILE) > max {
        return Err(Error::gpu(format!(
            "resize_bilinear: {planes} planes of {keep_h}x{keep_w} exceed the device's grid ({max} workgroups per dimension)"
        )));
    }
    let grid = [
        keep_w.div_ceil(TILE) as u32,
        keep_h.div_ceil(TILE) as u32,
        planes as u32,
    ];
    rec.dispatch(&kernel, &params, &[x], &[&y], grid)?;
    Ok(y)
}
