//! The conv, resize and layout kernels against candle on the CPU (and against
//! `websam::image`'s interpolation), on random shapes including odd sizes, sizes that are not
//! multiples of a workgroup, stride 1 and 2, padding 0, 1 and 2, the real SAM / TinyViT shapes
//! where lavapipe can afford them, and one hand-checkable case each.
// Native GPU tests (lavapipe without a GPU); the WebGPU ones run in Chromium (tests/web.rs).
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/gpu.rs"]
mod gpu;

use candle_core::{DType, Device, Tensor};
use gpu::{assert_close, partition_reference, randn, reverse_reference, run, up, values};
use websam::gpu::kernels::conv::{conv2d, conv2d_residual, conv_transpose2x2, Conv2dOpts};
use websam::gpu::kernels::Activation;
use websam::gpu::Recorder;

/// Dense convs sum up to a few thousand products of unit-variance values scaled to unit
/// output: f32 rounding differs between the GPU's tile order and candle's gemm by ~1e-6.
const CONV_ATOL: f32 = 2e-5;
const CONV_RTOL: f32 = 1e-5;

/// A weight with unit-variance outputs for `fan_in` inputs.
fn weight(shape: &[usize], fan_in: usize) -> Tensor {
    randn(shape)
        .affine(1.0 / (fan_in as f64).sqrt(), 0.0)
        .unwrap()
}

fn with_bias(y: &Tensor, bias: &Tensor) -> Tensor {
    let c = bias.dim(0).unwrap();
    y.broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap())
        .unwrap()
}

/// One conv2d case against candle: plain, + bias + GELU, + bias + residual + GELU.
fn check_conv(
    (b, c_in, h, w): (usize, usize, usize, usize),
    c_out: usize,
    (kh, kw): (usize, usize),
    opts: Conv2dOpts,
) {
    let x = randn(&[b, c_in, h, w]);
    let fan_in = c_in / opts.groups * kh * kw;
    let wt = weight(&[c_out, c_in / opts.groups, kh, kw], fan_in);
    let bias = randn(&[c_out]);
    let plain = x
        .conv2d(&wt, opts.padding, opts.stride, 1, opts.groups)
        .unwrap();
    let residual = randn(plain.dims());
    let out = run(|rec| {
        let (gx, gw, gb, gr) = (up(&x), up(&wt), up(&bias), up(&residual));
        Ok(vec![
            conv2d(rec, &gx, &gw, None, &opts, Activation::None)?,
            conv2d(rec, &gx, &gw, Some(&gb), &opts, Activation::Gelu)?,
            conv2d_residual(rec, &gx, &gw, Some(&gb), &gr, &opts, Activation::Gelu)?,
            conv2d(rec, &gx, &gw, Some(&gb), &opts, Activation::Relu)?,
        ])
    });
    let what = format!(
        "x [{b}, {c_in}, {h}, {w}] -> {c_out}, k {kh}x{kw}, {opts:?}, out {:?}",
        plain.dims()
    );
    let biased = with_bias(&plain, &bias);
    let wants = [
        plain.clone(),
        biased.gelu_erf().unwrap(),
        (&biased + &residual).unwrap().gelu_erf().unwrap(),
        biased.relu().unwrap(),
    ];
    for (i, (got, want)) in out.iter().zip(&wants).enumerate() {
        assert_close(
            got,
            &values(want),
            CONV_ATOL,
            CONV_RTOL,
            &format!("{what} variant {i}"),
        );
    }
}

fn opts(stride: usize, padding: usize, groups: usize) -> Conv2dOpts {
    Conv2dOpts {
        stride,
        padding,
        groups,
    }
}

#[test]
fn dense_conv_matches_candle_on_odd_shapes() {
    for (x, c_out, k) in [
        ((1, 3, 9, 13), 5, (3, 3)),
        ((2, 4, 17, 7), 67, (3, 3)),
        ((1, 19, 11, 12), 3, (3, 1)),
        ((2, 2, 5, 5), 1, (5, 5)),
        ((1, 33, 8, 9), 70, (2, 2)),
    ] {
        for stride in [1, 2] {
            for padding in [0, 1, 2] {
                if x.2 + 2 * padding < k.0 || x.3 + 2 * padding < k.1 {
                    continue;
                }
                check_conv(x, c_out, k, opts(stride, padding, 1));
            }
        }
    }
}

