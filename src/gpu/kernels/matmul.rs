//! Matrix multiply with numpy batch broadcasting and a fused epilogue
//! (`act(alpha * a @ b + bias)`), and `linear` (PyTorch's `nn.Linear`) on top of it.

use crate::error::{Error, Result};
use crate::gpu::kernels::{gemm_source, u32_of, Accumulate, Activation};
use crate::gpu::pipeline::KernelSpec;
use crate::gpu::recorder::Recorder;
use crate::gpu::tensor::{GpuDType, GpuTensor};

/// What [`matmul`] does besides `a @ b`.
#[derive(Debug, Clone, Copy)]
pub struct MatmulOpts<'a> {
    /// `b` is `[.., N, K]` (a PyTorch Linear weight) instead of `[.., K, N]`.
    pub trans_b: bool,
    /// `[N]`, added after scaling.
    pub bias: Option<&'a GpuTensor>,
    /// Applied last.
    pub act: Activation,
    /// Scales `a @ b` (before the bias).
    pub alpha: f32,
}

impl Default for MatmulOpts<'_> {
    fn default() -> Self {
        Self {
            trans_b: false,
            bias: None,
            act: Activation::None,
            alpha: 1.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    trans_b: u32,
    has_bias: u32,
    act: u32,
    alpha: f32,
    /// Elements between rows of `a` (K, or more when a slice of K is multiplied).
    lda: u32,
    batch_shape: [u32; 4],
    a_bstride: [u32; 4],
    b_bstride: [u32; 4],
    bias_bstride: [u32; 4],
}

/// Batch dims the kernel walks (more are an error).
const MAX_BATCH_DIMS: usize = 4;

/// The workgroup's shape in threads, each thread computing 8x8 outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    /// Threads along N.
    wg_x: usize,
    /// Threads along M.
    wg_y: usize,
}

/// Outputs per thread along each axis (as in `matmul.wgsl`).
const PER_THREAD: usize = 8;

impl Tile {
    /// 64x64 tiles for large products; 16x128 when M is a handful of tokens (SAM's
    /// decoder), so a workgroup does not compute mostly padding.
    fn for_rows(m: usize) -> Self {
        if m <= 16 {
            Tile { wg_x: 16, wg_y: 2 }
        } else {
            Tile { wg_x: 8, wg_y: 8 }
        }
    }

    fn rows(self) -> usize {
        PER_THREAD * self.wg_y
    }

    fn cols(self) -> usize {
        PER_THREAD * self.wg_x
    }
}

/// Broadcast batch dims: the output's, and each operand's stride (in elements, 0 where it
/// repeats) per output dim, padded in front to [`MAX_BATCH_DIMS`].
struct Batch {
    out: Vec<usize>,
    shape: [usize; MAX_BATCH_DIMS],
    a_stride: [usize; MAX_BATCH_DIMS],
    b_stride: [usize; MAX_BATCH_DIMS],
}

