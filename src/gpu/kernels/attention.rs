//! Fused multi-head attention, `softmax(scale * q @ k^T + bias) @ v`, one dispatch: scores
//! live in registers, never in memory (online softmax). SAM's decoder attends a few tokens
//! to 4096 image positions and back; TinyViT attends within 7x7 or 14x14 windows with a
//! learned bias per head.

use crate::error::{Error, Result};
use crate::gpu::kernels::u32_of;
use crate::gpu::pipeline::KernelSpec;
use crate::gpu::recorder::Recorder;
use crate::gpu::tensor::GpuTensor;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AttentionParams {
    bh: u32,
    h: u32,
    nq: u32,
    nk: u32,
    scale: f32,
    has_bias: u32,
    q_tiles: u32,
    rel_kw: u32,
    /// Elements between batches, heads and rows of q, of k and v, and of the output.
    q_s: [u32; 4],
    kv_s: [u32; 4],
    o_s: [u32; 4],
}

/// Threads per workgroup, both entry points.
const WG: usize = 64;
/// Largest head dim (q and o are held in registers).
pub const MAX_HEAD_DIM: usize = 128;
/// Floats of keys (and as many of values) per workgroup-memory tile of `attn_rows`: 4 KiB
/// each.
const TILE_FLOATS: usize = 1024;
/// `attn_split` merges WG partial rows of D floats in workgroup memory: 8 KiB at D = 32.
const SPLIT_MAX_HEAD_DIM: usize = 32;

/// The kernel for a shape: a workgroup per query row when there are few queries and many
/// keys, else a thread per query row.
fn use_split(nq: usize, nk: usize, d: usize) -> bool {
    d <= SPLIT_MAX_HEAD_DIM && nk >= 4 * WG && nq <= WG
}

/// What is added to the scaled scores.
#[derive(Debug, Clone, Copy)]
enum Bias<'a> {
    None,
    /// `[H, Nq, Nk]`, shared over B.
    Table(&'a GpuTensor),
    /// `[B, H, Nq, kh + kw]` for keys on a `kh x kw` grid: row terms, then column terms.
    RelPos(&'a GpuTensor, usize),
}

impl<'a> Bias<'a> {
    fn tensor(self) -> Option<&'a GpuTensor> {
        match self {
            Bias::None => None,
            Bias::Table(t) | Bias::RelPos(t, _) => Some(t),
        }
    }
}

/// Where the rows of q, k and v lie: heads apart (`[B, H, N, D]`) or side by side in each
/// token (`[B, N, H * D]`, a linear layer's output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Heads,
    Tokens,
}

impl Layout {
    /// (batch, head, row) strides of a tensor of `n` rows.
    fn strides(self, h: usize, n: usize, d: usize) -> [usize; 3] {
        match self {
            Layout::Heads => [h * n * d, n * d, d],
            Layout::Tokens => [n * h * d, d, h * d],
        }
    }
}

/// `softmax(scale * q @ k^T + bias) @ v` with q `[B, H, Nq, D]`, k and v `[B, H, Nk, D]`,
/// bias `[H, Nq, Nk]` (shared over B, added to the scaled scores); the result is
/// `[B, H, Nq, D]`. D is at most [`MAX_HEAD_DIM`].
pub fn attention(
    rec: &mut Recorder,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    bias: Option<&GpuTensor>,
    scale: f32,
) -> Result<GpuTensor> {
    let bad = |why: String| {
        Error::invalid(format!(
            "attention of q {:?}, k {:?}, v {:?}{}: {why}",
            q.shape(),
            k.shape(),
            v.shape(),
            bias.map(|b| format!(", bias {:?}", b.shape()))
                .unwrap_or_default()
        ))
    };
    let &[b, h, nq, d] = q.shape() else {
        return Err(bad("q must be [B, H, Nq, D]".into()));
    };
    let &[kb, kh, nk, kd] = k.shape() else {
        return Err(bad("k must be [B, H, Nk, D]".into()));
    };
    if [kb, kh, kd] != [b, h, d] {
        return Err(bad("k must be [B, H, Nk, D] with q's B, H and D".into()));
    }
    if v.shape() != k.shape() {
        return Err(bad("v must have k's shape".into()));
    }
    if let Some(bias) = bias {
        if bias.shape() != [h, nq, nk] {
            return Err(bad(format!("bias must be [H, Nq, Nk] = [{h}, {nq}, {nk}]")));
        }
    }
    if d > MAX_HEAD_DIM {
        return Err(bad(format!("head dim over {MAX_HEAD_DIM}")));
    }
    record(
        rec,
        [q, k, v],
        bias.map_or(Bias::None, Bias::Table),
        scale,
        (b, h, nq, nk, d),
        [Layout::Heads, Layout::Heads],
    )
}