#[test]
fn grouped_conv_matches_candle() {
    // Neither dense nor depthwise: the GEMM kernel, one group per grid layer.
    check_conv((2, 6, 9, 10), 9, (3, 3), opts(1, 1, 3));
    check_conv((1, 8, 7, 7), 4, (1, 1), opts(2, 0, 2));
    // groups == Cin but Cout a multiple: a channel multiplier, still the GEMM.
    check_conv((1, 4, 6, 5), 8, (3, 3), opts(1, 1, 4));
}

#[test]
fn depthwise_conv_matches_candle() {
    for (x, k) in [
        ((1, 5, 7, 5), (3, 3)),
        ((2, 3, 33, 17), (3, 3)),
        ((1, 4, 16, 16), (5, 5)),
        ((1, 2, 1, 1), (3, 3)),
    ] {
        for stride in [1, 2] {
            for padding in [0, 1, 2] {
                if x.2 + 2 * padding < k.0 || x.3 + 2 * padding < k.1 {
                    continue;
                }
                check_conv(x, x.1, k, opts(stride, padding, x.1));
            }
        }
    }
}

#[test]
fn pointwise_conv_matches_candle() {
    for (x, c_out) in [
        ((1, 5, 3, 11), 7),
        ((2, 3, 5, 5), 4),
        ((1, 17, 9, 15), 65),
        ((3, 64, 1, 1), 1),
    ] {
        check_conv(x, c_out, (1, 1), opts(1, 0, 1));
    }
}

#[test]
fn sam_and_tiny_vit_shapes_match_candle() {
    // TinyViT's 1x1 expansion (64 -> 256; 64x64 instead of 256x256 to keep lavapipe fast).
    check_conv((1, 64, 64, 64), 256, (1, 1), opts(1, 0, 1));
    // PatchEmbed's first conv, 3 -> 32, 3x3 s2 p1 (on a 128x128 crop of the 1024 image).
    check_conv((1, 3, 128, 128), 32, (3, 3), opts(2, 1, 1));
    // MBConv's depthwise 3x3 on 128 channels, stride 1; PatchMerging's at stride 2.
    check_conv((1, 128, 32, 32), 128, (3, 3), opts(1, 1, 128));
    check_conv((1, 160, 32, 32), 160, (3, 3), opts(2, 1, 160));
    // SAM's mask downscaling: 2x2 stride-2 convs, 1 -> 4 on 256x256, 4 -> 16 on 128x128.
    check_conv((1, 1, 256, 256), 4, (2, 2), opts(2, 0, 1));
    check_conv((1, 4, 128, 128), 16, (2, 2), opts(2, 0, 1));
}

#[test]
fn neck_conv_matches_candle() {
    // The neck's 3x3 conv 256 -> 256 (K = 2304 products a value); 16x16 instead of 64x64,
    // which takes about 12 s on lavapipe.
    check_conv((1, 256, 16, 16), 256, (3, 3), opts(1, 1, 1));
}

#[test]
fn conv_fixed_small_case() {
    // One 3x3 input of ones, two 3x3 filters (ones and twos), padding 1, bias (0.5, -1):
    // each output is bias + filter value x the number of in-bounds taps (4 at corners,
    // 6 at edges, 9 in the centre). Depthwise on two channels gives the same per channel.
    let dev = Device::Cpu;
    let x = Tensor::ones((1, 1, 3, 3), DType::F32, &dev).unwrap();
    let wt = Tensor::from_vec([vec![1f32; 9], vec![2f32; 9]].concat(), (2, 1, 3, 3), &dev).unwrap();
    let bias = Tensor::new(&[0.5f32, -1.0], &dev).unwrap();
    let x2 = Tensor::ones((1, 2, 3, 3), DType::F32, &dev).unwrap();
    let out = run(|rec| {
        Ok(vec![
            conv2d(
                rec,
                &up(&x),
                &up(&wt),
                Some(&up(&bias)),
                &opts(1, 1, 1),
                Activation::None,
            )?,
            conv2d(
                rec,
                &up(&x2),
                &up(&wt),
                Some(&up(&bias)),
                &opts(1, 1, 2),
                Activation::None,
            )?,
        ])
    });
    let want = [
        4.5, 6.5, 4.5, 6.5, 9.5, 6.5, 4.5, 6.5, 4.5, //
        7.0, 11.0, 7.0, 11.0, 17.0, 11.0, 7.0, 11.0, 7.0,
    ];
    assert_eq!(out[0], want);
    assert_eq!(out[1], want);
}

