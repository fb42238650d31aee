//! Conformance of the two backends: every primitive of `websam::model::backend::Backend` runs
//! the same random, odd-shaped inputs on the CPU backend (candle and the crate's kernels) and on
//! the GPU backend (the WGSL kernels; lavapipe on machines without a GPU), and each result is
//! checked against a plain candle formula computed in f64 from the same f32 inputs.
//!
//! Tolerances bound f32 rounding (accumulation order, `exp`, `erf`, `sqrt`) on outputs of about
//! unit size: 1e-5 abs + 1e-5 rel, 2e-5 for the convs (sums of up to 1152 products), 1e-6 abs
//! and 1e-5 rel for the softmax (rows of up to 4096 summed in f32), and exact for the layout
//! ops, which only move values. Inputs are random on every run.
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/gpu.rs"]
mod gpu;

use candle_core::{DType, Tensor, D};
use gpu::{assert_close, ctx, partition_reference, randn, reverse_reference, values};
use websam::gpu::backend::Gpu;
use websam::model::backend::{Activation, Backend, ConvOpts, Cpu, Gemm, Param};

const TOL: (f32, f32) = (1e-5, 1e-5);
const CONV_TOL: (f32, f32) = (2e-5, 2e-5);
const EXACT: (f32, f32) = (0.0, 0.0);

/// An op written once over the backend, with its weights given as (tensor, use) pairs.
trait Case {
    fn params(&self) -> Vec<(Tensor, Param)>;
    fn inputs(&self) -> Vec<Tensor>;
    fn run<B: Backend>(&self, b: &mut B, params: &[B::Tensor], x: &[B::Tensor]) -> B::Tensor;
}

fn on_cpu<C: Case>(case: &C) -> Vec<f32> {
    let params: Vec<Tensor> = case
        .params()
        .iter()
        .map(|(t, u)| Cpu::param(&(), t, *u).unwrap())
        .collect();
    let mut b = Cpu;
    let inputs: Vec<Tensor> = case.inputs().iter().map(|t| b.input(t).unwrap()).collect();
    values(&case.run(&mut b, &params, &inputs))
}

fn on_gpu<C: Case>(case: &C) -> Vec<f32> {
    let params: Vec<_> = case
        .params()
        .iter()
        .map(|(t, u)| Gpu::param(ctx(), t, *u).unwrap())
        .collect();
    let mut b = Gpu::begin(ctx());
    let inputs: Vec<_> = case.inputs().iter().map(|t| b.input(t).unwrap()).collect();
    let y = case.run(&mut b, &params, &inputs);
    let mut rec = b.into_recorder();
    rec.read(&y);
    rec.finish_blocking().unwrap().remove(0)
}

/// Runs `case` on both backends and checks each against `want` (f64).
fn check<C: Case>(case: &C, want: &Tensor, (atol, rtol): (f32, f32), what: &str) {
    let want = values(&want.to_dtype(DType::F32).unwrap());
    assert_close(&on_cpu(case), &want, atol, rtol, &format!("{what} (CPU)"));
    assert_close(&on_gpu(case), &want, atol, rtol, &format!("{what} (GPU)"));
}

fn f64_of(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F64).unwrap()
}

fn gelu64(x: &Tensor) -> Tensor {
    x.gelu_erf().unwrap()
}

fn act64(x: Tensor, act: Activation) -> Tensor {
    match act {
        Activation::None => x,
        Activation::Relu => x.relu().unwrap(),
        Activation::Gelu => gelu64(&x),
        Activation::Sigmoid => sigmoid64(&x),
    }
}

fn sigmoid64(x: &Tensor) -> Tensor {
    (x.neg().unwrap().exp().unwrap() + 1.0)
        .unwrap()
        .recip()
        .unwrap()
}

/// Scales `t` so that a product over `k` terms has about unit variance.
fn per_sqrt(t: Tensor, k: usize) -> Tensor {
    (t / (k as f64).sqrt()).unwrap()
}

struct Linear {
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
    act: Activation,
}

