//! f32 matrix products for the CPU path in wasm, on wasm's 128-bit SIMD.
//!
//! candle's GEMM (the `gemm` crate) has one wasm kernel: 12 rows by 4 columns of accumulators,
//! a multiply and an add per product. A profile of a ViT-B encode in Chromium put 81% of the
//! time in it, and building it with relaxed SIMD's fused multiply-add changed the encode by 1%:
//! with 12 accumulators, 3 row vectors and a broadcast, the kernel needs more vector registers
//! than V8 gives a function on x86-64, and the spills, not the arithmetic, set its pace. No
//! maintained crate has a wasm kernel that fits them, so the product is written here: the
//! classic packed, blocked loop nest (a block of B for the L2 cache, panels of A and B for L1)
//! around a kernel of [`MR`] rows by [`NR`] columns whose accumulators, B row and broadcast fit
//! in 11 registers ([`kernel`]).
//!
//! Relaxed SIMD's fused multiply-add (`f32x4.relaxed_madd`) makes the kernel 1.10x faster again,
//! but a module that contains it fails to compile on engines without relaxed SIMD, and LLVM
//! applies one function's wasm features to the whole module (it then lowers clamps elsewhere to
//! `f32x4.relaxed_min/max`, whose NaN results differ between engines). So the fused kernel is a
//! second, small module (`kernels/`: the same [`kernel`] source, no std, no stack) that the JS
//! side instantiates on this module's memory where `WebAssembly.validate` accepts relaxed SIMD,
//! and this module calls it per block ([`set_relaxed_simd`]); elsewhere the portable kernel here
//! runs.
//!
//! Natively (tests only) the vectors are plain arrays, so that the blocking, packing and edges
//! are checked by `cargo test` too; the SIMD kernel is checked in the browser (tests/web.rs).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, Layout, Shape};

pub mod kernel;

use kernel::{MR, NR};

/// Whether blocks go to the relaxed-SIMD kernels module ([`set_relaxed_simd`]).
static RELAXED: AtomicBool = AtomicBool::new(false);

/// Sends the products' blocks to the relaxed-SIMD kernels module from now on (`on`), or keeps
/// them in this module's portable kernel. The JS side turns it on once every thread that runs
/// products (this one and, in the threaded build, each pool worker) has instantiated that module
/// on this memory, where the engine validates relaxed SIMD.
pub fn set_relaxed_simd(on: bool) {
    RELAXED.store(on, Ordering::Relaxed);
}

/// Whether the products run on the relaxed-SIMD kernels module.
pub fn relaxed_simd() -> bool {
    RELAXED.load(Ordering::Relaxed)
}

#[cfg(target_arch = "wasm32")]
mod relaxed {
    use wasm_bindgen::prelude::*;

    // The kernels module's `tiles` ([`super::kernel::tiles`] with `f32x4.relaxed_madd`), as the
    // JS side installs it in each thread's global scope: one name per build, since a worker may
    // hold both builds, each on its own memory.
    #[wasm_bindgen]
    extern "C" {
        #[cfg(not(feature = "threads"))]
        #[wasm_bindgen(js_namespace = websamKernels, js_name = tiles)]
        pub fn tiles(kc: u32, a: u32, mc: u32, b: u32, nc: u32, c: u32, ldc: u32, add: bool);
        #[cfg(feature = "threads")]
        #[wasm_bindgen(js_namespace = websamKernelsMt, js_name = tiles)]
        pub fn tiles(kc: u32, a: u32, mc: u32, b: u32, nc: u32, c: u32, ldc: u32, add: bool);
    }
}

/// One block's tiles ([`kernel::tiles`]) on the kernel in use.
///
/// # Safety
/// As [`kernel::tiles`].
unsafe fn block(k: kernel::Block) {
    #[cfg(target_arch = "wasm32")]
    if relaxed_simd() {
        let u = |x: usize| x as u32;
        let (a, b, c) = (k.a as u32, k.b as u32, k.c as u32);
        relaxed::tiles(u(k.kc), a, u(k.mc), b, u(k.nc), c, u(k.ldc), k.add);
        return;
    }
    // SAFETY: the caller's.
    unsafe { kernel::tiles::<kernel::Plain>(k) }
}

/// Depth of a packed block (the inner products' share computed per pass over C).
const KC: usize = 256;
/// Rows of A packed at a time (a block of `MC x KC` floats stays in the L2 cache).
const MC: usize = 64;
/// Columns of B packed at a time.
const NC: usize = 512;

/// A matrix in a slice: element `(i, j)` at `offset + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    rs: usize,
    cs: usize,
}

