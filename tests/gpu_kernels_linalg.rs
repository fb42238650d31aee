//! The linear-algebra kernels (matmul, linear, softmax, layer norms, fused attention) against
//! candle on the CPU, natively (lavapipe on machines without a GPU).
//!
//! References are computed in f64 from the same f32 inputs, so a tolerance bounds only the
//! GPU's f32 error (accumulation order, `exp`, `sqrt`):
//! - matmul and linear: 1e-5 abs + 1e-5 rel, inputs scaled so outputs have unit variance
//!   (K up to 2048);
//! - softmax: 1e-6 abs + 1e-6 rel;
//! - layer norms: 1e-5 abs + 1e-5 rel;
//! - attention: 1e-5 abs + 1e-5 rel, q scaled so scores have unit variance.
// Native GPU tests (lavapipe without a GPU); the WebGPU ones run in Chromium (tests/web.rs).
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/gpu.rs"]
mod gpu;

use candle_core::{DType, Tensor, D};
use gpu::{assert_close, randn, run, up, values};
use websam::gpu::kernels::attention::attention;
use websam::gpu::kernels::matmul::{linear, matmul, MatmulOpts};
use websam::gpu::kernels::norm::{layer_norm, layer_norm_2d};
use websam::gpu::kernels::softmax::softmax_last;
use websam::gpu::kernels::Activation;
use websam::gpu::{GpuTensor, Recorder};

const MATMUL_TOL: (f32, f32) = (1e-5, 1e-5);
const SOFTMAX_TOL: (f32, f32) = (1e-6, 1e-6);
const NORM_TOL: (f32, f32) = (1e-5, 1e-5);
const ATTENTION_TOL: (f32, f32) = (1e-5, 1e-5);

fn f64_of(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F64).unwrap()
}

/// Flat f32 values of an f64 reference.
fn want(t: &Tensor) -> Vec<f32> {
    values(&t.to_dtype(DType::F32).unwrap())
}

fn check(got: &[f32], reference: &Tensor, tol: (f32, f32), what: &str) {
    assert_close(got, &want(reference), tol.0, tol.1, what);
}

/// N(0, 1) values scaled by `s`.
fn randn_scaled(shape: &[usize], s: f64) -> Tensor {
    randn(shape).affine(s, 0.0).unwrap()
}

fn act_ref(x: Tensor, act: Activation) -> Tensor {
    match act {
        Activation::None => x,
        Activation::Gelu => x.gelu_erf().unwrap(),
        Activation::Relu => x.relu().unwrap(),
        Activation::Sigmoid => candle_nn::ops::sigmoid(&x).unwrap(),
    }
}

/// What recording `f` returns as an error (its message).
fn record_err(f: impl FnOnce(&mut Recorder) -> websam::Result<GpuTensor>) -> String {
    let mut rec = Recorder::new(gpu::ctx());
    match f(&mut rec) {
        Ok(t) => panic!("expected an error, got a tensor of shape {:?}", t.shape()),
        Err(e @ websam::Error::InvalidInput(_)) => e.to_string(),
        Err(e) => panic!("expected Error::InvalidInput, got {e}"),
    }
}

// ---------------------------------------------------------------- matmul