impl Case for Linear {
    fn params(&self) -> Vec<(Tensor, Param)> {
        let mut p = vec![(self.w.clone(), Param::Linear)];
        p.extend(self.b.iter().map(|b| (b.clone(), Param::Plain)));
        p
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn run<B: Backend>(&self, b: &mut B, p: &[B::Tensor], x: &[B::Tensor]) -> B::Tensor {
        b.linear(&x[0], &p[0], p.get(1), self.act).unwrap()
    }
}

#[test]
fn linear_with_bias_and_activation() {
    for (lead, k, n, bias, act) in [
        (vec![3, 7], 33, 17, true, Activation::Relu),
        (vec![1, 5, 2], 256, 2048, true, Activation::Gelu),
        (vec![9], 64, 5, false, Activation::None),
        (vec![2, 3], 256, 4, true, Activation::Sigmoid),
    ] {
        let mut xs = lead.clone();
        xs.push(k);
        let x = randn(&xs);
        let w = per_sqrt(randn(&[n, k]), k);
        let bv = bias.then(|| randn(&[n]));
        let mut y = f64_of(&x)
            .broadcast_matmul(&f64_of(&w).t().unwrap())
            .unwrap();
        if let Some(bv) = &bv {
            y = y.broadcast_add(&f64_of(bv)).unwrap();
        }
        let want = act64(y, act);
        let case = Linear { x, w, b: bv, act };
        check(&case, &want, TOL, &format!("linear {xs:?} x {n} {act:?}"));
    }
}

struct Matmul {
    a: Tensor,
    b: Tensor,
    trans_b: bool,
    alpha: f32,
    bias: Option<Tensor>,
    act: Activation,
}

impl Case for Matmul {
    fn params(&self) -> Vec<(Tensor, Param)> {
        let mut p = vec![(self.b.clone(), Param::Plain)];
        p.extend(self.bias.iter().map(|b| (b.clone(), Param::Plain)));
        p
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone()]
    }
    fn run<B: Backend>(&self, b: &mut B, p: &[B::Tensor], x: &[B::Tensor]) -> B::Tensor {
        let mut gemm = Gemm::default().alpha(self.alpha).act(self.act);
        if self.trans_b {
            gemm = gemm.trans_b();
        }
        if let Some(bias) = p.get(1) {
            gemm = gemm.bias(bias);
        }
        b.matmul(&x[0], &p[0], gemm).unwrap()
    }
}

#[test]
fn matmul_broadcasts_batches_and_transposes() {
    // (a, b, trans_b, alpha, bias, act): the decoder's absorbed attention and stacked
    // hypernetwork shapes, and odd ones.
    for (sa, sb, trans_b, alpha, bias, act) in [
        (
            vec![2, 8, 3, 16],
            vec![8, 16, 37],
            false,
            1.0,
            None,
            Activation::None,
        ),
        (
            vec![2, 8, 5, 16],
            vec![8, 16, 1],
            false,
            0.25,
            None,
            Activation::None,
        ),
        (
            vec![1, 7, 8, 1, 16],
            vec![8, 16, 256],
            false,
            1.0,
            None,
            Activation::None,
        ),
        (
            vec![2, 7, 8, 1, 256],
            vec![8, 256, 16],
            false,
            1.0,
            Some(vec![8, 1, 16]),
            Activation::None,
        ),
        (
            vec![2, 3, 1, 256],
            vec![3, 32, 256],
            true,
            1.0,
            Some(vec![3, 1, 32]),
            Activation::Relu,
        ),
        (
            vec![2, 4096, 256],
            vec![2, 56, 256],
            true,
            1.0,
            Some(vec![2, 1, 56]),
            Activation::None,
        ),
        (
            vec![1, 1, 56, 256],
            vec![1, 1, 4096, 256],
            true,
            0.25,
            None,
            Activation::None,
        ),
        (
            vec![1, 56, 4096],
            vec![1, 4096, 256],
            false,
            1.0,
            Some(vec![256]),
            Activation::Gelu,
        ),
        (vec![5, 13], vec![13, 7], false, 1.0, None, Activation::None),
        // Long reductions on few workgroups: the GPU splits K in slices.
        (
            vec![1, 1, 56, 4096],
            vec![1, 1, 4096, 256],
            false,
            0.5,
            None,
            Activation::None,
        ),
        (
            vec![9, 3072],
            vec![3072, 40],
            false,
            1.0,
            None,
            Activation::None,
        ),
    ] {
        let k = sa[sa.len() - 1];
        let a = randn(&sa);
        let b = per_sqrt(randn(&sb), k);
        let bias = bias.map(|s: Vec<usize>| randn(&s));
        let bt = if trans_b {
            f64_of(&b).transpose(D::Minus2, D::Minus1).unwrap()
        } else {
            f64_of(&b)
        };
        let mut y = (matmul64(&f64_of(&a), &bt) * alpha as f64).unwrap();
        if let Some(bias) = &bias {
            y = y.broadcast_add(&f64_of(bias)).unwrap();
        }
        let want = act64(y, act);
        let case = Matmul {
            a,
            b,
            trans_b,
            alpha,
            bias,
            act,
        };
        check(&case, &want, TOL, &format!("matmul {sa:?} x {sb:?}"));
    }
}

