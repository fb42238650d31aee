//! The GEMM's kernel: tiles of [`MR`] rows by [`NR`] columns over packed panels. One source for
//! two modules: the main module ([`super`]) instantiates it with the portable multiply and add,
//! the relaxed-SIMD kernels module (`kernels/`, a separate small wasm module built with
//! `+relaxed-simd`) with `f32x4.relaxed_madd`. `core` only (that module has no std), and no
//! stack: that module shares the main module's memory but not its stack, so every value stays in
//! locals (`./build.sh package` checks its code for stack-pointer writes).

/// Rows of a kernel's tile. Measured in Chromium (TinyViT encode, one thread, one run): 4x8 and
/// 2x16 alike, 3x12 1.09x slower, 5x8 1.23x, 6x8 1.30x (their accumulators spill).
pub const MR: usize = 4;
/// Columns of a kernel's tile, a multiple of 4 (two 4-lane vectors).
pub const NR: usize = 8;
/// Vectors in a tile's row.
const NV: usize = NR / 4;

#[cfg(target_arch = "wasm32")]
mod lanes {
    use core::arch::wasm32::*;

    pub type V = v128;

    #[inline(always)]
    pub unsafe fn load(p: *const f32) -> V {
        unsafe { v128_load(p as *const v128) }
    }
    #[inline(always)]
    pub unsafe fn store(p: *mut f32, v: V) {
        unsafe { v128_store(p as *mut v128, v) }
    }
    #[inline(always)]
    pub unsafe fn splat(p: *const f32) -> V {
        unsafe { v128_load32_splat(p as *const u32) }
    }
    #[inline(always)]
    pub fn zero() -> V {
        f32x4_splat(0.0)
    }
    #[inline(always)]
    pub fn add(a: V, b: V) -> V {
        f32x4_add(a, b)
    }
    #[inline(always)]
    pub fn mul_add(a: V, b: V, c: V) -> V {
        f32x4_add(f32x4_mul(a, b), c)
    }
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    pub fn fused_mul_add(a: V, b: V, c: V) -> V {
        f32x4_relaxed_madd(a, b, c)
    }
    /// Lane `l` (< 4) of `v`.
    #[inline(always)]
    pub fn lane(v: V, l: usize) -> f32 {
        match l {
            0 => f32x4_extract_lane::<0>(v),
            1 => f32x4_extract_lane::<1>(v),
            2 => f32x4_extract_lane::<2>(v),
            _ => f32x4_extract_lane::<3>(v),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod lanes {
    pub type V = [f32; 4];

    #[inline(always)]
    pub unsafe fn load(p: *const f32) -> V {
        unsafe { core::ptr::read_unaligned(p as *const V) }
    }
    #[inline(always)]
    pub unsafe fn store(p: *mut f32, v: V) {
        unsafe { core::ptr::write_unaligned(p as *mut V, v) }
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
        core::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    pub fn mul_add(a: V, b: V, c: V) -> V {
        core::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    pub fn lane(v: V, l: usize) -> f32 {
        v[l]
    }
}

/// The kernel's multiply-add.
pub trait Madd {
    fn madd(a: lanes::V, b: lanes::V, c: lanes::V) -> lanes::V;
}

/// `a * b + c` rounded twice: wasm's base SIMD (the main module).
pub struct Plain;

impl Madd for Plain {
    #[inline(always)]
    fn madd(a: lanes::V, b: lanes::V, c: lanes::V) -> lanes::V {
        lanes::mul_add(a, b, c)
    }
}

/// `f32x4.relaxed_madd`: fused where the engine fuses it (x86-64 with FMA, arm64), else as
/// [`Plain`] (the kernels module).
#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
pub struct Fused;

#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
impl Madd for Fused {
    #[inline(always)]
    fn madd(a: lanes::V, b: lanes::V, c: lanes::V) -> lanes::V {
        lanes::fused_mul_add(a, b, c)
    }
}

/// One tile: `C[..MR, ..NR] (+)= A_panel . B_panel` over `kc` steps, `a` packed `kc x MR`,
/// `b` packed `kc x NR`; `c` has row stride `ldc`; only `rows x cols` of the tile are written;
/// `add` keeps C's values (a later depth block) where false overwrites them.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<F: Madd>(
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
        let mut acc = [[lanes::zero(); NV]; MR];
        for p in 0..kc {
            let row: [_; NV] = core::array::from_fn(|v| lanes::load(b.add(p * NR + 4 * v)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = lanes::splat(a.add(p * MR + r));
                for (acc, &y) in acc.iter_mut().zip(&row) {
                    *acc = F::madd(x, y, *acc);
                }
            }
        }
        // Constant indices only (no break), so that the accumulators stay in locals.
        #[allow(clippy::needless_range_loop)]
        for r in 0..MR {
            if r >= rows {
                continue;
            }
            for v in 0..NV {
                let x = acc[r][v];
                let at = c.add(r * ldc + 4 * v);
                if 4 * v + 4 <= cols {
                    let x = if add {
                        lanes::add(lanes::load(at), x)
                    } else {
                        x
                    };
                    lanes::store(at, x);
                } else {
                    for l in 0..cols.saturating_sub(4 * v) {
                        let y = lanes::lane(x, l);
                        *at.add(l) = if add { *at.add(l) + y } else { y };
                    }
                }
            }
        }
    }
}

/// One packed block of a product: `C[..mc, ..nc] (+)= A . B` over `kc` steps, with `a` the
/// block's A panels (`ceil(mc / MR)` of `kc x MR`), `b` its B panels (`ceil(nc / NR)` of
/// `kc x NR`), `c` its corner in C (row stride `ldc`); `add` keeps C's values (a later depth
/// block).
#[derive(Clone, Copy)]
pub struct Block {
    pub kc: usize,
    pub a: *const f32,
    pub mc: usize,
    pub b: *const f32,
    pub nc: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub add: bool,
}

/// Every tile of one [`Block`].
///
/// # Safety
/// `a` and `b` hold the block's panels; `c` is valid for `mc` rows of `nc` values at row stride
/// `ldc`.
#[inline(always)]
pub unsafe fn tiles<F: Madd>(k: Block) {
    let mut j = 0;
    while j < k.nc {
        let mut i = 0;
        while i < k.mc {
            // SAFETY: panel i / MR of A and j / NR of B; the tile lies in C's mc x nc.
            unsafe {
                tile::<F>(
                    k.kc,
                    k.a.add(i * k.kc),
                    k.b.add(j * k.kc),
                    k.c.add(i * k.ldc + j),
                    k.ldc,
                    (k.mc - i).min(MR),
                    (k.nc - j).min(NR),
                    k.add,
                )
            };
            i += MR;
        }
        j += NR;
    }
}
