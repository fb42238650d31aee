//! Elementwise kernels: unary activations (GELU in the erf form, ReLU, affine) and binary ops
//! with numpy broadcasting (add, sub, mul) over up to four dims.

use crate::error::{Error, Result};
use crate::gpu::kernels::{grid_1d, u32_of, COMMON_WGSL, WORKGROUP_1D};
use crate::gpu::pipeline::KernelSpec;
use crate::gpu::recorder::Recorder;
use crate::gpu::tensor::GpuTensor;

/// A unary op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    /// GELU, exact erf form.
    Gelu,
    Relu,
    Sigmoid,
    /// `x * scale + shift`.
    Affine {
        scale: f32,
        shift: f32,
    },
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct UnaryParams {
    numel: u32,
    op: u32,
    alpha: f32,
    beta: f32,
}

/// `y = op(x)`.
pub fn unary(rec: &mut Recorder, x: &GpuTensor, op: Unary) -> Result<GpuTensor> {
    let ctx = rec.ctx().clone();
    let kernel = ctx.pipelines().get(
        &ctx,
        KernelSpec {
            key: "unary",
            entry: "main",
            inputs: 1,
            outputs: 1,
            f16_inputs: 0,
        },
        || format!("{COMMON_WGSL}\n{}", include_str!("unary.wgsl")),
    )?;
    let (code, alpha, beta) = match op {
        Unary::Gelu => (0, 0.0, 0.0),
        Unary::Relu => (1, 0.0, 0.0),
        Unary::Affine { scale, shift } => (2, scale, shift),
        Unary::Sigmoid => (3, 0.0, 0.0),
    };
    let y = GpuTensor::empty(&ctx, x.shape())?;
    let params = UnaryParams {
        numel: u32_of(x.numel(), "elements")?,
        op: code,
        alpha,
        beta,
    };
    let grid = grid_1d(&ctx, x.numel(), WORKGROUP_1D)?;
    rec.dispatch(&kernel, &params, &[x], &[&y], grid)?;
    Ok(y)
}

/// A binary op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Max,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BinaryParams {
    numel: u32,
    op: u32,
    _pad: [u32; 2],
    shape: [u32; 4],
    a_strides: [u32; 4],
    b_strides: [u32; 4],
}

/// Rank of the broadcasting kernel.
const MAX_RANK: usize = 4;

/// The broadcast output shape of `a` and `b` (numpy rules), padded to 4 dims, with the
/// strides of each operand in it (0 where it repeats).
fn broadcast(a: &[usize], b: &[usize]) -> Result<([usize; 4], [usize; 4], [usize; 4])> {
    if a.len() > MAX_RANK || b.len() > MAX_RANK {
        return Err(Error::gpu(format!(
            "broadcast of {a:?} and {b:?}: at most {MAX_RANK} dims"
        )));
    }
    let pad = |s: &[usize]| {
        let mut p = [1usize; 4];
        p[MAX_RANK - s.len()..].copy_from_slice(s);
        p
    };
    let (pa, pb) = (pad(a), pad(b));
    let mut out = [1usize; 4];
    for d in 0..MAX_RANK {
        out[d] = match (pa[d], pb[d]) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::invalid(format!(
                    "shapes {a:?} and {b:?} do not broadcast"
                )))
            }
        };
    }
    let strides = |p: [usize; 4]| {
        let mut s = [0usize; 4];
        let mut acc = 1;
        for d in (0..MAX_RANK).rev() {
            s[d] = if p[d] == 1 { 0 } else { acc };
            acc *= p[d];
        }
        s
    };
    Ok((out, strides(pa), strides(pb)))
}

/// `y = a op b`, broadcasting as numpy does.
pub fn binary(rec: &mut Recorder, a: &GpuTensor, b: &GpuTensor, op: Binary) -> Result<GpuTensor> {
    let ctx = rec.ctx().clone();
    let (shape, sa, sb) = broadcast(a.shape(), b.shape())?;
    let kernel = ctx.pipelines().get(
        &ctx,
        KernelSpec {
            key: "binary",
            entry: "main",
            inputs: 2,
            outputs: 1,
            f16_inputs: 0,
        },
        || format!("{COMMON_WGSL}\n{}", include_str!("binary.wgsl")),
    )?;
    let rank = a.rank().max(b.rank());
    let out_shape = &shape[MAX_RANK - rank..];
    let y = GpuTensor::empty(&ctx, out_shape)?;
    let to_u32 = |v: [usize; 4], what: &str| -> Result<[u32; 4]> {
        Ok([
            u32_of(v[0], what)?,
            u32_of(v[1], what)?,
            u32_of(v[2], what)?,
            u32_of(v[3], what)?,
        ])
    };
    let params = BinaryParams {
        numel: u32_of(y.numel(), "elements")?,
        op: match op {
            Binary::Add => 0,
            Binary::Sub => 1,
            Binary::Mul => 2,
            Binary::Max => 3,
        },
        _pad: [0; 2],
        shape: to_u32(shape, "shape")?,
        a_strides: to_u32(sa, "stride")?,
        b_strides: to_u32(sb, "stride")?,
    };
    let grid = grid_1d(&ctx, y.numel(), WORKGROUP_1D)?;
    rec.dispatch(&kernel, &params, &[a, b], &[&y], grid)?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::broadcast;

    #[test]
    fn broadcast_shapes_and_strides() {
        let (out, sa, sb) = broadcast(&[2, 3, 4], &[4]).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(sa, [0, 12, 4, 1]);
        assert_eq!(sb, [0, 0, 0, 1]);
        let (out, _, sb) = broadcast(&[5, 1, 7], &[3, 1]).unwrap();
        assert_eq!(out, [1, 5, 3, 7]);
        assert_eq!(sb, [0, 0, 1, 0]);
        assert!(broadcast(&[2, 3], &[4, 3]).is_err());
    }
}
