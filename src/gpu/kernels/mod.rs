//! One launcher (`.rs`) and one shader (`.wgsl`) per kernel family. Launchers check shapes,
//! fill a `#[repr(C)]` parameter struct that mirrors the WGSL uniform, pick the workgroup grid
//! and record the dispatch. Shapes travel as uniforms, so one pipeline serves every size.

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod resize;
pub mod softmax;

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;

/// An activation fused into a kernel's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    None,
    /// GELU, exact erf form.
    Gelu,
    Relu,
}

impl Activation {
    /// The code `activate()` in `common.wgsl` takes.
    pub fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Gelu => 1,
            Activation::Relu => 2,
        }
    }
}

/// Threads per workgroup of the one-thread-per-element kernels.
pub const WORKGROUP_1D: u32 = 256;

/// WGSL shared by the kernels (erf, GELU), prepended to a kernel's source.
pub const COMMON_WGSL: &str = include_str!("common.wgsl");

/// The grid for `n` threads in workgroups of `wg` threads (split over x and y when large).
pub fn grid_1d(ctx: &GpuContext, n: usize, wg: u32) -> Result<[u32; 3]> {
    let groups = u32::try_from(n.div_ceil(wg as usize))
        .map_err(|_| Error::gpu(format!("{n} threads is too many for one dispatch")))?;
    ctx.grid(groups)
}

/// `usize` to the `u32` a uniform holds, or an error naming what overflowed.
pub fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::gpu(format!("{what} = {v} does not fit in u32")))
}