/// SAM ViT's attention with decomposed relative positions,
/// `softmax(scale * q @ k^T + rel_h[.., k / kw] + rel_w[.., k % kw]) @ v`: q `[B, H, Nq, D]`,
/// k and v `[B, H, Nk, D]` with the keys row-major on a `kh x kw` grid, `rel`
/// `[B, H, Nq, kh + kw]` (each query's row terms, then its column terms). The scores stay in
/// registers, as in [`attention`]: the bias is two reads per score.
pub fn attention_rel_pos(
    rec: &mut Recorder,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    rel: &GpuTensor,
    (kh, kw): (usize, usize),
    scale: f32,
) -> Result<GpuTensor> {
    let bad = |why: String| {
        Error::invalid(format!(
            "attention of q {:?}, k {:?}, v {:?} with relative positions {:?} over a {kh}x{kw} grid: {why}",
            q.shape(),
            k.shape(),
            v.shape(),
            rel.shape()
        ))
    };
    let &[b, h, nq, d] = q.shape() else {
        return Err(bad("q must be [B, H, Nq, D]".into()));
    };
    if k.shape() != [b, h, kh * kw, d] || v.shape() != k.shape() {
        return Err(bad(format!(
            "k and v must be [B, H, kh * kw, D] = [{b}, {h}, {}, {d}]",
            kh * kw
        )));
    }
    if rel.shape() != [b, h, nq, kh + kw] {
        return Err(bad(format!(
            "relative positions must be [B, H, Nq, kh + kw] = [{b}, {h}, {nq}, {}]",
            kh + kw
        )));
    }
    if d > MAX_HEAD_DIM {
        return Err(bad(format!("head dim over {MAX_HEAD_DIM}")));
    }
    record(
        rec,
        [q, k, v],
        Bias::RelPos(rel, kw),
        scale,
        (b, h, nq, kh * kw, d),
        [Layout::Heads, Layout::Heads],
    )
}

/// Multi-head attention of tokens as linear layers give them: q `[B, Nq, H * D]`, k and v
/// `[B, Nk, H * D]` (or, split into heads beforehand, `[B, H, Nk, D]`), head `h` in channels
/// `h * D .. (h + 1) * D`; the result `[B, Nq, H * D]` holds each head's
/// `softmax(scale * q_h @ k_h^T) @ v_h` in its channels. The same kernel as [`attention`],
/// reading and writing the tokens where they lie (no transposes).
pub fn attention_tokens(
    rec: &mut Recorder,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    heads: usize,
    scale: f32,
) -> Result<GpuTensor> {
    let bad = |why: String| {
        Error::invalid(format!(
            "attention of q {:?}, k {:?}, v {:?} in {heads} heads: {why}",
            q.shape(),
            k.shape(),
            v.shape(),
        ))
    };
    let &[b, nq, c] = q.shape() else {
        return Err(bad("q must be [B, N, H * D]".into()));
    };
    if heads == 0 || c % heads != 0 || v.shape() != k.shape() {
        return Err(bad("q must be [B, N, H * D], v of k's shape".into()));
    }
    let d = c / heads;
    let (nk, kv_layout) = match *k.shape() {
        [kb, nk, kc] if (kb, kc) == (b, c) => (nk, Layout::Tokens),
        [kb, kh, nk, kd] if (kb, kh, kd) == (b, heads, d) => (nk, Layout::Heads),
        _ => {
            return Err(bad(format!(
                "k and v must be [B, Nk, H * D] or [B, H, Nk, D] with B = {b}, H = {heads}, D = {d}"
            )))
        }
    };
    if d > MAX_HEAD_DIM {
        return Err(bad(format!("head dim over {MAX_HEAD_DIM}")));
    }
    record(
        rec,
        [q, k, v],
        Bias::None,
        scale,
        (b, heads, nq, nk, d),
        [Layout::Tokens, kv_layout],
    )
}

