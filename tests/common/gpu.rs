//! GPU test helpers: one context per test binary, fails loudly when no adapter exists.
#![allow(dead_code)]

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use websam::gpu::{GpuContext, GpuTensor, Recorder};

/// The shared context. No adapter is a test failure, never a skip.
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new_blocking() {
        Ok(ctx) => {
            eprintln!("GPU adapter: {}", ctx.adapter_name());
            ctx
        }
        Err(e) => panic!(
            "GPU tests need an adapter and found none: {e}. Run `./build.sh setup` (Mesa's lavapipe) or set WGPU_BACKEND"
        ),
    })
}

/// Records with `f`, submits once, and returns the values of the tensors `f` returns.
pub fn run(f: impl FnOnce(&mut Recorder) -> websam::Result<Vec<GpuTensor>>) -> Vec<Vec<f32>> {
    let mut rec = Recorder::new(ctx());
    let outs = f(&mut rec).expect("record");
    for t in &outs {
        rec.read(t);
    }
    rec.finish_blocking().expect("submit and read back")
}

/// A random candle tensor, N(0, 1), on the CPU.
pub fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

/// Uploads a candle tensor.
pub fn up(t: &Tensor) -> GpuTensor {
    GpuTensor::from_candle(ctx(), t).unwrap()
}

/// Flat f32 values of a candle tensor.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Asserts `|got - want| <= atol + rtol * |want|` everywhere, naming the worst element.
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.1 || g.is_nan() != w.is_nan() {
            worst = (i, excess.max(f32::MIN_POSITIVE));
        }
    }
    assert!(
        worst.1 <= 0.0,
        "{what}: element {} is {} but should be {} (atol {atol}, rtol {rtol})",
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}

/// TinyViTBlock's window partition as candle does it in `websam::model::tiny_vit`.
pub fn partition_reference(x: &Tensor, (h, w): (usize, usize), ws: usize) -> Tensor {
    let (b, _, c) = x.dims3().unwrap();
    let (pad_b, pad_r) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
    let x = x
        .reshape((b, h, w, c))
        .unwrap()
        .pad_with_zeros(1, 0, pad_b)
        .unwrap()
        .pad_with_zeros(2, 0, pad_r)
        .unwrap();
    let (n_h, n_w) = ((h + pad_b) / ws, (w + pad_r) / ws);
    x.reshape((b, n_h, ws, n_w, ws, c))
        .unwrap()
        .transpose(2, 3)
        .unwrap()
        .reshape((b * n_h * n_w, ws * ws, c))
        .unwrap()
}

/// ... and its window reverse with the crop.
pub fn reverse_reference(x: &Tensor, b: usize, (h, w): (usize, usize), ws: usize) -> Tensor {
    let c = x.dim(2).unwrap();
    let (n_h, n_w) = (h.div_ceil(ws), w.div_ceil(ws));
    x.reshape((b, n_h, n_w, ws, ws, c))
        .unwrap()
        .transpose(2, 3)
        .unwrap()
        .reshape((b, n_h * ws, n_w * ws, c))
        .unwrap()
        .narrow(1, 0, h)
        .unwrap()
        .narrow(2, 0, w)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((b, h * w, c))
        .unwrap()
}