/// `a @ b` with numpy batch broadcasting, both operands expanded and laid out first.
fn matmul64(a: &Tensor, b: &Tensor) -> Tensor {
    let (ra, rb) = (a.rank(), b.rank());
    let rank = ra.max(rb);
    let pad = |t: &Tensor| {
        let mut d = vec![1; rank - t.rank()];
        d.extend(t.dims());
        d
    };
    let (da, db) = (pad(a), pad(b));
    let batch: Vec<usize> = (0..rank - 2).map(|i| da[i].max(db[i])).collect();
    let full = |t: &Tensor, d: &[usize]| {
        let mut shape = batch.clone();
        shape.extend(&d[rank - 2..]);
        t.reshape(d)
            .unwrap()
            .broadcast_as(shape)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    // candle's GEMM walks at most two batch dims: one flat batch.
    let (m, n) = (da[rank - 2], db[rank - 1]);
    let z: usize = batch.iter().product();
    let flat = |t: Tensor| {
        let (r, c) = (t.dim(rank - 2).unwrap(), t.dim(rank - 1).unwrap());
        t.reshape((z, r, c)).unwrap()
    };
    let y = flat(full(a, &da)).matmul(&flat(full(b, &db))).unwrap();
    let mut shape = batch.clone();
    shape.extend([m, n]);
    y.reshape(shape).unwrap()
}

struct Mha {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    heads: usize,
    /// Keys and values given split into heads, `[B, H, Nk, D]`.
    kv_heads: bool,
}

impl Case for Mha {
    fn params(&self) -> Vec<(Tensor, Param)> {
        vec![]
    }
    fn inputs(&self) -> Vec<Tensor> {
        let split = |t: &Tensor| {
            let (b, n, c) = t.dims3().unwrap();
            t.reshape((b, n, self.heads, c / self.heads))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        if self.kv_heads {
            vec![self.q.clone(), split(&self.k), split(&self.v)]
        } else {
            vec![self.q.clone(), self.k.clone(), self.v.clone()]
        }
    }
    fn run<B: Backend>(&self, b: &mut B, _: &[B::Tensor], x: &[B::Tensor]) -> B::Tensor {
        let d = B::dims(&x[0])[2] / self.heads;
        b.multi_head_attention(&x[0], &x[1], &x[2], self.heads, 1.0 / (d as f32).sqrt())
            .unwrap()
    }
}

#[test]
fn multi_head_attention_of_tokens() {
    // The decoder's self attention, its cached token-to-image attention (few queries, many
    // keys) and odd sizes.
    for (b, heads, nq, nk, d, kv_heads) in [
        (1, 8, 7, 7, 32, false),
        (1, 8, 9, 4096, 16, true),
        (2, 3, 13, 29, 5, false),
        (2, 3, 13, 29, 5, true),
    ] {
        let q = randn(&[b, nq, heads * d]);
        let k = randn(&[b, nk, heads * d]);
        let v = randn(&[b, nk, heads * d]);
        let split = |x: &Tensor, n: usize| {
            f64_of(x)
                .reshape((b, n, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let logits = (split(&q, nq).matmul(&split(&k, nk).t().unwrap()).unwrap()
            / (d as f64).sqrt())
        .unwrap();
        let attn = candle_nn::ops::softmax_last_dim(&logits).unwrap();
        let want = attn
            .matmul(&split(&v, nk))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, nq, heads * d))
            .unwrap();
        let case = Mha {
            q,
            k,
            v,
            heads,
            kv_heads,
        };
        check(
            &case,
            &want,
            TOL,
            &format!("multi-head attention {b}x{nq}x{nk}, {heads} heads of {d}"),
        );
    }
}

struct Attention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Option<Tensor>,
    scale: f32,
}

impl Case for Attention {
    fn params(&self) -> Vec<(Tensor, Param)> {
        self.bias
            .iter()
            .map(|b| (b.clone(), Param::Plain))
            .collect()
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.q.clone(), self.k.clone(), self.v.clone()]
    }
    fn run<B: Backend>(&self, b: &mut B, p: &[B::Tensor], x: &[B::Tensor]) -> B::Tensor {
        b.attention(&x[0], &x[1], &x[2], p.first(), self.scale)
            .unwrap()
    }
}

#[test]
fn attention_with_bias_and_wide_heads() {
    // TinyViT's windows with biases, the decoder's heads, and the absorbed cross attention
    // over the image's 256 channels (wider than the fused kernel's heads).
    for (b, h, nq, nk, d, bias) in [
        (3, 5, 49, 49, 32, true),
        (1, 8, 7, 4096, 16, false),
        (2, 3, 13, 29, 24, false),
        (1, 1, 56, 4096, 256, false),
        // Past 2^24 scores: the CPU takes the queries in blocks.
        (1, 1, 4100, 4096, 8, false),
    ] {
        let q = randn(&[b, h, nq, d]);
        let k = randn(&[b, h, nk, d]);
        let v = randn(&[b, h, nk, d]);
        let bias = bias.then(|| randn(&[h, nq, nk]));
        let scale = 1.0 / (d as f32).sqrt();
        let mut logits =
            (f64_of(&q).matmul(&f64_of(&k).t().unwrap()).unwrap() * scale as f64).unwrap();
        if let Some(bias) = &bias {
            logits = logits.broadcast_add(&f64_of(bias)).unwrap();
        }
        let attn = candle_nn::ops::softmax_last_dim(&logits).unwrap();
        let want = attn.matmul(&f64_of(&v)).unwrap();
        let case = Attention {
            q,
            k,
            v,
            bias,
            scale,
        };
        check(
            &case,
            &want,
            TOL,
            &format!("attention {b}x{h}x{nq}x{nk}x{d}"),
        );
    }
}

struct AttentionRelPos {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Tensor,
    grid: (usize, usize),
    scale: f32,
}

impl Case for AttentionRelPos {
    fn params(&self) -> Vec<(Tensor, Param)> {
        vec![]
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![
            self.q.clone(),
            self.k.clone(),
            self.v.clone(),
            self.rel.clone(),
        ]
    }
    fn run<B: Backend>(&self, b: &mut B, _: &[B::Tensor], x: &[B::Tensor]) -> B::Tensor {
        b.attention_rel_pos(&x[0], &x[1], &x[2], &x[3], self.grid, self.scale)
            .unwrap()
    }
}

#[test]
fn attention_with_decomposed_relative_positions() {
    // SAM ViT's windows (14 x 14, head dims 64 and ViT-H's 80), a global grid cut down to
    // 40 x 40 (the CPU takes its queries in blocks only past 16 Mi scores: the 64 x 64 case
    // runs in tests/vit.rs), and an odd non-square one.
    for (b, h, (kh, kw), d) in [
        (4, 3, (14, 14), 64),
        (1, 2, (14, 14), 80),
        (1, 2, (40, 40), 64),
        (2, 3, (5, 7), 24),
    ] {
        let n = kh * kw;
        let q = randn(&[b, h, n, d]);
        let k = randn(&[b, h, n, d]);
        let v = randn(&[b, h, n, d]);
        let rel = randn(&[b, h, n, kh + kw]);
        let scale = 1.0 / (d as f32).sqrt();
        // add_decomposed_rel_pos: logits viewed [.., kh, kw] + rel_h[.., :, None] +
        // rel_w[.., None, :].
        let logits = (f64_of(&q).matmul(&f64_of(&k).t().unwrap()).unwrap() * scale as f64)
            .unwrap()
            .reshape((b, h, n, kh, kw))
            .unwrap();
        let rel64 = f64_of(&rel);
        let rel_h = rel64.narrow(3, 0, kh).unwrap().unsqueeze(4).unwrap();
        let rel_w = rel64.narrow(3, kh, kw).unwrap().unsqueeze(3).unwrap();
        let logits = logits
            .broadcast_add(&rel_h)
            .unwrap()
            .broadcast_add(&rel_w)
            .unwrap()
            .reshape((b, h, n, n))
            .unwrap();
        let attn = candle_nn::ops::softmax_last_dim(&logits).unwrap();
        let want = attn.matmul(&f64_of(&v)).unwrap();
        let case = AttentionRelPos {
            q,
            k,
            v,
            rel,
            grid: (kh, kw),
            scale,
        };
        check(
            &case,
            &want,
            TOL,
            &format!("attention with relative positions {b}x{h}, {kh}x{kw} keys, head dim {d}"),
        );
    }
}

struct Softmax(Tensor);

impl Case for Softmax {
    fn params(&self) -> Vec<(Tensor, Param)> {
        vec![]
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.0.clone()]
    }
    fn run<B: Backend>(&self, b: &mut B, _: &[B::Tensor], x: &[B::Tensor]) -> B::Tensor {
        b.softmax(&x[0]).unwrap()
    }
}