#[test]
fn conv_transpose2x2_matches_candle() {
    for (b, c_in, c_out, h, w) in [
        (1, 3, 2, 5, 7),
        (2, 17, 9, 3, 11),
        (1, 70, 33, 9, 8),
        // SAM's output_upscaling: 256 -> 64 on 16x16 (64x64 in the model), 64 -> 32.
        (1, 256, 64, 16, 16),
        (1, 64, 32, 32, 32),
    ] {
        let x = randn(&[b, c_in, h, w]);
        let wt = weight(&[c_in, c_out, 2, 2], c_in);
        let bias = randn(&[c_out]);
        let plain = x.conv_transpose2d(&wt, 0, 0, 2, 1).unwrap();
        let out = run(|rec| {
            let (gx, gw, gb) = (up(&x), up(&wt), up(&bias));
            Ok(vec![
                conv_transpose2x2(rec, &gx, &gw, None, Activation::None)?,
                conv_transpose2x2(rec, &gx, &gw, Some(&gb), Activation::Gelu)?,
            ])
        });
        let what = format!("[{b}, {c_in}, {h}, {w}] -> {c_out}");
        assert_close(&out[0], &values(&plain), CONV_ATOL, CONV_RTOL, &what);
        let want = with_bias(&plain, &bias).gelu_erf().unwrap();
        assert_close(&out[1], &values(&want), CONV_ATOL, CONV_RTOL, &what);
    }
}

#[test]
fn conv_transpose2x2_fixed_small_case() {
    // One input pixel of value 2, weight [1, 1, 2, 2] = (1, 2, 3, 4), bias 1:
    // output 2x2 = 2 * weight + 1.
    let dev = Device::Cpu;
    let x = Tensor::new(&[2f32], &dev)
        .unwrap()
        .reshape((1, 1, 1, 1))
        .unwrap();
    let wt = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &dev)
        .unwrap()
        .reshape((1, 1, 2, 2))
        .unwrap();
    let bias = Tensor::new(&[1f32], &dev).unwrap();
    let out = run(|rec| {
        Ok(vec![conv_transpose2x2(
            rec,
            &up(&x),
            &up(&wt),
            Some(&up(&bias)),
            Activation::None,
        )?])
    });
    assert_eq!(out[0], [3.0, 5.0, 7.0, 9.0]);
}

fn zeros(shape: &[usize]) -> websam::gpu::GpuTensor {
    up(&Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap())
}

#[test]
fn conv_shape_errors() {
    let mut rec = Recorder::new(gpu::ctx());
    let x = zeros(&[1, 4, 8, 8]);
    let o = opts(1, 1, 1);
    let err = |r: websam::Result<websam::gpu::GpuTensor>| r.unwrap_err().to_string();
    // Not 4-d.
    let e = err(conv2d(
        &mut rec,
        &zeros(&[4, 8, 8]),
        &zeros(&[2, 4, 3, 3]),
        None,
        &o,
        Activation::None,
    ));
    assert!(e.contains("4-d"), "{e}");
    // Channels do not match the weight.
    let e = err(conv2d(
        &mut rec,
        &x,
        &zeros(&[2, 3, 3, 3]),
        None,
        &o,
        Activation::None,
    ));
    assert!(e.contains("groups"), "{e}");
    // Groups do not divide the channels.
    let e = err(conv2d(
        &mut rec,
        &x,
        &zeros(&[3, 4, 3, 3]),
        None,
        &opts(1, 1, 3),
        Activation::None,
    ));
    assert!(e.contains("groups"), "{e}");
    let e = err(conv2d(
        &mut rec,
        &x,
        &zeros(&[2, 4, 3, 3]),
        None,
        &opts(1, 1, 0),
        Activation::None,
    ));
    assert!(e.contains("groups"), "{e}");
    // Kernel larger than the padded input; stride 0.
    let e = err(conv2d(
        &mut rec,
        &x,
        &zeros(&[2, 4, 11, 11]),
        None,
        &o,
        Activation::None,
    ));
    assert!(e.contains("does not fit"), "{e}");
    let e = err(conv2d(
        &mut rec,
        &x,
        &zeros(&[2, 4, 3, 3]),
        None,
        &opts(0, 1, 1),
        Activation::None,
    ));
    assert!(e.contains("stride 0"), "{e}");
    // Bias and residual shapes.
    let w = zeros(&[2, 4, 3, 3]);
    let e = err(conv2d(
        &mut rec,
        &x,
        &w,
        Some(&zeros(&[3])),
        &o,
        Activation::None,
    ));
    assert!(e.contains("bias"), "{e}");
    let e = err(conv2d_residual(
        &mut rec,
        &x,
        &w,
        None,
        &zeros(&[1, 2, 8, 7]),
        &o,
        Activation::None,
    ));
    assert!(e.contains("residual"), "{e}");
    // Transposed conv: weight [Cin, Cout, 2, 2] only.
    let e = err(conv_transpose2x2(
        &mut rec,
        &x,
        &zeros(&[4, 2, 3, 3]),
        None,
        Activation::None,
    ));
    assert!(e.contains("[4, Cout, 2, 2]"), "{e}");
    let e = err(conv_transpose2x2(
        &mut rec,
        &x,
        &zeros(&[3, 2, 2, 2]),
        None,
        Activation::None,
    ));
    assert!(e.contains("[4, Cout, 2, 2]"), "{e}");
    let e = err(conv_transpose2x2(
        &mut rec,
        &x,
        &zeros(&[4, 2, 2, 2]),
        Some(&zeros(&[4])),
        Activation::None,
    ));
    assert!(e.contains("bias"), "{e}");
    assert_eq!(rec.dispatch_count(), 0);
}

