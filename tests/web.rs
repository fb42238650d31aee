//! The GPU engine in headless Chromium on WebGPU (`cargo test --target wasm32-unknown-unknown
//! --test web`, run by `./build.sh test`). Chromium's WebGPU here is SwiftShader: correct but
//! slow, so these tests run few, small dispatches; full-model parity runs natively.
#![cfg(target_arch = "wasm32")]

use candle_core::{Device, Tensor};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use websam::gpu::kernels::elementwise::{binary, unary, Binary, Unary};
use websam::gpu::{GpuContext, GpuTensor, Recorder};

wasm_bindgen_test_configure!(run_in_browser);

async fn ctx() -> GpuContext {
    match GpuContext::new().await {
        Ok(ctx) => ctx,
        Err(e) => {
            panic!("WebGPU test found no adapter: {e} (Chromium needs --enable-unsafe-webgpu)")
        }
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[wasm_bindgen_test]
async fn webgpu_adapter_and_elementwise_kernels() {
    let ctx = ctx().await;
    let x = Tensor::randn(0f32, 2.0, (3, 257), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1.0, 257, &Device::Cpu).unwrap();
    let mut rec = Recorder::new(&ctx);
    let gx = GpuTensor::from_candle(&ctx, &x).unwrap();
    let gb = GpuTensor::from_candle(&ctx, &b).unwrap();
    let g = unary(&mut rec, &gx, Unary::Gelu).unwrap();
    let y = binary(&mut rec, &g, &gb, Binary::Add).unwrap();
    rec.read(&y);
    let out = rec.finish().await.expect("submit and read back");
    let want = x.gelu_erf().unwrap().broadcast_add(&b).unwrap();
    let d = max_abs_diff(&out[0], &values(&want));
    assert!(
        d <= 1e-5,
        "GELU + add on WebGPU ({}): {d}",
        ctx.adapter_name()
    );
}