/// `act(alpha * a @ b + bias)` in f64.
fn matmul_ref(
    a: &Tensor,
    b: &Tensor,
    trans_b: bool,
    bias: Option<&Tensor>,
    act: Activation,
    alpha: f64,
) -> Tensor {
    let b = if trans_b {
        f64_of(b).t().unwrap().contiguous().unwrap()
    } else {
        f64_of(b)
    };
    // candle's CPU matmul refuses broadcast (strided) operands and more than one batch dim
    // beyond rank 4: broadcast the batch dims by hand and flatten them.
    let a = f64_of(a);
    let (ra, rb) = (a.rank(), b.rank());
    let rank = ra.max(rb);
    let batch: Vec<usize> = (0..rank - 2)
        .map(|i| {
            let dim = |t: &Tensor, r: usize| {
                if i + r >= rank {
                    t.dims()[i + r - rank]
                } else {
                    1
                }
            };
            dim(&a, ra).max(dim(&b, rb))
        })
        .collect();
    let full = |t: &Tensor| {
        let mut shape = batch.clone();
        shape.extend(&t.dims()[t.rank() - 2..]);
        let (r, c) = (t.dims()[t.rank() - 2], t.dims()[t.rank() - 1]);
        t.broadcast_as(shape)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape(((), r, c))
            .unwrap()
    };
    let y = full(&a).matmul(&full(&b)).unwrap();
    let mut shape = batch.clone();
    shape.extend(&y.dims()[1..]);
    let mut y = y.reshape(shape).unwrap().affine(alpha, 0.0).unwrap();
    if let Some(bias) = bias {
        y = y.broadcast_add(&f64_of(bias)).unwrap();
    }
    act_ref(y, act)
}

#[test]
fn matmul_fixed_small_case() {
    let a = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &candle_core::Device::Cpu).unwrap();
    let b = Tensor::new(
        &[[7f32, 8.], [9., 10.], [11., 12.]],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let bt = b.t().unwrap().contiguous().unwrap();
    let bias = Tensor::new(&[1f32, -100.], &candle_core::Device::Cpu).unwrap();
    let out = run(|rec| {
        let (ga, gb, gbt, gbias) = (up(&a), up(&b), up(&bt), up(&bias));
        Ok(vec![
            matmul(rec, &ga, &gb, &MatmulOpts::default())?,
            matmul(
                rec,
                &ga,
                &gbt,
                &MatmulOpts {
                    trans_b: true,
                    bias: Some(&gbias),
                    act: Activation::Relu,
                    alpha: 0.5,
                },
            )?,
        ])
    });
    assert_eq!(out[0], [58., 64., 139., 154.]);
    // 0.5 * [[58, 64], [139, 154]] + [1, -100], then ReLU.
    assert_eq!(out[1], [30., 0., 70.5, 0.]);
}

#[test]
fn matmul_matches_candle_on_odd_sizes() {
    // (M, K, N): tiny, odd, around the 16- and 64-wide tiles, and K up to 2048.
    let sizes = [
        (1, 1, 1),
        (3, 17, 5),
        (1, 255, 257),
        (16, 16, 16),
        (17, 64, 3),
        (33, 7, 65),
        (64, 64, 64),
        (255, 257, 129),
        (257, 3, 255),
        (10, 2048, 256),
        (65, 1000, 63),
    ];
    for (m, k, n) in sizes {
        let s = 1.0 / (k as f64).sqrt();
        let a = randn_scaled(&[m, k], s);
        let b = randn(&[k, n]);
        let bt = randn(&[n, k]);
        let bias = randn(&[n]);
        let out = run(|rec| {
            let (ga, gb, gbt, gbias) = (up(&a), up(&b), up(&bt), up(&bias));
            Ok(vec![
                matmul(rec, &ga, &gb, &MatmulOpts::default())?,
                matmul(
                    rec,
                    &ga,
                    &gbt,
                    &MatmulOpts {
                        trans_b: true,
                        bias: Some(&gbias),
                        act: Activation::Gelu,
                        alpha: 0.75,
                    },
                )?,
            ])
        });
        let what = format!("matmul M={m} K={k} N={n}");
        check(
            &out[0],
            &matmul_ref(&a, &b, false, None, Activation::None, 1.0),
            MATMUL_TOL,
            &what,
        );
        check(
            &out[1],
            &matmul_ref(&a, &bt, true, Some(&bias), Activation::Gelu, 0.75),
            MATMUL_TOL,
            &format!("{what}, b transposed, bias, GELU, alpha"),
        );
    }
}

