//! Every GPU kernel against candle on the CPU, on random shapes including odd sizes and sizes
//! that are not multiples of the workgroup, natively (lavapipe on machines without a GPU).
// Native GPU tests (lavapipe without a GPU); the WebGPU ones run in Chromium (tests/web.rs).
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/gpu.rs"]
mod gpu;

use gpu::{assert_close, randn, run, up, values};
use websam::gpu::kernels::elementwise::{binary, unary, Binary, Unary};

#[test]
fn unary_ops_match_candle() {
    for shape in [
        vec![1],
        vec![255],
        vec![257],
        vec![3, 1000, 7],
        vec![70_001],
    ] {
        let x = randn(&shape).affine(3.0, 0.0).unwrap();
        let out = run(|rec| {
            let gx = up(&x);
            Ok(vec![
                unary(rec, &gx, Unary::Gelu)?,
                unary(rec, &gx, Unary::Relu)?,
                unary(
                    rec,
                    &gx,
                    Unary::Affine {
                        scale: 0.5,
                        shift: -2.0,
                    },
                )?,
            ])
        });
        let what = format!("{shape:?}");
        assert_close(
            &out[0],
            &values(&x.gelu_erf().unwrap()),
            1e-6,
            1e-6,
            &format!("gelu {what}"),
        );
        assert_close(
            &out[1],
            &values(&x.relu().unwrap()),
            0.0,
            0.0,
            &format!("relu {what}"),
        );
        assert_close(
            &out[2],
            &values(&x.affine(0.5, -2.0).unwrap()),
            1e-6,
            1e-6,
            &format!("affine {what}"),
        );
    }
}

#[test]
fn binary_ops_broadcast_like_candle() {
    let cases: [(&[usize], &[usize]); 5] = [
        (&[5, 7], &[5, 7]),
        (&[2, 3, 257], &[257]),
        (&[4, 1, 9], &[1, 6, 1]),
        (&[2, 8, 33, 3], &[8, 1, 1]),
        (&[1], &[300]),
    ];
    for (sa, sb) in cases {
        let (a, b) = (randn(sa), randn(sb));
        let out = run(|rec| {
            let (ga, gb) = (up(&a), up(&b));
            Ok(vec![
                binary(rec, &ga, &gb, Binary::Add)?,
                binary(rec, &ga, &gb, Binary::Sub)?,
                binary(rec, &ga, &gb, Binary::Mul)?,
            ])
        });
        let what = format!("{sa:?} op {sb:?}");
        assert_close(
            &out[0],
            &values(&a.broadcast_add(&b).unwrap()),
            0.0,
            0.0,
            &what,
        );
        assert_close(
            &out[1],
            &values(&a.broadcast_sub(&b).unwrap()),
            0.0,
            0.0,
            &what,
        );
        assert_close(
            &out[2],
            &values(&a.broadcast_mul(&b).unwrap()),
            0.0,
            0.0,
            &what,
        );
    }
    let err = run_err(&[2, 3], &[4, 3]);
    assert!(err.contains("do not broadcast"), "{err}");
}

fn run_err(sa: &[usize], sb: &[usize]) -> String {
    let mut rec = websam::gpu::Recorder::new(gpu::ctx());
    binary(&mut rec, &up(&randn(sa)), &up(&randn(sb)), Binary::Add)
        .unwrap_err()
        .to_string()
}

/// One recording, one submit: chained ops see each other's results, buffers return to the pool.
#[test]
fn a_chain_is_one_submit_and_buffers_are_reused() {
    let x = randn(&[4, 513]);
    let out = run(|rec| {
        let gx = up(&x);
        let a = unary(rec, &gx, Unary::Gelu)?;
        let b = binary(rec, &a, &gx, Binary::Mul)?;
        let c = unary(
            rec,
            &b,
            Unary::Affine {
                scale: 2.0,
                shift: 1.0,
            },
        )?;
        assert_eq!(rec.dispatch_count(), 3);
        Ok(vec![c])
    });
    let want = x
        .gelu_erf()
        .unwrap()
        .mul(&x)
        .unwrap()
        .affine(2.0, 1.0)
        .unwrap();
    assert_close(&out[0], &values(&want), 1e-5, 1e-5, "chain");
    assert!(
        gpu::ctx().pool().free_count() > 0,
        "dropped tensors go back to the pool"
    );
}

/// Within one recording, an intermediate dropped before the recording is submitted gives its
/// buffer to the ops after it (so a long pass needs about as much memory as its widest point,
/// not the sum of its intermediates), while an upload made meanwhile gets a buffer no
/// unsubmitted op uses: its data reaches the op that reads it.
#[test]
fn buffers_freed_while_recording_serve_later_ops_but_not_uploads() {
    // A context of its own: the allocation count is not shared with the other tests.
    let ctx = websam::gpu::GpuContext::new_blocking().expect("a GPU adapter (lavapipe)");
    let shape = [1024, 256]; // 1 MiB per tensor
    let bytes = 1024 * 256 * 4;
    let (x, y) = (randn(&shape), randn(&shape));
    let gx = websam::gpu::GpuTensor::from_candle(&ctx, &x).unwrap();
    let mut rec = websam::gpu::Recorder::new(&ctx);
    let before = ctx.pool().allocated_bytes();
    let mut cur = unary(&mut rec, &gx, Unary::Gelu).unwrap();
    let steps = 12;
    for _ in 0..steps {
        let shift = Unary::Affine {
            scale: 1.0,
            shift: 1.0,
        };
        cur = unary(&mut rec, &cur, shift).unwrap(); // the previous `cur` drops here
    }
    // Uploaded while buffers freed by this recording wait in the pool.
    let gy = websam::gpu::GpuTensor::from_candle(&ctx, &y).unwrap();
    let out = binary(&mut rec, &cur, &gy, Binary::Add).unwrap();
    drop(cur);
    rec.read(&out);
    let got = rec.finish_blocking().unwrap();
    let grown = ctx.pool().allocated_bytes() - before;
    // Without reuse: 1 + steps intermediates + the upload + the output.
    assert!(
        grown <= 4 * bytes,
        "the recording allocated {grown} bytes for {} intermediates of {bytes}",
        steps + 2
    );
    let want = (x.gelu_erf().unwrap() + steps as f64).unwrap() + &y;
    assert_close(
        &got[0],
        &values(&want.unwrap()),
        1e-5,
        1e-5,
        "chain with an upload",
    );
}

/// ReLU keeps NaN as PyTorch's does (`max(x, 0)` may drop it), on this adapter. WGSL lets an
/// implementation assume no NaN, so this holds where the driver keeps them (lavapipe does); the
/// CPU path keeps them everywhere.
#[test]
fn relu_keeps_nan() {
    let x = candle_core::Tensor::new(
        &[-1f32, 0.5, f32::NAN, f32::NEG_INFINITY, f32::INFINITY],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let out = run(|rec| Ok(vec![unary(rec, &up(&x), Unary::Relu)?]));
    let y = &out[0];
    assert_eq!(&y[..2], &[0.0, 0.5]);
    assert!(y[2].is_nan(), "ReLU(NaN) = {}", y[2]);
    assert_eq!(&y[3..], &[0.0, f32::INFINITY]);
}
