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
//! in 11 registers.
//!
//! Natively (tests only) the vectors are plain arrays, so that the blocking, packing and edges
//! are checked by `cargo test` too; the SIMD kernel is checked in the browser (tests/web.rs).

use candle_core::{CpuStorage, Layout, Shape};

/// Rows of a kernel's tile. Measured in Chromium (TinyViT encode, one thread, one run): 4x8 and
/// 2x16 alike, 3x12 1.09x slower, 5x8 1.23x, 6x8 1.30x (their accumulators spill).
const MR: usize = 4;
/// Columns of a kernel's tile, a multiple of 4 (two 4-lane vectors).
const NR: usize = 8;
/// Depth of a packed block (the inner products' share computed per pass over C).
const KC: usize = 256;
/// Rows of A packed at a time (a block of `MC x KC` floats stays in the L2 cache).
const MC: usize = 64;
/// Columns of B packed at a time.
const NC: usize = 512;

#[cfg(target_arch = "wasm32")]
mod lanes {
    use core::arch::wasm32::*;

    pub type V = v128;

    #[inline(always)]
    pub unsafe fn load(p: *const f32) -> V {
        v128_load(p as *const v128)
    }
    #[inline(always)]
    pub unsafe fn store(p: *mut f32, v: V) {
        v128_store(p as *mut v128, v)
    }
    #[inline(always)]
    pub unsafe fn splat(p: *const f32) -> V {
        v128_load32_splat(p as *const u32)
    }
    #[inline(always)]
    pub fn zero() -> V {
        f32x4_splat(0.0)
    }
    #[inline(always)]
    pub fn add(a: V, b: V) -> V {
        f32x4_add(a, b)
    }
    /// `a * b + c`, rounded twice (as candle's kernel).
    #[inline(always)]
    pub fn madd(a: V, b: V, c: V) -> V {
        f32x4_add(f32x4_mul(a, b), c)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod lanes {
    pub type V = [f32; 4];

    #[inline(always)]
    pub unsafe fn load(p: *const f32) -> V {
        unsafe { std::ptr::read_unaligned(p as *const V) }
    }
    #[inline(always)]
    pub unsafe fn store(p: *mut f32, v: V) {
        unsafe { std::ptr::write_unaligned(p as *mut V, v) }
    }
    #[inline(always)]
    pub unsafe fn splat(p: *const f32) -> V {
        [unsafe { *p }; 4]
    }
    #[inline(always)]
    pub fn zero() -> V {
        [0.0; 4]
    }
    #[inline(always)]
    pub fn add(a: V, b: V) -> V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    pub fn madd(a: V, b: V, c: V) -> V {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
}

/// One tile: `C[..MR, ..NR] (+)= A_panel . B_panel` over `kc` steps, `a` packed `kc x MR`,
/// `b` packed `kc x NR`; `c` has row stride `ldc`; only `rows x cols` of the tile are written;
/// `add` keeps C's values (a later depth block) where false overwrites them.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    add: bool,
) {
    unsafe {
        let mut acc = [[lanes::zero(); NR / 4]; MR];
        for p in 0..kc {
            let row: [_; NR / 4] = std::array::from_fn(|v| lanes::load(b.add(p * NR + 4 * v)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = lanes::splat(a.add(p * MR + r));
                for (acc, &y) in acc.iter_mut().zip(&row) {
                    *acc = lanes::madd(x, y, *acc);
                }
            }
        }
        if rows == MR && cols == NR {
            for (r, acc) in acc.iter().enumerate() {
                let row = c.add(r * ldc);
                for (v, &x) in acc.iter().enumerate() {
                    let at = row.add(4 * v);
                    lanes::store(
                        at,
                        if add {
                            lanes::add(lanes::load(at), x)
                        } else {
                            x
                        },
                    );
                }
            }
            return;
        }
        let mut tmp = [0f32; MR * NR];
        for (r, acc) in acc.iter().enumerate() {
            for (v, &x) in acc.iter().enumerate() {
                lanes::store(tmp.as_mut_ptr().add(r * NR + 4 * v), x);
            }
        }
        for r in 0..rows {
            for j in 0..cols {
                let at = c.add(r * ldc + j);
                *at = if add {
                    *at + tmp[r * NR + j]
                } else {
                    tmp[r * NR + j]
                };
            }
        }
    }
}

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
}

impl View<'_> {
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
                for (jp, bpanel) in bp.chunks_exact(kc * NR).enumerate() {
                    let j = j0 + jp * NR;
                    let cols = NR.min(n - j);
                    for (ip, apanel) in ap.chunks_exact(kc * MR).enumerate() {
                        let i = i0 + ip * MR;
                        let rows = MR.min(m - i);
                        // SAFETY: the panels hold kc x MR and kc x NR values; the tile's
                        // `rows x cols` lie inside C's m x n (row stride n).
                        unsafe {
                            tile(
                                kc,
                                apanel.as_ptr(),
                                bpanel.as_ptr(),
                                c.as_mut_ptr().add(i * n + j),
                                n,
                                rows,
                                cols,
                                p0 > 0,
                            )
                        };
                    }
                }
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
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < batch_dims[d] {
                        break;
                    }
                    index[d] = 0;
                }
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