#[test]
fn softmax_over_the_last_dim() {
    for shape in [
        vec![3, 7],
        vec![2, 56, 4096],
        vec![1, 4096, 8, 7],
        vec![5, 1],
    ] {
        let x = (randn(&shape) * 4.0).unwrap();
        let want = candle_nn::ops::softmax_last_dim(&f64_of(&x)).unwrap();
        check(
            &Softmax(x),
            &want,
            (1e-6, 1e-5),
            &format!("softmax {shape:?}"),
        );
    }
}

struct Norm {
    x: Tensor,
    w: Tensor,
    b: Tensor,
    eps: f32,
    act: Activation,
    two_d: bool,
}

impl Case for Norm {
    fn params(&self) -> Vec<(Tensor, Param)> {
        vec![
            (self.w.clone(), Param::Plain),
            (self.b.clone(), Param::Plain),
        ]
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    fn run<B: Backend>(&self, b: &mut B, p: &[B::Tensor], x: &[B::Tensor]) -> B::Tensor {
        if self.two_d {
            b.layer_norm_2d(&x[0], &p[0], &p[1], self.eps, self.act)
        } else {
            b.layer_norm(&x[0], &p[0], &p[1], self.eps, self.act)
        }
        .unwrap()
    }
}

/// `(x - mean) / sqrt(var + eps) * w + b` over `dim`, in f64.
fn norm64(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32, dim: usize) -> Tensor {
    let x = f64_of(x);
    let u = x.mean_keepdim(dim).unwrap();
    let xc = x.broadcast_sub(&u).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(dim).unwrap();
    let y = xc
        .broadcast_div(&(var + eps as f64).unwrap().sqrt().unwrap())
        .unwrap();
    y.broadcast_mul(&f64_of(w))
        .unwrap()
        .broadcast_add(&f64_of(b))
        .unwrap()
}

#[test]
fn layer_norms_over_channels() {
    // Over the last dim: tokens of the decoder and TinyViT.
    for (shape, act) in [
        (vec![2, 7, 256], Activation::None),
        (vec![3, 33], Activation::Gelu),
    ] {
        let c = shape[shape.len() - 1];
        let (x, w, b) = ((randn(&shape) + 1.0).unwrap(), randn(&[c]), randn(&[c]));
        let want = act64(norm64(&x, &w, &b, 1e-5, shape.len() - 1), act);
        let case = Norm {
            x,
            w,
            b,
            eps: 1e-5,
            act,
            two_d: false,
        };
        check(&case, &want, TOL, &format!("layer_norm {shape:?}"));
    }
    // Over NCHW channels: the decoder's upscaling, the mask downscaling and the neck.
    for (shape, act) in [
        (vec![1, 64, 128, 128], Activation::Gelu),
        (vec![2, 5, 9, 7], Activation::None),
        (vec![1, 3, 1, 1031], Activation::Gelu),
    ] {
        let c = shape[1];
        let (x, w, b) = (randn(&shape), randn(&[c]), randn(&[c]));
        let w4 = w.reshape((1, c, 1, 1)).unwrap();
        let b4 = b.reshape((1, c, 1, 1)).unwrap();
        let want = act64(norm64(&x, &w4, &b4, 1e-6, 1), act);
        let case = Norm {
            x,
            w,
            b,
            eps: 1e-6,
            act,
            two_d: true,
        };
        check(&case, &want, TOL, &format!("layer_norm_2d {shape:?}"));
    }
}

struct Conv {
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
    residual: Option<Tensor>,
    opts: ConvOpts,
    act: Activation,
}

impl Case for Conv {
    fn params(&self) -> Vec<(Tensor, Param)> {
        let use_ = if self.opts.groups > 1 {
            Param::Depthwise
        } else {
            Param::Conv
        };
        let mut p = vec![(self.w.clone(), use_)];
        p.extend(self.b.iter().map(|b| (b.clone(), Param::Plain)));
        p
    }
    fn inputs(&self) -> Vec<Tensor> {
        let mut x = vec![self.x.clone()];
        x.extend(self.residual.iter().cloned());
        x
    }
    fn run<B: Backend>(&self, b: &mut B, p: &[B::Tensor], x: &[B::Tensor]) -> B::Tensor {
        b.conv2d(&x[0], &p[0], p.get(1), self.opts, self.act, x.get(1))
            .unwrap()
    }
}

#[test]
fn conv2d_dense_and_depthwise_with_fused_epilogue() {
    // (input, c_out, k, stride, padding, depthwise, bias, residual, act)
    for (shape, c_out, k, stride, padding, depthwise, bias, residual, act) in [
        (
            vec![1, 3, 17, 13],
            8,
            3,
            2,
            1,
            false,
            true,
            false,
            Activation::Gelu,
        ),
        (
            vec![2, 16, 9, 11],
            24,
            1,
            1,
            0,
            false,
            true,
            true,
            Activation::Gelu,
        ),
        (
            vec![1, 1, 16, 16],
            4,
            2,
            2,
            0,
            false,
            true,
            false,
            Activation::None,
        ),
        (
            vec![1, 32, 10, 10],
            32,
            3,
            1,
            1,
            false,
            false,
            false,
            Activation::None,
        ),
        (
            vec![2, 12, 15, 9],
            12,
            3,
            2,
            1,
            true,
            true,
            false,
            Activation::Gelu,
        ),
        (
            vec![1, 20, 14, 14],
            20,
            3,
            1,
            1,
            true,
            true,
            true,
            Activation::Relu,
        ),
    ] {
        let c_in = shape[1];
        let groups = if depthwise { c_in } else { 1 };
        let x = randn(&shape);
        let w = per_sqrt(randn(&[c_out, c_in / groups, k, k]), c_in / groups * k * k);
        let b = bias.then(|| randn(&[c_out]));
        let y = f64_of(&x)
            .conv2d(&f64_of(&w), padding, stride, 1, groups)
            .unwrap();
        let mut y = match &b {
            Some(b) => y
                .broadcast_add(&f64_of(b).reshape((1, c_out, 1, 1)).unwrap())
                .unwrap(),
            None => y,
        };
        let r = residual.then(|| randn(y.dims()));
        if let Some(r) = &r {
            y = (y + f64_of(r)).unwrap();
        }
        let want = act64(y, act);
        let case = Conv {
            x,
            w,
            b,
            residual: r,
            opts: ConvOpts::new(stride, padding).groups(groups),
            act,
        };
        check(
            &case,
            &want,
            CONV_TOL,
            &format!("conv2d {shape:?} -> {c_out}, k{k}"),
        );
    }
}

struct ConvT {
    x: Tensor,
    w: Tensor,
    b: Tensor,
    act: Activation,
    /// The input arrives as a channel-last tensor seen as NCHW (the decoder's tokens).
    from_tokens: bool,
}

impl Case for ConvT {
    fn params(&self) -> Vec<(Tensor, Param)> {
        vec![
            (self.w.clone(), Param::ConvTranspose),
            (self.b.clone(), Param::Plain),
        ]
    }
    fn inputs(&self) -> Vec<Tensor> {
        if self.from_tokens {
            vec![self.x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()]
        } else {
            vec![self.x.clone()]
        }
    }
    fn run<B: Backend>(&self, b: &mut B, p: &[B::Tensor], x: &[B::Tensor]) -> B::Tensor {
        let x = if self.from_tokens {
            b.permute(&x[0], &[0, 3, 1, 2]).unwrap()
        } else {
            x[0].clone()
        };
        b.conv_transpose2x2(&x, &p[0], Some(&p[1]), self.act)
            .unwrap()
    }
}

#[test]
fn conv_transpose2x2_with_bias_and_activation() {
    for (shape, c_out, act, from_tokens) in [
        (vec![1, 256, 8, 8], 64, Activation::None, true),
        (vec![2, 8, 5, 7], 4, Activation::Gelu, false),
        (vec![1, 3, 1, 9], 5, Activation::Relu, true),
    ] {
        let c_in = shape[1];
        let x = randn(&shape);
        let w = per_sqrt(randn(&[c_in, c_out, 2, 2]), c_in);
        let b = randn(&[c_out]);
        let y = f64_of(&x)
            .conv_transpose2d(&f64_of(&w), 0, 0, 2, 1)
            .unwrap()
            .broadcast_add(&f64_of(&b).reshape((1, c_out, 1, 1)).unwrap())
            .unwrap();
        let want = act64(y, act);
        let case = ConvT {
            x,
            w,
            b,
            act,
            from_tokens,
        };
        check(
            &case,
            &want,
            TOL,
            &format!("conv_transpose2x2 {shape:?} -> {c_out}"),
        );
    }
}

/// Elementwise and layout ops, each a small program over the backend.
struct Program<F> {
    inputs: Vec<Tensor>,
    f: F,
}

/// The programs (a closure generic over the backend cannot be passed, so each is named).
#[derive(Clone, Copy)]
enum Op {
    Add,
    Gelu,
    Relu,
    Sigmoid,
    Maximum,
    Permute,
    Slice,
    Concat,
    Reshape,
    Windows { hw: (usize, usize), ws: usize },
}

impl Case for Program<Op> {
    fn params(&self) -> Vec<(Tensor, Param)> {
        vec![]
    }
    fn inputs(&self) -> Vec<Tensor> {
        self.inputs.clone()
    }
    fn run<B: Backend>(&self, b: &mut B, _: &[B::Tensor], x: &[B::Tensor]) -> B::Tensor {
        match self.f {
            Op::Add => b.add(&x[0], &x[1]).unwrap(),
            Op::Gelu => b.activation(&x[0], Activation::Gelu).unwrap(),
            Op::Relu => b.activation(&x[0], Activation::Relu).unwrap(),
            Op::Sigmoid => b.activation(&x[0], Activation::Sigmoid).unwrap(),
            Op::Maximum => b.maximum(&x[0], &x[1]).unwrap(),
            // A view permuted, then permuted again: the CPU's strided views are read right.
            Op::Permute => {
                let y = b.permute(&x[0], &[2, 0, 3, 1]).unwrap();
                b.permute(&y, &[1, 0, 2, 3]).unwrap()
            }
            Op::Slice => {
                let y = b.slice(&x[0], 2, 3, 4).unwrap();
                b.slice(&y, 0, 1, 1).unwrap()
            }
            Op::Concat => {
                let y = b.permute(&x[1], &[0, 2, 1]).unwrap();
                b.concat(&[&x[0], &y], 1).unwrap()
            }
            Op::Reshape => {
                let y = b.permute(&x[0], &[0, 2, 1]).unwrap();
                b.reshape(&y, &[3, 35]).unwrap()
            }
            Op::Windows { hw, ws } => {
                let w = b.window_partition(&x[0], hw, ws).unwrap();
                let w = b.add(&w, &x[1]).unwrap();
                b.window_reverse(&w, hw, ws, Some(&x[0])).unwrap()
            }
        }
    }
}

fn program(f: Op, inputs: Vec<Tensor>) -> Program<Op> {
    Program { inputs, f }
}

#[test]
fn elementwise_ops_broadcast_and_activate() {
    let (a, b) = (randn(&[2, 7, 5]), randn(&[7, 1]));
    let want = f64_of(&a).broadcast_add(&f64_of(&b)).unwrap();
    check(
        &program(Op::Add, vec![a, b]),
        &want,
        EXACT,
        "add, broadcast",
    );
    let x = (randn(&[3, 1031]) * 3.0).unwrap();
    check(
        &program(Op::Gelu, vec![x.clone()]),
        &gelu64(&f64_of(&x)),
        TOL,
        "gelu",
    );
    check(
        &program(Op::Sigmoid, vec![x.clone()]),
        &sigmoid64(&f64_of(&x)),
        TOL,
        "sigmoid",
    );
    let want = f64_of(&x).relu().unwrap();
    check(&program(Op::Relu, vec![x]), &want, EXACT, "relu");
    let (a, b) = (randn(&[4, 1, 6, 3]), randn(&[4, 5, 1, 3]));
    let want = f64_of(&a).broadcast_maximum(&f64_of(&b)).unwrap();
    check(
        &program(Op::Maximum, vec![a, b]),
        &want,
        EXACT,
        "maximum, broadcast",
    );
}

#[test]
fn layout_ops_move_values_exactly() {
    let x = randn(&[2, 3, 5, 7]);
    let want = x
        .permute((2, 0, 3, 1))
        .unwrap()
        .permute((1, 0, 2, 3))
        .unwrap();
    check(
        &program(Op::Permute, vec![x.clone()]),
        &want,
        EXACT,
        "permute",
    );
    let y = randn(&[2, 3, 7, 5]);
    let want = y.narrow(2, 3, 4).unwrap().narrow(0, 1, 1).unwrap();
    check(&program(Op::Slice, vec![y]), &want, EXACT, "slice");
    let (a, b) = (randn(&[2, 3, 4]), randn(&[2, 4, 5]));
    let want = Tensor::cat(&[&a, &b.permute((0, 2, 1)).unwrap()], 1).unwrap();
    check(&program(Op::Concat, vec![a, b]), &want, EXACT, "concat");
    let x = randn(&[3, 5, 7]);
    let want = x.permute((0, 2, 1)).unwrap().reshape((3, 35)).unwrap();
    check(
        &program(Op::Reshape, vec![x]),
        &want,
        EXACT,
        "reshape of a view",
    );
}

#[test]
fn window_partition_and_reverse_pad_crop_and_add() {
    // TinyViT's grids: padded (9 x 11 in windows of 7), exact (14 in windows of 7).
    for (b, (h, w), ws, c) in [(2, (9, 11), 7, 5), (1, (14, 14), 7, 3)] {
        let x = randn(&[b, h * w, c]);
        let (nh, nw) = (h.div_ceil(ws), w.div_ceil(ws));
        let d = randn(&[b * nh * nw, ws * ws, c]);
        // Reference: pad, partition, add, reverse, crop, add the input.
        let windows = (partition_reference(&x, (h, w), ws) + &d).unwrap();
        let back = reverse_reference(&windows, b, (h, w), ws);
        let want = (back + &x).unwrap();
        let case = program(Op::Windows { hw: (h, w), ws }, vec![x, d]);
        check(
            &case,
            &want,
            (1e-6, 0.0),
            &format!("windows {h}x{w} / {ws}"),
        );
    }
}

#[test]
fn shapes_that_do_not_fit_are_errors_on_both_backends() {
    let x = randn(&[2, 3, 5]);
    let w = randn(&[4, 7]);
    let mut cpu = Cpu;
    let wc = Cpu::param(&(), &w, Param::Linear).unwrap();
    assert!(cpu.linear(&x, &wc, None, Activation::None).is_err());
    assert!(cpu.reshape(&x, &[4, 7]).is_err());
    assert!(cpu.window_partition(&x, (2, 2), 2).is_err());
    let mut gpu = Gpu::begin(ctx());
    let (xg, wg) = (
        gpu.input(&x).unwrap(),
        Gpu::param(ctx(), &w, Param::Linear).unwrap(),
    );
    assert!(gpu.linear(&xg, &wg, None, Activation::None).is_err());
    assert!(gpu.reshape(&xg, &[4, 7]).is_err());
    assert!(gpu.window_partition(&xg, (2, 2), 2).is_err());
}