// ---------------------------------------------------------------------------------------
// Bilinear resize

/// Tolerance of the resize: the same f32 formula on both sides; only a fused multiply-add
/// the GPU compiler may form differs (~1 ulp of the values, which are ~N(0, 1)).
const RESIZE_ATOL: f32 = 1e-6;
const RESIZE_RTOL: f32 = 1e-6;

/// `websam::image`'s bilinear interpolation (PyTorch, align_corners=False) written out
/// directly: every plane of `x` to `out_h x out_w`, top-left `keep_h x keep_w` kept.
fn resize_reference(x: &Tensor, out: (usize, usize), keep: (usize, usize)) -> Vec<f32> {
    let (b, c, in_h, in_w) = x.dims4().unwrap();
    let taps = |n_in: usize, n_out: usize, i: usize| {
        let scale = n_in as f32 / n_out as f32;
        let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(n_in - 1);
        let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
        let l1 = (src - i0 as f32).clamp(0.0, 1.0);
        (i0, i1, 1.0 - l1, l1)
    };
    let v = values(x);
    let mut y = Vec::new();
    for plane in v.chunks_exact(in_h * in_w).take(b * c) {
        for oy in 0..keep.0 {
            let (y0, y1, ly0, ly1) = taps(in_h, out.0, oy);
            for ox in 0..keep.1 {
                let (x0, x1, lx0, lx1) = taps(in_w, out.1, ox);
                let at = |yy: usize, xx: usize| plane[yy * in_w + xx];
                y.push(
                    ly0 * (lx0 * at(y0, x0) + lx1 * at(y0, x1))
                        + ly1 * (lx0 * at(y1, x0) + lx1 * at(y1, x1)),
                );
            }
        }
    }
    y
}

#[test]
fn resize_matches_the_reference_formula() {
    type Case = ([usize; 4], (usize, usize), (usize, usize));
    let cases: [Case; 6] = [
        ([1, 1, 5, 7], (13, 9), (13, 9)),     // up, odd ratios
        ([2, 3, 17, 33], (7, 5), (7, 5)),     // down
        ([1, 2, 16, 16], (64, 64), (40, 29)), // up 4x, cropped
        ([1, 1, 9, 9], (9, 9), (9, 9)),       // identity
        ([1, 1, 1, 6], (4, 11), (3, 11)),     // a single input row
        ([3, 1, 20, 21], (37, 18), (1, 1)),   // one pixel kept
    ];
    for (shape, out, keep) in cases {
        let x = randn(&shape);
        let got = run(|rec| {
            Ok(vec![websam::gpu::kernels::resize::resize_bilinear(
                rec,
                &up(&x),
                out.0,
                out.1,
                keep.0,
                keep.1,
            )?])
        });
        let want = resize_reference(&x, out, keep);
        assert_close(
            &got[0],
            &want,
            RESIZE_ATOL,
            RESIZE_RTOL,
            &format!("{shape:?} -> {out:?} keep {keep:?}"),
        );
    }
}