/// Records the kernel for `(B, H, Nq, Nk, D)` with q and the output in `layouts[0]`, k and v
/// in `layouts[1]`.
fn record(
    rec: &mut Recorder,
    [q, k, v]: [&GpuTensor; 3],
    bias: Bias,
    scale: f32,
    (b, h, nq, nk, d): (usize, usize, usize, usize, usize),
    layouts: [Layout; 2],
) -> Result<GpuTensor> {
    let bad = |why: String| {
        Error::invalid(format!(
            "attention of q {:?}, k {:?}, v {:?}: {why}",
            q.shape(),
            k.shape(),
            v.shape()
        ))
    };
    let ctx = rec.ctx().clone();
    let out = GpuTensor::empty(&ctx, q.shape())?;
    let strides = |layout: Layout, n: usize| -> Result<[u32; 4]> {
        let [sb, sh, sn] = layout.strides(h, n, d);
        Ok([
            u32_of(sb, "batch stride")?,
            u32_of(sh, "head stride")?,
            u32_of(sn, "row stride")?,
            0,
        ])
    };
    if out.numel() == 0 {
        return Ok(out);
    }
    if nk == 0 {
        return Err(bad("no keys to attend to".into()));
    }
    for t in [q, k] {
        u32_of(t.numel(), "elements")?;
    }
    if let Some(bias) = bias.tensor() {
        u32_of(bias.numel(), "bias elements")?;
    }

    let split = use_split(nq, nk, d);
    let d4 = d.div_ceil(4);
    let (entry, bk, red_d4) = if split {
        ("attn_split", 1, d4)
    } else {
        ("attn_rows", (TILE_FLOATS / (4 * d4)).max(1), 1)
    };
    let key = format!("attention_{}_d{d}", if split { "split" } else { "rows" });
    let kernel = ctx.pipelines().get(
        &ctx,
        KernelSpec {
            key: &key,
            entry,
            inputs: 4,
            outputs: 1,
            f16_inputs: 0,
        },
        || {
            format!(
                "const D: u32 = {d}u;\nconst WG: u32 = {WG}u;\nconst BK: u32 = {bk}u;\nconst RED_D4: u32 = {red_d4}u;\n{}",
                include_str!("attention.wgsl")
            )
        },
    )?;
    let q_tiles = nq.div_ceil(WG);
    let groups = if split { b * h * nq } else { b * h * q_tiles };
    let params = AttentionParams {
        bh: u32_of(b * h, "B * H")?,
        h: u32_of(h, "heads")?,
        nq: u32_of(nq, "queries")?,
        nk: u32_of(nk, "keys")?,
        scale,
        has_bias: match bias {
            Bias::None => 0,
            Bias::Table(_) => 1,
            Bias::RelPos(..) => 2,
        },
        q_tiles: u32_of(q_tiles, "query tiles")?,
        rel_kw: match bias {
            Bias::RelPos(_, kw) => u32_of(kw, "key grid width")?,
            _ => 1,
        },
        q_s: strides(layouts[0], nq)?,
        kv_s: strides(layouts[1], nk)?,
        o_s: strides(layouts[0], nq)?,
    };
    let grid = ctx.grid(u32_of(groups, "workgroups")?)?;
    // Without a bias, `q` stands in for the unused binding.
    rec.dispatch(
        &kernel,
        &params,
        &[q, k, v, bias.tensor().unwrap_or(q)],
        &[&out],
        grid,
    )?;
    Ok(out)
}