#[test]
fn matmul_broadcasts_batch_dims() {
    // (a, b, trans_b)
    let cases: [(&[usize], &[usize], bool); 6] = [
        // A Linear weight shared by every batch.
        (&[2, 3, 17, 40], &[40, 9], false),
        // a with batch 1 against b with batch 4.
        (&[1, 5, 33], &[4, 33, 7], false),
        // Both broadcast.
        (&[3, 1, 6, 20], &[2, 20, 70], false),
        // Batched q @ k^T.
        (&[5, 19, 32], &[5, 21, 32], true),
        // Rank 2 a against batched b.
        (&[7, 12], &[3, 65, 12], true),
        // Four batch dims.
        (&[2, 1, 3, 1, 5, 8], &[2, 1, 2, 8, 4], false),
    ];
    for (sa, sb, trans_b) in cases {
        let k = sa[sa.len() - 1];
        let a = randn_scaled(sa, 1.0 / (k as f64).sqrt());
        let b = randn(sb);
        let out = run(|rec| {
            Ok(vec![matmul(
                rec,
                &up(&a),
                &up(&b),
                &MatmulOpts {
                    trans_b,
                    ..Default::default()
                },
            )?])
        });
        let reference = matmul_ref(&a, &b, trans_b, None, Activation::None, 1.0);
        check(
            &out[0],
            &reference,
            MATMUL_TOL,
            &format!("matmul {sa:?} @ {sb:?} (trans_b {trans_b})"),
        );
    }
    // The output shape follows numpy.
    let shape = |sa: &[usize], sb: &[usize]| {
        let mut rec = Recorder::new(gpu::ctx());
        matmul(
            &mut rec,
            &up(&randn(sa)),
            &up(&randn(sb)),
            &MatmulOpts::default(),
        )
        .unwrap()
        .shape()
        .to_vec()
    };
    assert_eq!(shape(&[3, 1, 6, 20], &[2, 20, 70]), [3, 2, 6, 70]);
    assert_eq!(shape(&[1, 5, 33], &[4, 33, 7]), [4, 5, 7]);
}

#[test]
fn linear_matches_candle() {
    for (x_shape, n) in [
        (vec![5usize], 3usize),
        (vec![7, 256], 2048),
        (vec![2, 49, 160], 320),
        (vec![1, 10, 3], 257),
    ] {
        let k = *x_shape.last().unwrap();
        let x = randn_scaled(&x_shape, 1.0 / (k as f64).sqrt());
        let w = randn(&[n, k]);
        let bias = randn(&[n]);
        let out = run(|rec| {
            let (gx, gw, gb) = (up(&x), up(&w), up(&bias));
            let y = linear(rec, &gx, &gw, Some(&gb), Activation::Relu)?;
            let mut want_shape = x_shape.clone();
            *want_shape.last_mut().unwrap() = n;
            assert_eq!(y.shape(), want_shape);
            Ok(vec![y, linear(rec, &gx, &gw, None, Activation::None)?])
        });
        let what = format!("linear {x_shape:?} -> {n}");
        // As rows of a matrix (the output is compared flat).
        let x = x.reshape(((), k)).unwrap();
        check(
            &out[0],
            &matmul_ref(&x, &w, true, Some(&bias), Activation::Relu, 1.0),
            MATMUL_TOL,
            &what,
        );
        check(
            &out[1],
            &matmul_ref(&x, &w, true, None, Activation::None, 1.0),
            MATMUL_TOL,
            &what,
        );
    }
}