#[test]
fn resize_fixed_small_case() {
    // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), (4, 4),
    // mode="bilinear", align_corners=False): rows [0, .25, .75, 1] + 2 * (0, .5, 1.5, 2) / 2.
    let x = Tensor::new(&[0f32, 1.0, 2.0, 3.0], &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 2, 2))
        .unwrap();
    let got = run(|rec| {
        Ok(vec![websam::gpu::kernels::resize::resize_bilinear(
            rec,
            &up(&x),
            4,
            4,
            4,
            4,
        )?])
    });
    #[rustfmt::skip]
    let want = [
        0.0, 0.25, 0.75, 1.0,
        0.5, 0.75, 1.25, 1.5,
        1.5, 1.75, 2.25, 2.5,
        2.0, 2.25, 2.75, 3.0,
    ];
    assert_eq!(got[0], want);
}

#[test]
fn resize_matches_sam_postprocess() {
    // SAM's postprocess_masks for a 480x640 image: 256 -> 1024, crop to 768x1024, -> 480x640;
    // two GPU dispatches against websam::image::postprocess_logits on three planes.
    use websam::gpu::kernels::resize::resize_bilinear;
    use websam::image::{postprocess_logits, ImageFrame};
    let frame = ImageFrame::new(480, 640).unwrap();
    let x = randn(&[1, 3, 256, 256]).affine(8.0, 0.0).unwrap();
    let got = run(|rec| {
        let gx = up(&x);
        let (in_h, in_w) = frame.input;
        let up1024 = resize_bilinear(rec, &gx, 1024, 1024, in_h, in_w)?;
        let (h, w) = frame.original;
        Ok(vec![resize_bilinear(rec, &up1024, h, w, h, w)?])
    });
    let planes = values(&x);
    let want: Vec<f32> = planes
        .chunks_exact(256 * 256)
        .flat_map(|p| postprocess_logits(p, &frame).unwrap())
        .collect();
    // Logits of scale 8: the same tolerance relative to the values.
    assert_close(
        &got[0],
        &want,
        8.0 * RESIZE_ATOL,
        RESIZE_RTOL,
        "postprocess",
    );
}

#[test]
fn resize_shape_errors() {
    use websam::gpu::kernels::resize::resize_bilinear;
    let mut rec = Recorder::new(gpu::ctx());
    let err = |r: websam::Result<websam::gpu::GpuTensor>| r.unwrap_err().to_string();
    let e = err(resize_bilinear(&mut rec, &zeros(&[4, 4]), 8, 8, 8, 8));
    assert!(e.contains("4-d"), "{e}");
    let e = err(resize_bilinear(&mut rec, &zeros(&[1, 1, 4, 4]), 0, 8, 0, 8));
    assert!(e.contains("cannot resize"), "{e}");
    let e = err(resize_bilinear(&mut rec, &zeros(&[1, 1, 4, 4]), 8, 8, 9, 8));
    assert!(e.contains("cannot keep"), "{e}");
    assert_eq!(rec.dispatch_count(), 0);
}

// ---------------------------------------------------------------------------------------
// Layout: copies, so the results must be exact.

use websam::gpu::kernels::layout::{concat, pad, permute, slice, window_partition, window_reverse};

#[test]
fn permute_matches_candle() {
    let cases: [(&[usize], &[usize]); 9] = [
        (&[2, 4099, 17], &[0, 2, 1]), // tokens -> channels-first (tiled transpose)
        (&[1, 33, 31, 20], &[0, 3, 1, 2]), // NHWC -> NCHW, merges to a 2-D transpose
        (&[2, 20, 9, 7], &[0, 2, 3, 1]), // NCHW -> NHWC
        (&[37, 5], &[1, 0]),
        (&[3, 4, 5], &[0, 1, 2]),       // identity
        (&[2, 3, 4, 5], &[2, 0, 3, 1]), // general gather
        (&[2, 1, 3, 1, 4, 5], &[5, 3, 1, 0, 2, 4]),
        (&[2, 3, 2, 4, 3, 2], &[0, 1, 3, 2, 4, 5]), // rank 6, window-style
        (&[7], &[0]),
    ];
    for (shape, perm) in cases {
        let x = randn(shape);
        let got = run(|rec| Ok(vec![permute(rec, &up(&x), perm)?]));
        let want = x.permute(perm).unwrap().contiguous().unwrap();
        assert_close(
            &got[0],
            &values(&want),
            0.0,
            0.0,
            &format!("{shape:?} {perm:?}"),
        );
    }
}