impl View<'_> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[self.offset + i * self.rs + j * self.cs]
    }

    /// The transposed matrix: A's rows packed as [`pack`] packs B's columns.
    fn t(self) -> Self {
        View {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// Packs `M[p0.., j0..]` (`kc x nc`) as panels of `W` columns, each `kc x W`, zero-padded: B's
/// panels with `W` = [`NR`], and A's with `W` = [`MR`] from its transpose.
fn pack<const W: usize>(m: View, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(nc.div_ceil(W) * kc * W, 0.0);
    for (panel, dst) in out.chunks_exact_mut(kc * W).enumerate() {
        let j = j0 + panel * W;
        let cols = W.min(j0 + nc - j);
        for (p, row) in dst.chunks_exact_mut(W).enumerate() {
            if m.cs == 1 && cols == W {
                let at = m.offset + (p0 + p) * m.rs + j;
                row.copy_from_slice(&m.data[at..at + W]);
            } else {
                for (c, x) in row[..cols].iter_mut().enumerate() {
                    *x = m.at(p0 + p, j + c);
                }
            }
        }
    }
}

/// `C = A . B` for one matrix: `a` is `m x k`, `b` is `k x n`, `c` (`m x n`, row-major) is
/// overwritten.
fn product(a: View, b: View, c: &mut [f32], m: usize, k: usize, n: usize) {
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let (mut bp, mut ap) = (Vec::new(), Vec::new());
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            pack::<NR>(b, p0, kc, j0, nc, &mut bp);
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                pack::<MR>(a.t(), p0, kc, i0, mc, &mut ap);
                // SAFETY: the panels of the block (packed above: ceil(mc / MR) of kc x MR and
                // ceil(nc / NR) of kc x NR); C's block of mc x nc at (i0, j0), row stride n.
                unsafe {
                    block(kernel::Block {
                        kc,
                        a: ap.as_ptr(),
                        mc,
                        b: bp.as_ptr(),
                        nc,
                        c: c.as_mut_ptr().add(i0 * n + j0),
                        ldc: n,
                        add: p0 > 0,
                    })
                };
            }
        }
    }
}

/// The product as a candle op: `[.., M, K] x [.., K, N]` with the same batch dims, any strides,
/// f32; the result contiguous.
pub(crate) struct Matmul;

impl candle_core::CustomOp2 for Matmul {
    fn name(&self) -> &'static str {
        "simd-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("simd-matmul: only f32 is supported");
        };
        let (da, db) = (l1.dims(), l2.dims());
        let rank = da.len();
        if rank < 2
            || db.len() != rank
            || da[..rank - 2] != db[..rank - 2]
            || da[rank - 1] != db[rank - 2]
        {
            candle_core::bail!("simd-matmul: shapes {da:?} and {db:?} do not multiply");
        }
        let (m, k, n) = (da[rank - 2], da[rank - 1], db[rank - 1]);
        let (sa, sb) = (l1.stride(), l2.stride());
        let batch_dims = &da[..rank - 2];
        let batches: usize = batch_dims.iter().product();
        let mut out = vec![0f32; batches * m * n];
        let mut index = vec![0usize; batch_dims.len()];
        if m * n > 0 {
            for c in out.chunks_exact_mut(m * n) {
                let (mut oa, mut ob) = (l1.start_offset(), l2.start_offset());
                for (d, &i) in index.iter().enumerate() {
                    oa += i * sa[d];
                    ob += i * sb[d];
                }
                let va = View {
                    data: a,
                    offset: oa,
                    rs: sa[rank - 2],
                    cs: sa[rank - 1],
                };
                let vb = View {
                    data: b,
                    offset: ob,
                    rs: sb[rank - 2],
                    cs: sb[rank - 1],
                };
                product(va, vb, c, m, k, n);
                crate::model::ops::next_index(&mut index, batch_dims);
            }
        }
        let mut shape = batch_dims.to_vec();
        shape.extend([m, n]);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::max_abs_diff;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                ((h >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every tile edge, depth block and column block, strided operands, batches: within 1e-4 of
    /// candle's product.
    #[test]
    fn matches_candle() {
        let dev = Device::Cpu;
        for &(batch, m, k, n) in &[
            (1, 1, 1, 1),
            (1, 5, 3, 9),
            (2, 7, 300, 13),
            (1, 64, 256, 512),
            (3, 67, 513, 530),
            (1, 4, 0, 8),
            (1, 130, 70, 1030),
        ] {
            let a = Tensor::from_vec(values(batch * m * k, 1), (batch, m, k), &dev).unwrap();
            let b = Tensor::from_vec(values(batch * k * n, 2), (batch, k, n), &dev).unwrap();
            let want = a.matmul(&b).unwrap();
            let got = a.apply_op2_no_bwd(&b, &Matmul).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-4, "{batch}x{m}x{k}x{n}");
            // The same matrices as column-strided views.
            let strided = |x: &Tensor| {
                let t = x.transpose(1, 2).unwrap().contiguous().unwrap();
                t.transpose(1, 2).unwrap()
            };
            let got = strided(&a).apply_op2_no_bwd(&strided(&b), &Matmul).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-4, "transposed {batch}x{m}x{k}x{n}");
        }
        let a = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros((2, 5, 4), candle_core::DType::F32, &dev).unwrap();
        assert!(a.apply_op2_no_bwd(&b, &Matmul).is_err());
    }
}