#[test]
fn matmul_and_linear_shape_errors_name_both_shapes() {
    let mm = |sa: &[usize], sb: &[usize], opts: MatmulOpts| {
        let (a, b) = (up(&randn(sa)), up(&randn(sb)));
        record_err(|rec| matmul(rec, &a, &b, &opts))
    };
    let e = mm(&[4, 5], &[6, 7], MatmulOpts::default());
    assert!(
        e.contains("[4, 5]") && e.contains("[6, 7]") && e.contains("inner dims"),
        "{e}"
    );
    let e = mm(
        &[4, 5],
        &[5, 7],
        MatmulOpts {
            trans_b: true,
            ..Default::default()
        },
    );
    assert!(e.contains("inner dims"), "{e}");
    let e = mm(&[5], &[5, 7], MatmulOpts::default());
    assert!(e.contains("at least 2 dims"), "{e}");
    let e = mm(&[2, 4, 5], &[3, 5, 7], MatmulOpts::default());
    assert!(
        e.contains("[2, 4, 5]") && e.contains("[3, 5, 7]") && e.contains("broadcast"),
        "{e}"
    );
    let e = mm(&[1, 1, 1, 1, 1, 4, 5], &[5, 7], MatmulOpts::default());
    assert!(e.contains("broadcast"), "{e}");
    let bias = up(&randn(&[6]));
    let e = mm(
        &[4, 5],
        &[5, 7],
        MatmulOpts {
            bias: Some(&bias),
            ..Default::default()
        },
    );
    assert!(e.contains("bias") && e.contains("[7]"), "{e}");

    let lin = |sx: &[usize], sw: &[usize]| {
        let (x, w) = (up(&randn(sx)), up(&randn(sw)));
        record_err(|rec| linear(rec, &x, &w, None, Activation::None))
    };
    let e = lin(&[3, 8], &[8, 4]);
    assert!(e.contains("[3, 8]") && e.contains("[8, 4]"), "{e}");
    let e = lin(&[3, 8], &[2, 4, 8]);
    assert!(e.contains("[2, 4, 8]"), "{e}");
}

// ---------------------------------------------------------------- softmax

#[test]
fn softmax_fixed_small_case() {
    let x = Tensor::new(
        &[[0f32, 2f32.ln(), 3f32.ln()], [1000., 1000., -1000.]],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let out = run(|rec| Ok(vec![softmax_last(rec, &up(&x))?]));
    assert_close(
        &out[0],
        &[1. / 6., 2. / 6., 3. / 6., 0.5, 0.5, 0.],
        1e-6,
        0.0,
        "softmax fixed",
    );
}

#[test]
fn softmax_matches_candle() {
    for shape in [
        vec![1],
        vec![5, 1],
        vec![3, 7],
        vec![2, 4097],
        vec![10, 256],
        vec![3, 257],
        vec![8, 7, 4096],
        vec![1000, 49],
    ] {
        // Spread of 5 and an offset: exp would overflow without subtracting the max.
        let x = randn_scaled(&shape, 5.0).affine(1.0, 90.0).unwrap();
        let out = run(|rec| Ok(vec![softmax_last(rec, &up(&x))?]));
        let reference = candle_nn::ops::softmax_last_dim(&f64_of(&x)).unwrap();
        check(
            &out[0],
            &reference,
            SOFTMAX_TOL,
            &format!("softmax {shape:?}"),
        );
    }
}

// ---------------------------------------------------------------- layer norms

/// LayerNorm over the last dim in f64 (biased variance).
fn layer_norm_ref(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let x = f64_of(x);
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    xc.broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&f64_of(w))
        .unwrap()
        .broadcast_add(&f64_of(b))
        .unwrap()
}

#[test]
fn layer_norm_matches_candle() {
    let eps = 1e-6;
    for shape in [
        vec![1, 1],
        vec![4, 256],
        vec![3, 5, 160],
        vec![7, 320],
        vec![2, 1000],
        vec![65, 3],
        vec![4096, 64],
    ] {
        let c = *shape.last().unwrap();
        // An offset larger than the spread, as activations often have.
        let x = randn(&shape).affine(2.0, 3.0).unwrap();
        let (w, b) = (randn(&[c]), randn(&[c]));
        let out = run(|rec| Ok(vec![layer_norm(rec, &up(&x), &up(&w), &up(&b), eps)?]));
        check(
            &out[0],
            &layer_norm_ref(&x, &w, &b, eps as f64),
            NORM_TOL,
            &format!("layer_norm {shape:?}"),
        );
    }
}