#[test]
fn pad_matches_candle() {
    type Case<'a> = (&'a [usize], &'a [(usize, usize)]);
    let cases: [Case; 4] = [
        (&[1, 3, 5, 7], &[(0, 0), (0, 0), (1, 2), (2, 1)]),
        (&[2, 7, 9, 4], &[(0, 0), (0, 5), (0, 3), (0, 0)]), // TinyViT's bottom/right
        (&[5], &[(3, 0)]),
        (
            &[2, 1, 2, 1, 2, 3],
            &[(1, 0), (0, 1), (2, 2), (0, 0), (1, 1), (0, 2)],
        ),
    ];
    for (shape, pads) in cases {
        let x = randn(shape);
        let got = run(|rec| Ok(vec![pad(rec, &up(&x), pads, 0.0)?]));
        let mut want = x.clone();
        for (d, &(a, b)) in pads.iter().enumerate() {
            want = want.pad_with_zeros(d, a, b).unwrap();
        }
        assert_close(
            &got[0],
            &values(&want),
            0.0,
            0.0,
            &format!("{shape:?} {pads:?}"),
        );
    }
}

#[test]
fn pad_slice_concat_fixed_small_case() {
    // [[1, 2], [3, 4]] padded with -1 by one row on top and one column on the right,
    // sliced to its last two columns, concatenated with itself along dim 0.
    let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let out = run(|rec| {
        let p = pad(rec, &up(&x), &[(1, 0), (0, 1)], -1.0)?;
        let s = slice(rec, &p, 1, 1, 2)?;
        let c = concat(rec, &[&s, &s], 0)?;
        Ok(vec![p, s, c])
    });
    assert_eq!(out[0], [-1.0, -1.0, -1.0, 1.0, 2.0, -1.0, 3.0, 4.0, -1.0]);
    assert_eq!(out[1], [-1.0, -1.0, 2.0, -1.0, 4.0, -1.0]);
    assert_eq!(out[2], [[-1.0, -1.0, 2.0, -1.0, 4.0, -1.0]; 2].concat());
}

#[test]
fn slice_matches_candle() {
    let cases: [(&[usize], usize, usize, usize); 4] = [
        (&[2, 7, 9, 5], 1, 2, 3),
        (&[3, 4099], 1, 1000, 3099),
        (&[6, 3], 0, 5, 1),
        (&[1, 2, 3, 4, 5, 6], 4, 1, 4),
    ];
    for (shape, dim, start, len) in cases {
        let x = randn(shape);
        let got = run(|rec| Ok(vec![slice(rec, &up(&x), dim, start, len)?]));
        let want = x.narrow(dim, start, len).unwrap().contiguous().unwrap();
        let what = format!("{shape:?} dim {dim} [{start}, +{len})");
        assert_close(&got[0], &values(&want), 0.0, 0.0, &what);
    }
}

#[test]
fn concat_matches_candle() {
    let cases: [(&[&[usize]], usize); 4] = [
        (&[&[2, 3, 4], &[2, 5, 4], &[2, 1, 4]], 1),
        (&[&[3, 7], &[1, 7]], 0),
        (&[&[2, 3, 257], &[2, 3, 3]], 2),
        (&[&[1, 5, 2], &[1, 0, 2], &[1, 3, 2]], 1), // an empty one
    ];
    for (shapes, dim) in cases {
        let xs: Vec<Tensor> = shapes.iter().map(|s| randn(s)).collect();
        let got = run(|rec| {
            let gs: Vec<_> = xs.iter().map(up).collect();
            let refs: Vec<_> = gs.iter().collect();
            Ok(vec![concat(rec, &refs, dim)?])
        });
        let want = Tensor::cat(&xs, dim).unwrap();
        assert_close(
            &got[0],
            &values(&want),
            0.0,
            0.0,
            &format!("{shapes:?} dim {dim}"),
        );
    }
}