fn broadcast_batch(a: &[usize], b: &[usize], a_mat: usize, b_mat: usize) -> Option<Batch> {
    let rank = a.len().max(b.len());
    if rank > MAX_BATCH_DIMS {
        return None;
    }
    let pad = |s: &[usize]| {
        let mut p = [1usize; MAX_BATCH_DIMS];
        p[MAX_BATCH_DIMS - s.len()..].copy_from_slice(s);
        p
    };
    let (pa, pb) = (pad(a), pad(b));
    let mut shape = [1usize; MAX_BATCH_DIMS];
    for d in 0..MAX_BATCH_DIMS {
        shape[d] = match (pa[d], pb[d]) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    let strides = |p: [usize; MAX_BATCH_DIMS], mat: usize| {
        let mut s = [0usize; MAX_BATCH_DIMS];
        let mut acc = mat;
        for d in (0..MAX_BATCH_DIMS).rev() {
            s[d] = if p[d] == 1 { 0 } else { acc };
            acc *= p[d];
        }
        s
    };
    Some(Batch {
        out: shape[MAX_BATCH_DIMS - rank..].to_vec(),
        shape,
        a_stride: strides(pa, a_mat),
        b_stride: strides(pb, b_mat),
    })
}

fn u32x4(v: [usize; 4], what: &str) -> Result<[u32; 4]> {
    Ok([
        u32_of(v[0], what)?,
        u32_of(v[1], what)?,
        u32_of(v[2], what)?,
        u32_of(v[3], what)?,
    ])
}

/// `act(alpha * a @ b + bias)`: `a` is `[..batch, M, K]`, `b` is `[..batch, K, N]` (or
/// `[..batch, N, K]` with `trans_b`), batch dims broadcast as numpy does (up to four), `bias`
/// is `[N]` or `[..batch, 1, N]` (one row per matrix of the batch, broadcast likewise). The result is `[..batch, M, N]`. An f16 `b` (weights of a model built for f16)
/// runs the f16 kernel (see [`gemm_source`]); `a`, `bias` and the result are f32.
pub fn matmul(
    rec: &mut Recorder,
    a: &GpuTensor,
    b: &GpuTensor,
    opts: &MatmulOpts,
) -> Result<GpuTensor> {
    let (sa, sb) = (a.shape(), b.shape());
    let bad = |why: &str| {
        Error::invalid(format!(
            "matmul of a {sa:?} and b {sb:?}{}: {why}",
            if opts.trans_b { " (b transposed)" } else { "" }
        ))
    };
    if sa.len() < 2 || sb.len() < 2 {
        return Err(bad("both need at least 2 dims"));
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (kb, n) = if opts.trans_b {
        (sb[sb.len() - 1], sb[sb.len() - 2])
    } else {
        (sb[sb.len() - 2], sb[sb.len() - 1])
    };
    if k != kb {
        return Err(bad(&format!("inner dims differ ({k} vs {kb})")));
    }
    let batch = broadcast_batch(&sa[..sa.len() - 2], &sb[..sb.len() - 2], m * k, k * n)
        .ok_or_else(|| {
            bad(&format!(
                "batch dims do not broadcast (at most {MAX_BATCH_DIMS})"
            ))
        })?;
    // The bias: `[N]`, or `[..batch, 1, N]` with batch dims that broadcast to the output's.
    let bias_bstride = match opts.bias {
        None => [0; MAX_BATCH_DIMS],
        Some(bias) => bias_strides(bias.shape(), &batch.shape, n).ok_or_else(|| {
            bad(&format!(
                "bias has shape {:?}, expected [{n}] or [..batch, 1, {n}]",
                bias.shape()
            ))
        })?,
    };

    let mut out_shape = batch.out.clone();
    out_shape.extend([m, n]);
    let matrices: usize = batch.shape.iter().product();
    let tile = Tile::for_rows(m);
    let groups = n.div_ceil(tile.cols()) * m.div_ceil(tile.rows()) * matrices;
    if let Some(split) = split_k(k, groups, matrices, opts) {
        return matmul_split_k(rec, a, b, opts, (m, n, k), split, &out_shape);
    }
    record_gemm(
        rec,
        a,
        b,
        opts,
        (m, n, k, k),
        &batch,
        bias_bstride,
        &out_shape,
    )
}

/// A long reduction (K at least this) over a product of few workgroups is split.
const SPLIT_MIN_K: usize = 2048;
/// Workgroups below which a product is split along K.
const SPLIT_BELOW_GROUPS: usize = 32;
/// Products per slice of a split reduction (at least).
const SPLIT_SLICE: usize = 256;

/// The number of slices to split K into, when a single product (no batch, `b` not transposed,
/// no bias or activation to fuse) would run on few workgroups over a long K: each workgroup
/// walks all of K in order, so a product of `[56, 4096] x [4096, 256]` (the decoder's
/// attention over the image's channels) runs on 4 workgroups for 256 steps.
fn split_k(k: usize, groups: usize, matrices: usize, opts: &MatmulOpts) -> Option<usize> {
    if matrices != 1
        || opts.trans_b
        || opts.bias.is_some()
        || opts.act != Activation::None
        || k < SPLIT_MIN_K
        || groups >= SPLIT_BELOW_GROUPS
    {
        return None;
    }
    [16, 8, 4, 2]
        .into_iter()
        .find(|&s| k.is_multiple_of(s) && k / s >= SPLIT_SLICE)
}

/// `alpha * a @ b` as `split` products over slices of K (one dispatch, the slices a batch),
/// then their sum (a product with a row of ones, scaled by alpha).
fn matmul_split_k(
    rec: &mut Recorder,
    a: &GpuTensor,
    b: &GpuTensor,
    opts: &MatmulOpts,
    (m, n, k): (usize, usize, usize),
    split: usize,
    out_shape: &[usize],
) -> Result<GpuTensor> {
    let slice = k / split;
    let mut shape = [1; MAX_BATCH_DIMS];
    shape[MAX_BATCH_DIMS - 1] = split;
    let mut a_stride = [0; MAX_BATCH_DIMS];
    a_stride[MAX_BATCH_DIMS - 1] = slice;
    let mut b_stride = [0; MAX_BATCH_DIMS];
    b_stride[MAX_BATCH_DIMS - 1] = slice * n;
    let batch = Batch {
        out: vec![split],
        shape,
        a_stride,
        b_stride,
    };
    let plain = MatmulOpts::default();
    let parts = record_gemm(
        rec,
        a,
        b,
        &plain,
        (m, n, slice, k),
        &batch,
        [0; MAX_BATCH_DIMS],
        &[split, m, n],
    )?;
    let ones = rec.ones(split)?;
    let sum = matmul(
        rec,
        &ones,
        &parts.reshape(&[split, m * n])?,
        &MatmulOpts {
            alpha: opts.alpha,
            ..plain
        },
    )?;
    sum.reshape(out_shape)
}

/// Records one GEMM dispatch: `(m, n, k, lda)`, the batch's strides, the bias's batch strides.
#[allow(clippy::too_many_arguments)]
fn record_gemm(
    rec: &mut Recorder,
    a: &GpuTensor,
    b: &GpuTensor,
    opts: &MatmulOpts,
    (m, n, k, lda): (usize, usize, usize, usize),
    batch: &Batch,
    bias_bstride: [usize; MAX_BATCH_DIMS],
    out_shape: &[usize],
) -> Result<GpuTensor> {
    let ctx = rec.ctx().clone();
    let out = GpuTensor::empty(&ctx, out_shape)?;
    if out.numel() == 0 {
        return Ok(out);
    }

    let tile = Tile::for_rows(m);
    let half = b.dtype() == GpuDType::F16;
    let key = format!(
        "matmul{}_t{}x{}",
        if half { "_f16" } else { "" },
        tile.rows(),
        tile.cols()
    );
    let kernel = ctx.pipelines().get(
        &ctx,
        KernelSpec {
            key: &key,
            entry: "main",
            inputs: 3,
            outputs: 1,
            f16_inputs: if half { 0b010 } else { 0 },
        },
        || {
            gemm_source(
                b.dtype(),
                &format!(
                    "const WG_X: u32 = {}u;\nconst WG_Y: u32 = {}u;",
                    tile.wg_x, tile.wg_y
                ),
                include_str!("matmul.wgsl"),
                &matmul_accumulators(),
                |a| format!("{} = fma(vec4({}), {}, {});", a.acc, a.a, a.b, a.acc),
            )
        },
    )?;
    let params = MatmulParams {
        m: u32_of(m, "M")?,
        n: u32_of(n, "N")?,
        k: u32_of(k, "K")?,
        trans_b: opts.trans_b as u32,
        has_bias: opts.bias.is_some() as u32,
        act: opts.act.code(),
        alpha: opts.alpha,
        lda: u32_of(lda, "row stride of a")?,
        batch_shape: u32x4(batch.shape, "batch dim")?,
        a_bstride: u32x4(batch.a_stride, "batch stride")?,
        b_bstride: u32x4(batch.b_stride, "batch stride")?,
        bias_bstride: u32x4(bias_bstride, "bias batch stride")?,
    };
    for (t, what) in [
        (a, "elements of a"),
        (b, "elements of b"),
        (&out, "output elements"),
    ] {
        u32_of(t.numel(), what)?;
    }
    let grid = [
        n.div_ceil(tile.cols()),
        m.div_ceil(tile.rows()),
        batch.shape.iter().product(),
    ];
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    if grid.iter().any(|&g| g > max) {
        return Err(Error::gpu(format!(
            "matmul {out_shape:?} needs a grid of {grid:?} workgroups, over the device's {max} per dimension"
        )));
    }
    // Without a bias, `a` stands in for the unused binding.
    let bias = opts.bias.unwrap_or(a);
    rec.dispatch(
        &kernel,
        &params,
        &[a, b, bias],
        &[&out],
        grid.map(|g| g as u32),
    )?;
    Ok(out)
}

/// The batch strides of a bias of shape `shape` (`[N]` or `[..batch, 1, N]`) over an output
/// with batch dims `out` (padded to [`MAX_BATCH_DIMS`]); `None` if it does not broadcast.
fn bias_strides(
    shape: &[usize],
    out: &[usize; MAX_BATCH_DIMS],
    n: usize,
) -> Option<[usize; MAX_BATCH_DIMS]> {
    let (&last, lead) = shape.split_last()?;
    let lead = match lead.split_last() {
        None => lead,
        Some((&1, lead)) => lead,
        Some(_) => return None,
    };
    if last != n || lead.len() > MAX_BATCH_DIMS {
        return None;
    }
    let mut padded = [1usize; MAX_BATCH_DIMS];
    padded[MAX_BATCH_DIMS - lead.len()..].copy_from_slice(lead);
    let mut strides = [0usize; MAX_BATCH_DIMS];
    let mut acc = n;
    for d in (0..MAX_BATCH_DIMS).rev() {
        if padded[d] != 1 && padded[d] != out[d] {
            return None;
        }
        strides[d] = if padded[d] == 1 { 0 } else { acc };
        acc *= padded[d];
    }
    Some(strides)
}

/// The 8x2 vec4 accumulators of a thread in `matmul.wgsl`: row r of its 8 takes a0.x ..
/// a1.w, column group c takes b0 or b1.
fn matmul_accumulators() -> Vec<Accumulate> {
    let rows = [
        "a0.x", "a0.y", "a0.z", "a0.w", "a1.x", "a1.y", "a1.z", "a1.w",
    ];
    rows.iter()
        .enumerate()
        .flat_map(|(r, a)| {
            (0..2).map(move |c| Accumulate {
                acc: format!("acc{r}{c}"),
                a: a.to_string(),
                b: format!("b{c}"),
            })
        })
        .collect()
}

/// PyTorch's `nn.Linear`: `act(x @ weight^T + bias)` with `x` `[.., K]`, `weight` `[N, K]`
/// and `bias` `[N]`; the result is `[.., N]`.
pub fn linear(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: Option<&GpuTensor>,
    act: Activation,
) -> Result<GpuTensor> {
    let (sx, sw) = (x.shape(), weight.shape());
    let k = sx.last().copied().unwrap_or(0);
    if sx.is_empty() || sw.len() != 2 || sw[1] != k {
        return Err(Error::invalid(format!(
            "linear of x {sx:?} with weight {sw:?}: the weight must be [N, K] with K = x's last dim"
        )));
    }
    let rows = x.numel() / k.max(1);
    let x2 = x.reshape(&[rows, k])?;
    let y = matmul(
        rec,
        &x2,
        weight,
        &MatmulOpts {
            trans_b: true,
            bias,
            act,
            alpha: 1.0,
        },
    )?;
    let mut shape = sx.to_vec();
    *shape.last_mut().expect("rank >= 1") = sw[0];
    y.reshape(&shape)
}

#[cfg(test)]
mod tests {
    use super::broadcast_batch;

    #[test]
    fn batch_dims_broadcast_with_strides() {
        let b = broadcast_batch(&[2, 3], &[], 10, 20).unwrap();
        assert_eq!(b.out, vec![2, 3]);
        assert_eq!(b.shape, [1, 1, 2, 3]);
        assert_eq!(b.a_stride, [0, 0, 30, 10]);
        assert_eq!(b.b_stride, [0, 0, 0, 0]);
        let b = broadcast_batch(&[1], &[5], 10, 20).unwrap();
        assert_eq!(b.out, vec![5]);
        assert_eq!(b.a_stride, [0, 0, 0, 0]);
        assert_eq!(b.b_stride, [0, 0, 0, 20]);
        let b = broadcast_batch(&[4, 1], &[3], 6, 7).unwrap();
        assert_eq!(b.out, vec![4, 3]);
        assert_eq!(b.a_stride, [0, 0, 6, 0]);
        assert_eq!(b.b_stride, [0, 0, 0, 7]);
        assert!(broadcast_batch(&[2], &[3], 1, 1).is_none());
        assert!(broadcast_batch(&[1, 1, 1, 1, 1], &[], 1, 1).is_none());
    }
}