#[test]
fn layer_norm_2d_matches_candle() {
    let eps = 1e-6;
    for (shape, act) in [
        ([1, 1, 1, 1], Activation::None),
        ([2, 3, 5, 7], Activation::None),
        ([1, 64, 33, 17], Activation::Gelu),
        ([2, 256, 8, 8], Activation::Gelu),
        ([1, 32, 64, 64], Activation::Relu),
    ] {
        let c = shape[1];
        let x = randn(&shape).affine(2.0, -3.0).unwrap();
        let (w, b) = (randn(&[c]), randn(&[c]));
        let out = run(|rec| {
            Ok(vec![layer_norm_2d(
                rec,
                &up(&x),
                &up(&w),
                &up(&b),
                eps,
                act,
            )?])
        });
        // Channels last, LayerNorm, channels first again.
        let xt = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        let reference = layer_norm_ref(&xt, &w, &b, eps as f64)
            .permute((0, 3, 1, 2))
            .unwrap()
            .contiguous()
            .unwrap();
        check(
            &out[0],
            &act_ref(reference, act),
            NORM_TOL,
            &format!("layer_norm_2d {shape:?} {act:?}"),
        );
    }
}

#[test]
fn layer_norms_fixed_small_case() {
    let dev = candle_core::Device::Cpu;
    // Two channels per pixel holding 1 and 3: mean 2, variance 1, normalised to -1 and 1;
    // (10, 10) has variance 0 and comes out as the bias. eps is lost against 1 in f32.
    const EPS: f32 = 1e-12;
    let x = Tensor::new(&[[1f32, 3.], [10., 10.]], &dev).unwrap();
    let w = Tensor::new(&[2f32, 3.], &dev).unwrap();
    let b = Tensor::new(&[0.5f32, -0.5], &dev).unwrap();
    let x2d = Tensor::new(&[1f32, 10., 3., 10.], &dev)
        .unwrap()
        .reshape((1, 2, 1, 2))
        .unwrap();
    let out = run(|rec| {
        let (gw, gb) = (up(&w), up(&b));
        Ok(vec![
            layer_norm(rec, &up(&x), &gw, &gb, EPS)?,
            layer_norm_2d(rec, &up(&x2d), &gw, &gb, EPS, Activation::Relu)?,
        ])
    });
    assert_close(
        &out[0],
        &[-1.5, 2.5, 0.5, -0.5],
        1e-6,
        0.0,
        "layer_norm fixed",
    );
    // [B=1, C=2, H=1, W=2]: pixel 0 is (1, 3), pixel 1 is (10, 10); then ReLU.
    assert_close(
        &out[1],
        &[0.0, 0.5, 2.5, 0.0],
        1e-6,
        0.0,
        "layer_norm_2d fixed",
    );
}

#[test]
fn layer_norm_shape_errors() {
    let (x, w3, w4) = (up(&randn(&[2, 4])), up(&randn(&[3])), up(&randn(&[4])));
    let e = record_err(|rec| layer_norm(rec, &x, &w3, &w4, 1e-6));
    assert!(e.contains("[2, 4]") && e.contains("[3]"), "{e}");
    let x3 = up(&randn(&[2, 4, 5]));
    let e = record_err(|rec| layer_norm_2d(rec, &x3, &w4, &w4, 1e-6, Activation::None));
    assert!(e.contains("[B, C, H, W]") && e.contains("[2, 4, 5]"), "{e}");
    let x4 = up(&randn(&[1, 3, 2, 2]));
    let e = record_err(|rec| layer_norm_2d(rec, &x4, &w4, &w4, 1e-6, Activation::None));
    assert!(e.contains("[1, 3, 2, 2]") && e.contains("[4]"), "{e}");
}

// ---------------------------------------------------------------- attention

/// `softmax(scale * q @ k^T + bias) @ v` in f64.
fn attention_ref(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, scale: f64) -> Tensor {
    let kt = f64_of(k).t().unwrap().contiguous().unwrap();
    let mut s = f64_of(q).matmul(&kt).unwrap().affine(scale, 0.0).unwrap();
    if let Some(bias) = bias {
        s = s.broadcast_add(&f64_of(bias)).unwrap();
    }
    candle_nn::ops::softmax_last_dim(&s)
        .unwrap()
        .matmul(&f64_of(v))
        .unwrap()
}