#[test]
fn window_partition_and_reverse_match_candle() {
    // (b, (h, w), ws, c): padded and not, TinyViT's 64x64 grid in windows of 7 (pads to 70).
    for (b, hw, ws, c) in [
        (1, (14, 14), 7, 5),
        (2, (9, 11), 4, 3),
        (1, (5, 3), 7, 2),
        (1, (64, 64), 7, 16),
    ] {
        let x = randn(&[b, hw.0 * hw.1, c]);
        let windows = partition_reference(&x, hw, ws);
        let attn = randn(windows.dims());
        let got = run(|rec| {
            let p = window_partition(rec, &up(&x), hw, ws)?;
            let r = window_reverse(rec, &up(&attn), hw, ws, None)?;
            let rr = window_reverse(rec, &up(&attn), hw, ws, Some(&up(&x)))?;
            // The round trip gives the tokens back.
            let back = window_reverse(rec, &p, hw, ws, None)?;
            Ok(vec![p, r, rr, back])
        });
        let what = format!("b{b} {hw:?} ws{ws} c{c}");
        assert_close(&got[0], &values(&windows), 0.0, 0.0, &what);
        let reversed = reverse_reference(&attn, b, hw, ws);
        assert_close(&got[1], &values(&reversed), 0.0, 0.0, &what);
        let with_res = (&reversed + &x).unwrap();
        assert_close(&got[2], &values(&with_res), 0.0, 0.0, &what);
        assert_close(&got[3], &values(&x), 0.0, 0.0, &what);
    }
}

#[test]
fn layout_shape_errors() {
    let mut rec = Recorder::new(gpu::ctx());
    let err = |r: websam::Result<websam::gpu::GpuTensor>| r.unwrap_err().to_string();
    let x = zeros(&[2, 3, 4]);
    for perm in [&[0, 1][..], &[0, 1, 1], &[0, 1, 3]] {
        let e = err(permute(&mut rec, &x, perm));
        assert!(e.contains("not a permutation"), "{e}");
    }
    let e = err(permute(&mut rec, &zeros(&[1; 7]), &[0, 1, 2, 3, 4, 5, 6]));
    assert!(e.contains("at most 6"), "{e}");
    let e = err(pad(&mut rec, &x, &[(0, 0), (1, 1)], 0.0));
    assert!(e.contains("pairs"), "{e}");
    let e = err(slice(&mut rec, &x, 2, 3, 2));
    assert!(e.contains("out of range"), "{e}");
    let e = err(slice(&mut rec, &x, 3, 0, 1));
    assert!(e.contains("out of range"), "{e}");
    let e = err(concat(&mut rec, &[], 0));
    assert!(e.contains("no tensors"), "{e}");
    let e = err(concat(&mut rec, &[&x, &zeros(&[2, 4, 4])], 2));
    assert!(e.contains("does not match"), "{e}");
    let e = err(concat(&mut rec, &[&x, &zeros(&[2, 3])], 0));
    assert!(e.contains("does not match"), "{e}");
    let e = err(concat(&mut rec, &[&x], 3));
    assert!(e.contains("out of range"), "{e}");
    let tokens = zeros(&[1, 12, 2]);
    let e = err(window_partition(&mut rec, &tokens, (3, 5), 2));
    assert!(e.contains("3x5 grid"), "{e}");
    let e = err(window_partition(&mut rec, &tokens, (3, 4), 0));
    assert!(e.contains("windows of 0"), "{e}");
    let e = err(window_partition(&mut rec, &zeros(&[12, 2]), (3, 4), 2));
    assert!(e.contains("[B, H*W, C]"), "{e}");
    // 3x4 in windows of 2: 2 x 2 windows of 4 tokens.
    let e = err(window_reverse(
        &mut rec,
        &zeros(&[3, 4, 2]),
        (3, 4),
        2,
        None,
    ));
    assert!(e.contains("windows of 2"), "{e}");
    let e = err(window_reverse(
        &mut rec,
        &zeros(&[4, 3, 2]),
        (3, 4),
        2,
        None,
    ));
    assert!(e.contains("windows of 2"), "{e}");
    let windows = zeros(&[4, 4, 2]);
    let e = err(window_reverse(
        &mut rec,
        &windows,
        (3, 4),
        2,
        Some(&zeros(&[1, 12, 3])),
    ));
    assert!(e.contains("residual"), "{e}");
    assert_eq!(rec.dispatch_count(), 0);
}
