//! Layout kernels over contiguous f32 tensors: [`permute`] (a tiled transpose when the
//! permutation is a batched 2-D transpose, as TinyViT's tokens <-> NCHW are, else a strided
//! gather), [`pad`], [`slice`], [`concat`], and TinyViT's [`window_partition`] and
//! [`window_reverse`], one pass each with the padding, crop and residual add fused.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::{grid_1d, u32_of, COMMON_WGSL, WORKGROUP_1D};
use crate::gpu::pipeline::{Kernel, KernelSpec};
use crate::gpu::recorder::Recorder;
use crate::gpu::tensor::GpuTensor;

/// Highest rank of [`permute`], [`pad`] and [`slice`].
pub const MAX_RANK: usize = 6;
/// Slots of the gather kernel's uniform arrays (two vec4).
const SLOTS: usize = 8;
/// Side of the transpose kernel's tile.
const TRANSPOSE_TILE: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GatherParams {
    numel: u32,
    rank: u32,
    value: f32,
    _pad: u32,
    out_shape: [u32; SLOTS],
    src_dims: [u32; SLOTS],
    src_strides: [u32; SLOTS],
    offset: [i32; SLOTS],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TransposeParams {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ConcatParams {
    numel: u32,
    span: u32,
    out_span: u32,
    start: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct WindowParams {
    numel: u32,
    c: u32,
    h: u32,
    w: u32,
    ws: u32,
    n_h: u32,
    n_w: u32,
    has_residual: u32,
}

fn kernel(
    ctx: &GpuContext,
    key: &str,
    entry: &str,
    inputs: usize,
    source: &str,
) -> Result<Arc<Kernel>> {
    ctx.pipelines().get(
        ctx,
        KernelSpec {
            key,
            entry,
            inputs,
            outputs: 1,
            f16_inputs: 0,
        },
        || format!("{COMMON_WGSL}\n{source}"),
    )
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// The gather kernel: output `out_shape`; output dim `d` reads source coordinate
/// `o + offset[d]`, valid in `[0, src_dims[d])`, at stride `src_strides[d]`; `value` elsewhere.
fn gather(
    rec: &mut Recorder,
    x: &GpuTensor,
    out_shape: &[usize],
    src_dims: &[usize],
    src_strides: &[usize],
    offset: &[i64],
    value: f32,
) -> Result<GpuTensor> {
    let ctx = rec.ctx().clone();
    let k = kernel(
        &ctx,
        "layout_gather",
        "main",
        1,
        include_str!("layout_gather.wgsl"),
    )?;
    let y = GpuTensor::empty(&ctx, out_shape)?;
    u32_of(x.numel(), "input values")?;
    let mut params = GatherParams {
        numel: u32_of(y.numel(), "output values")?,
        rank: out_shape.len() as u32,
        value,
        _pad: 0,
        out_shape: [1; SLOTS],
        src_dims: [1; SLOTS],
        src_strides: [0; SLOTS],
        offset: [0; SLOTS],
    };
    for d in 0..out_shape.len() {
        params.out_shape[d] = u32_of(out_shape[d], "dimension")?;
        params.src_dims[d] = u32_of(src_dims[d], "dimension")?;
        params.src_strides[d] = u32_of(src_strides[d], "stride")?;
        params.offset[d] = i32::try_from(offset[d])
            .map_err(|_| Error::gpu(format!("offset {} does not fit in i32", offset[d])))?;
    }
    let grid = grid_1d(&ctx, y.numel(), WORKGROUP_1D)?;
    rec.dispatch(&k, &params, &[x], &[&y], grid)?;
    Ok(y)
}

/// The permutation with size-1 dims dropped and dims that stay neighbours merged: returns the
/// merged source shape and the permutation over it (`[0, 2, 1]` for `[B, HW, C] -> [B, C, HW]`
/// and for `[B, H, W, C] -> [B, C, H, W]`).
fn simplify_permutation(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let kept: Vec<usize> = perm.iter().copied().filter(|&d| shape[d] != 1).collect();
    // Runs of consecutive source dims, in output order.
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for d in kept {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|&l| l + 1 == d) => run.push(d),
            _ => runs.push(vec![d]),
        }
    }
    // Dims between two kept ones are size 1, so runs sorted by first dim tile the source.
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by_key(|&r| runs[r][0]);
    let merged_shape = order
        .iter()
        .map(|&r| runs[r].iter().map(|&d| shape[d]).product())
        .collect();
    let merged_perm = (0..runs.len())
        .map(|r| order.iter().position(|&o| o == r).expect("a run"))
        .collect();
    (merged_shape, merged_perm)
}

/// `x.permute(perm)` made contiguous (rank <= 6): output dim `i` is input dim `perm[i]`.
pub fn permute(rec: &mut Recorder, x: &GpuTensor, perm: &[usize]) -> Result<GpuTensor> {
    let shape = x.shape();
    let mut seen = [false; MAX_RANK];
    if perm.len() != shape.len()
        || perm.len() > MAX_RANK
        || perm
            .iter()
            .any(|&d| d >= perm.len() || std::mem::replace(&mut seen[d], true))
    {
        return Err(Error::invalid(format!(
            "permute: {perm:?} is not a permutation of the {} dims of {shape:?} (at most {MAX_RANK})",
            shape.len()
        )));
    }
    let out_shape: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
    let (merged, mperm) = simplify_permutation(shape, perm);
    let batched = match (merged.as_slice(), mperm.as_slice()) {
        (&[r, s], [1, 0]) => Some((1, r, s)),
        (&[b, r, s], [0, 2, 1]) => Some((b, r, s)),
        _ => None,
    };
    let ctx = rec.ctx().clone();
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    if let Some((batch, rows, cols)) = batched {
        let grid = [
            cols.div_ceil(TRANSPOSE_TILE),
            rows.div_ceil(TRANSPOSE_TILE),
            batch,
        ];
        if grid.iter().all(|&g| g <= max) {
            let k = kernel(
                &ctx,
                "layout_transpose_t16x16",
                "main",
                1,
                include_str!("layout_transpose.wgsl"),
            )?;
            let y = GpuTensor::empty(&ctx, &out_shape)?;
            u32_of(y.numel(), "values")?;
            let params = TransposeParams {
                rows: u32_of(rows, "rows")?,
                cols: u32_of(cols, "columns")?,
                _pad: [0; 2],
            };
            rec.dispatch(
                &k,
                &params,
                &[x],
                &[&y],
                [grid[0] as u32, grid[1] as u32, grid[2] as u32],
            )?;
            return Ok(y);
        }
    }
    let st = strides(shape);
    let src_dims: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
    let src_strides: Vec<usize> = perm.iter().map(|&d| st[d]).collect();
    let offset = vec![0i64; perm.len()];
    gather(rec, x, &out_shape, &src_dims, &src_strides, &offset, 0.0)
}

/// `x` padded with `value`: `pads[d] = (before, after)` for every dim (rank <= 6), as
/// `F.pad` with the pairs given in dim order.
pub fn pad(
    rec: &mut Recorder,
    x: &GpuTensor,
    pads: &[(usize, usize)],
    value: f32,
) -> Result<GpuTensor> {
    let shape = x.shape();
    if pads.len() != shape.len() || shape.len() > MAX_RANK {
        return Err(Error::invalid(format!(
            "pad: {} (before, after) pairs for the {} dims of {shape:?} (at most {MAX_RANK})",
            pads.len(),
            shape.len()
        )));
    }
    let out_shape: Vec<usize> = shape
        .iter()
        .zip(pads)
        .map(|(&n, &(a, b))| n + a + b)
        .collect();
    let offset: Vec<i64> = pads.iter().map(|&(a, _)| -(a as i64)).collect();
    gather(rec, x, &out_shape, shape, &strides(shape), &offset, value)
}

/// `x.narrow(dim, start, len)` made contiguous (rank <= 6).
pub fn slice(
    rec: &mut Recorder,
    x: &GpuTensor,
    dim: usize,
    start: usize,
    len: usize,
) -> Result<GpuTensor> {
    let shape = x.shape();
    if dim >= shape.len() || shape.len() > MAX_RANK || start + len > shape[dim] {
        return Err(Error::invalid(format!(
            "slice: [{start}, {}) of dim {dim} is out of range for {shape:?}",
            start + len
        )));
    }
    let mut out_shape = shape.to_vec();
    out_shape[dim] = len;
    let mut offset = vec![0i64; shape.len()];
    offset[dim] = start as i64;
    gather(rec, x, &out_shape, shape, &strides(shape), &offset, 0.0)
}

/// The tensors joined along `dim`; all other dims must agree.
pub fn concat(rec: &mut Recorder, tensors: &[&GpuTensor], dim: usize) -> Result<GpuTensor> {
    let Some(first) = tensors.first() else {
        return Err(Error::invalid("concat: no tensors"));
    };
    let shape = first.shape();
    if dim >= shape.len() {
        return Err(Error::invalid(format!(
            "concat: dim {dim} out of range for {shape:?}"
        )));
    }
    let fits =
        |s: &[usize]| s.len() == shape.len() && (0..s.len()).all(|d| d == dim || s[d] == shape[d]);
    if let Some(bad) = tensors.iter().find(|t| !fits(t.shape())) {
        return Err(Error::invalid(format!(
            "concat along dim {dim}: {:?} does not match {shape:?}",
            bad.shape()
        )));
    }
    let out_len: usize = tensors.iter().map(|t| t.dim(dim)).sum();
    let mut out_shape = shape.to_vec();
    out_shape[dim] = out_len;
    let inner: usize = shape[dim + 1..].iter().product();
    let ctx = rec.ctx().clone();
    let k = kernel(
        &ctx,
        "layout_concat",
        "main",
        1,
        include_str!("layout_concat.wgsl"),
    )?;
    let y = GpuTensor::empty(&ctx, &out_shape)?;
    u32_of(y.numel(), "output values")?;
    let mut offset = 0;
    for t in tensors {
        let len = t.dim(dim);
        let params = ConcatParams {
            numel: u32_of(t.numel(), "values")?,
            // At least 1: an empty input dispatches nothing, but must not divide by zero.
            span: u32_of((len * inner).max(1), "span")?,
            out_span: u32_of(out_len * inner, "span")?,
            start: u32_of(offset * inner, "offset")?,
        };
        let grid = grid_1d(&ctx, t.numel(), WORKGROUP_1D)?;
        if t.numel() > 0 {
            rec.dispatch(&k, &params, &[t], &[&y], grid)?;
        }
        offset += len;
    }
    Ok(y)
}

/// Windows of a `(h, w)` token grid: `(n_h, n_w)`, the grid padded up to multiples of `ws`.
fn window_counts((h, w): (usize, usize), ws: usize) -> (usize, usize) {
    (h.div_ceil(ws), w.div_ceil(ws))
}

/// TinyViT's window partition in one pass: tokens `[B, h*w, C]` (row-major `h x w` grid) ->
/// `[B * nH * nW, ws * ws, C]`, the grid zero-padded at the bottom and right to multiples of
/// `ws` first (`F.pad`, `view(B, nH, ws, nW, ws, C)`, `transpose(2, 3)`, `reshape`).
pub fn window_partition(
    rec: &mut Recorder,
    x: &GpuTensor,
    (h, w): (usize, usize),
    ws: usize,
) -> Result<GpuTensor> {
    let &[b, l, c] = x.shape() else {
        return Err(Error::invalid(format!(
            "window_partition: tokens {:?} must be [B, H*W, C]",
            x.shape()
        )));
    };
    if l != h * w || ws == 0 {
        return Err(Error::invalid(format!(
            "window_partition: tokens {:?} for a {h}x{w} grid in windows of {ws}",
            x.shape()
        )));
    }
    let (n_h, n_w) = window_counts((h, w), ws);
    let out_shape = [b * n_h * n_w, ws * ws, c];
    window_dispatch(rec, "window_partition", x, None, &out_shape, (h, w, c), ws)
}

/// TinyViT's window reverse in one pass: windows `[B * nH * nW, ws * ws, C]` -> tokens
/// `[B, h*w, C]`, the padding cropped, plus `residual` (`[B, h*w, C]`) when given.
pub fn window_reverse(
    rec: &mut Recorder,
    windows: &GpuTensor,
    (h, w): (usize, usize),
    ws: usize,
    residual: Option<&GpuTensor>,
) -> Result<GpuTensor> {
    let (n_h, n_w) = window_counts((h, w), ws.max(1));
    let &[nb, n, c] = windows.shape() else {
        return Err(Error::invalid(format!(
            "window_reverse: windows {:?} must be [B * nH * nW, ws * ws, C]",
            windows.shape()
        )));
    };
    if ws == 0 || n != ws * ws || h == 0 || w == 0 || nb % (n_h * n_w) != 0 {
        return Err(Error::invalid(format!(
            "window_reverse: windows {:?} for a {h}x{w} grid in windows of {ws}",
            windows.shape()
        )));
    }
    let out_shape = [nb / (n_h * n_w), h * w, c];
    if let Some(r) = residual {
        if r.shape() != out_shape {
            return Err(Error::invalid(format!(
                "window_reverse: residual {:?} for an output of shape {out_shape:?}",
                r.shape()
            )));
        }
    }
    window_dispatch(
        rec,
        "window_reverse",
        windows,
        residual,
        &out_shape,
        (h, w, c),
        ws,
    )
}

fn window_dispatch(
    rec: &mut Recorder,
    entry: &str,
    x: &GpuTensor,
    residual: Option<&GpuTensor>,
    out_shape: &[usize],
    (h, w, c): (usize, usize, usize),
    ws: usize,
) -> Result<GpuTensor> {
    let ctx = rec.ctx().clone();
    let k = kernel(
        &ctx,
        &format!("layout_{entry}"),
        entry,
        2,
        include_str!("layout_window.wgsl"),
    )?;
    let y = GpuTensor::empty(&ctx, out_shape)?;
    u32_of(x.numel(), "input values")?;
    let (n_h, n_w) = window_counts((h, w), ws);
    let params = WindowParams {
        numel: u32_of(y.numel(), "output values")?,
        c: u32_of(c.max(1), "channels")?,
        h: u32_of(h, "height")?,
        w: u32_of(w, "width")?,
        ws: u32_of(ws, "window")?,
        n_h: u32_of(n_h, "window rows")?,
        n_w: u32_of(n_w, "window columns")?,
        has_residual: residual.is_some() as u32,
    };
    let grid = grid_1d(&ctx, y.numel(), WORKGROUP_1D)?;
    rec.dispatch(&k, &params, &[x, residual.unwrap_or(x)], &[&y], grid)?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::simplify_permutation;

    #[test]
    fn permutations_reduce_to_batched_transposes() {
        // Tokens <-> NCHW.
        let (s, p) = simplify_permutation(&[2, 4096, 64], &[0, 2, 1]);
        assert_eq!((s, p), (vec![2, 4096, 64], vec![0, 2, 1]));
        let (s, p) = simplify_permutation(&[1, 64, 64, 160], &[0, 3, 1, 2]);
        assert_eq!((s, p), (vec![4096, 160], vec![1, 0]));
        let (s, p) = simplify_permutation(&[2, 160, 64, 64], &[0, 2, 3, 1]);
        assert_eq!((s, p), (vec![2, 160, 4096], vec![0, 2, 1]));
        // Identity and a general one.
        let (s, p) = simplify_permutation(&[3, 4, 5], &[0, 1, 2]);
        assert_eq!((s, p), (vec![60], vec![0]));
        let (s, p) = simplify_permutation(&[2, 3, 4, 5], &[2, 0, 3, 1]);
        assert_eq!((s, p), (vec![2, 3, 4, 5], vec![2, 0, 3, 1]));
    }
}