#[test]
fn attention_fixed_small_case() {
    let dev = candle_core::Device::Cpu;
    // One query, two keys, D = 1: scores 0 and ln 3 weigh the values 4 and 8 by 1/4 and 3/4;
    // a bias of -ln 3 on the second key evens them out.
    let q = Tensor::new(&[1f32], &dev)
        .unwrap()
        .reshape((1, 1, 1, 1))
        .unwrap();
    let k = Tensor::new(&[0f32, 3f32.ln()], &dev)
        .unwrap()
        .reshape((1, 1, 2, 1))
        .unwrap();
    let v = Tensor::new(&[4f32, 8.], &dev)
        .unwrap()
        .reshape((1, 1, 2, 1))
        .unwrap();
    let bias = Tensor::new(&[0f32, -(3f32.ln())], &dev)
        .unwrap()
        .reshape((1, 1, 2))
        .unwrap();
    let out = run(|rec| {
        let (gq, gk, gv) = (up(&q), up(&k), up(&v));
        Ok(vec![
            attention(rec, &gq, &gk, &gv, None, 1.0)?,
            attention(rec, &gq, &gk, &gv, Some(&up(&bias)), 1.0)?,
        ])
    });
    assert_close(&out[0], &[7.0], 1e-5, 0.0, "attention fixed");
    assert_close(&out[1], &[6.0], 1e-5, 0.0, "attention fixed with bias");
}

fn check_attention(b: usize, h: usize, nq: usize, nk: usize, d: usize, with_bias: bool) {
    let scale = 1.0 / (d as f64).sqrt();
    let q = randn(&[b, h, nq, d]);
    let k = randn(&[b, h, nk, d]);
    let v = randn(&[b, h, nk, d]);
    let bias = with_bias.then(|| randn(&[h, nq, nk]));
    let out = run(|rec| {
        let gbias = bias.as_ref().map(up);
        Ok(vec![attention(
            rec,
            &up(&q),
            &up(&k),
            &up(&v),
            gbias.as_ref(),
            scale as f32,
        )?])
    });
    check(
        &out[0],
        &attention_ref(&q, &k, &v, bias.as_ref(), scale),
        ATTENTION_TOL,
        &format!("attention B={b} H={h} Nq={nq} Nk={nk} D={d} bias={with_bias}"),
    );
}

#[test]
fn attention_sam_decoder_shapes() {
    // Token self-attention.
    check_attention(1, 8, 7, 7, 32, false);
    check_attention(1, 8, 10, 10, 32, false);
    // Token -> image cross-attention (a workgroup per query, keys split over threads).
    check_attention(1, 8, 7, 4096, 16, false);
    check_attention(1, 8, 10, 4096, 16, false);
    // Image -> token (a thread per query).
    check_attention(1, 8, 4096, 7, 16, false);
}

#[test]
fn attention_tiny_vit_windows_with_bias() {
    // 7x7 windows with a learned bias per head (256 windows, more than a grid row of 255).
    check_attention(256, 2, 49, 49, 32, true);
    // 14x14 windows of stage 2.
    check_attention(25, 5, 196, 196, 32, true);
}

#[test]
fn attention_odd_shapes() {
    check_attention(1, 1, 1, 1, 1, false);
    check_attention(2, 3, 5, 1, 3, true);
    check_attention(1, 2, 65, 67, 5, true);
    check_attention(1, 1, 1, 257, 8, true);
    check_attention(2, 1, 64, 300, 31, true);
    check_attention(1, 2, 3, 1000, 64, false);
    check_attention(1, 1, 70, 130, 128, true);
}

