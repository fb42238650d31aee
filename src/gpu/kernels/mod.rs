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
use crate::gpu::tensor::GpuDType;

/// An activation fused into a kernel's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    None,
    /// GELU, exact erf form.
    Gelu,
    Relu,
    /// `1 / (1 + exp(-x))` (SAM 2's IoU head).
    Sigmoid,
}

impl Activation {
    /// The code `activate()` in `common.wgsl` takes.
    pub fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Gelu => 1,
            Activation::Relu => 2,
            Activation::Sigmoid => 3,
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

/// One accumulator of a GEMM kernel's multiply loop: `acc += a * b` with `a` a scalar of the A
/// tile and `b` a vec4 of the B tile.
pub(crate) struct Accumulate {
    /// The f32 accumulator (an lvalue: `acc00`, `acc[1]`).
    pub acc: String,
    pub a: String,
    pub b: String,
}

/// Products of an f16 GEMM summed in f16 before they join the f32 accumulators.
///
/// Measured on the trained MobileSAM and real photographs (tests/gpu_real.rs, lavapipe), max
/// |diff| of the low-res logits against the reference from its embedding, and of the embedding:
/// f16 weights with f32 arithmetic 0.026 and 9.6e-4; f16 tiles (activations rounded to f16),
/// f32 sums 0.032 and 2.8e-3; 16-term f16 partials 0.11 and 5.6e-3; 4-term partials 0.076 and
/// 4.1e-3. The partial sums' rounding was the largest share. On the masks from f16 embeddings,
/// 4-term partials left a mask IoU of 0.99896 with the reference on one case (coffee, points),
/// under the 0.999 the tests ask; 2-term partials 0.99928 at the lowest (the f32 path's lowest
/// on these cases is 0.99931), embeddings within 2.4e-3, at 4% more encode time on an H100
/// (docs/PERFORMANCE.md).
pub const F16_PARTIAL_TERMS: u32 = 2;

/// The source of a GEMM kernel (`matmul.wgsl`, `conv.wgsl`) whose weights are `weights`:
/// `header` (consts) and the type aliases `w_t` (weights in memory) and `tile_t` (tiles and
/// products) go before `body`, and its markers become the multiply loop, whose index is `kk`.
/// With f32 weights products are summed (`f32_step`) in f32 partials over one tile of K (the
/// kernel's `BK` = 16), each added to its accumulator after the tile's loop (at `/*FLUSH*/`):
/// a two-level sum, whose rounding grows with the number of tiles rather than with K. On the
/// trained MobileSAM (tests/gpu_real.rs) the decoder's absorbed attention sums 4096 products
/// per output (attention weights times the image's values); summed straight into one
/// accumulator its error was 5x the CPU GEMM's (1.7e-5 against 3.6e-6) and the low-res logits
/// moved 3.2e-4 from the reference. With f16 weights (`enable f16`) products are summed in f16 partials of
/// [`F16_PARTIAL_TERMS`] terms, each then added to its f32 accumulator: f16 products at the
/// f16 rate, with the rounding of a short f16 sum.
pub(crate) fn gemm_source(
    weights: GpuDType,
    header: &str,
    body: &str,
    accs: &[Accumulate],
    f32_step: impl Fn(&Accumulate) -> String,
) -> String {
    let lines = |f: &dyn Fn(usize, &Accumulate) -> String| {
        accs.iter()
            .enumerate()
            .map(|(i, a)| f(i, a))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (enable, partials, products, flush) = match weights {
        GpuDType::F32 => (
            "",
            lines(&|i, _| format!("var part{i} = vec4<f32>(0.0);")),
            lines(&|i, a| {
                f32_step(&Accumulate {
                    acc: format!("part{i}"),
                    a: a.a.clone(),
                    b: a.b.clone(),
                })
            }),
            lines(&|i, a| format!("{} += part{i};", a.acc)),
        ),
        GpuDType::F16 => (
            "enable f16;\n",
            lines(&|i, _| format!("var part{i} = vec4<f16>(0.0);")),
            format!(
                "{}\nif (kk % {F16_PARTIAL_TERMS}u == {}u) {{\n{}\n}}",
                lines(&|i, a| format!("part{i} = fma(vec4({}), {}, part{i});", a.a, a.b)),
                F16_PARTIAL_TERMS - 1,
                lines(&|i, a| format!(
                    "{} += vec4<f32>(part{i});\npart{i} = vec4<f16>(0.0);",
                    a.acc
                )),
            ),
            String::new(),
        ),
    };
    let body = body
        .replace("/*PARTIALS*/", &partials)
        .replace("/*PRODUCTS*/", &products)
        .replace("/*FLUSH*/", &flush);
    let ty = weights.wgsl();
    format!("{enable}{COMMON_WGSL}\n{header}\nalias w_t = {ty};\nalias tile_t = {ty};\n{body}")
}