#[test]
fn attention_shape_errors() {
    let t = |s: &[usize]| up(&randn(s));
    let (q, k) = (t(&[1, 2, 3, 8]), t(&[1, 2, 5, 8]));
    let e = record_err(|rec| attention(rec, &q, &k, &t(&[1, 2, 5, 4]), None, 1.0));
    assert!(
        e.contains("[1, 2, 3, 8]") && e.contains("[1, 2, 5, 4]"),
        "{e}"
    );
    let e = record_err(|rec| attention(rec, &q, &t(&[1, 2, 5, 4]), &t(&[1, 2, 5, 4]), None, 1.0));
    assert!(e.contains("k must be"), "{e}");
    let e = record_err(|rec| attention(rec, &t(&[2, 3, 8]), &k, &k, None, 1.0));
    assert!(e.contains("q must be"), "{e}");
    let bias = t(&[2, 5, 3]);
    let e = record_err(|rec| attention(rec, &q, &k, &k, Some(&bias), 1.0));
    assert!(e.contains("[2, 5, 3]") && e.contains("[2, 3, 5]"), "{e}");
    let e = record_err(|rec| {
        attention(
            rec,
            &t(&[1, 1, 2, 200]),
            &t(&[1, 1, 2, 200]),
            &t(&[1, 1, 2, 200]),
            None,
            1.0,
        )
    });
    assert!(e.contains("head dim"), "{e}");
}

// ---------------------------------------------------------------- timing

/// Rough timings of SAM-sized ops on whatever adapter runs the tests:
/// `cargo test --test gpu_kernels_linalg -- --ignored --nocapture time_`.
#[test]
#[ignore = "timing, not a check"]
fn time_sam_sized_ops() {
    const REPS: usize = 10;
    let time = |what: &str, f: &dyn Fn(&mut Recorder) -> websam::Result<GpuTensor>| {
        // Once to build the pipeline and fill the pool, then REPS in one submit.
        run(|rec| Ok(vec![f(rec)?]));
        let start = std::time::Instant::now();
        run(|rec| {
            let mut last = f(rec)?;
            for _ in 1..REPS {
                last = f(rec)?;
            }
            Ok(vec![last])
        });
        let ms = start.elapsed().as_secs_f64() * 1e3 / REPS as f64;
        eprintln!("{what:<50} {ms:9.3} ms");
    };
    let x = up(&randn(&[4096, 256]));
    let w = up(&randn(&[256, 256]));
    time("linear [4096, 256] x [256, 256]^T", &|rec| {
        linear(rec, &x, &w, None, Activation::None)
    });
    let t = up(&randn(&[10, 256]));
    let w2 = up(&randn(&[2048, 256]));
    time("linear [10, 256] x [2048, 256]^T", &|rec| {
        linear(rec, &t, &w2, None, Activation::Relu)
    });
    let a = up(&randn(&[1024, 1024]));
    time("matmul [1024, 1024] x [1024, 1024]", &|rec| {
        matmul(rec, &a, &a, &MatmulOpts::default())
    });
    let (qs, ks) = (up(&randn(&[1, 8, 10, 16])), up(&randn(&[1, 8, 4096, 16])));
    time("attention token->image 8x10x4096 D16", &|rec| {
        attention(rec, &qs, &ks, &ks, None, 0.25)
    });
    time("attention image->token 8x4096x10 D16", &|rec| {
        attention(rec, &ks, &qs, &qs, None, 0.25)
    });
    let qw = up(&randn(&[1444, 1, 49, 32]));
    let bw = up(&randn(&[1, 49, 49]));
    time("attention TinyViT 1444 windows 49x49 D32 bias", &|rec| {
        attention(rec, &qw, &qw, &qw, Some(&bw), 0.18)
    });
    let s = up(&randn(&[80, 4096]));
    time("softmax [80, 4096]", &|rec| softmax_last(rec, &s));
    let (g, b) = (up(&randn(&[256])), up(&randn(&[256])));
    time("layer_norm [4096, 256]", &|rec| {
        layer_norm(rec, &x, &g, &b, 1e-5)
    });
    let img = up(&randn(&[1, 64, 128, 128]));
    let (g64, b64) = (up(&randn(&[64])), up(&randn(&[64])));
    time("layer_norm_2d [1, 64, 128, 128] GELU", &|rec| {
        layer_norm_2d(rec, &img, &g64, &b64, 1e-6, Activation::Gelu)
    });
}
