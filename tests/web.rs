//! The GPU engine in headless Chromium on WebGPU (`cargo test --target wasm32-unknown-unknown
//! --test web`, run by `./build.sh test`): kernels and the TinyViT encoder on a small frame,
//! below the JS API; and the CPU path's SIMD matrix product (src/gemm.rs) as compiled for wasm. The decoder and the model through the package's API (both backends, page
//! and worker) are tested against PyTorch by tests/browser/api.test.mjs. Chromium's WebGPU here is SwiftShader:
//! correct but slow (a 1024x1024 encode takes about 100 s there; the full-size encoder is
//! checked against PyTorch natively, tests/gpu_tiny_vit.rs, with the same WGSL).
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
    assert!(ctx.limits().max_storage_buffer_binding_size == 128 << 20); // WebGPU's default
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

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $name
        ))
        .as_slice()
    };
}

/// Every kernel of the TinyViT encoder through the browser's shader compiler and WebGPU: the GPU
/// port against the CPU port on a 128x128 frame (patch grid 32 -> 16 -> 8 -> 8, windows padded
/// as at full size), with the fixture's MobileSAM weights.
#[wasm_bindgen_test]
async fn webgpu_tiny_vit_matches_the_cpu_port_on_a_small_frame() {
    use websam::gpu::backend::Gpu;
    use websam::model::backend::{Backend, Cpu};
    use websam::model::config::SamConfig;
    use websam::model::tiny_vit::TinyViT;
    use websam::model::weights::Weights;

    let ctx = ctx().await;
    let weights = Weights::from_bytes(fixture!("mobile_sam.pth")).unwrap();
    let vb = weights.pp("image_encoder");
    let mut cfg = SamConfig::mobile_sam().tiny_vit;
    cfg.img_size = 128;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 128, 128), &Device::Cpu).unwrap();
    let want = TinyViT::<Cpu>::new(&(), &cfg, &vb)
        .unwrap()
        .forward(&mut Cpu, &x)
        .unwrap();

    let gpu = TinyViT::<Gpu>::new(&ctx, &cfg, &vb).expect("GPU TinyViT");
    let mut g = Gpu::begin(&ctx);
    let input = g.input(&x).unwrap();
    let y = gpu.forward(&mut g, &input).expect("record TinyViT");
    let mut rec = g.into_recorder();
    assert_eq!(y.shape(), want.dims());
    let dispatches = rec.dispatch_count();
    rec.read(&y);
    let out = rec.finish().await.expect("submit and read back");
    let d = max_abs_diff(&out[0], &values(&want));
    web_sys_log(&format!(
        "TinyViT 128x128 on {}: {dispatches} dispatches, vs the CPU port {d:.2e}",
        ctx.adapter_name()
    ));
    assert!(d <= 2e-3, "TinyViT on WebGPU vs CPU: {d}");
}

/// The CPU path's matrix products in wasm (the crate's SIMD kernel, src/gemm.rs) against an f64
/// reference: tile edges, several depth and column blocks, batches, transposed operands.
#[wasm_bindgen_test]
fn cpu_simd_matmul_matches_an_f64_reference() {
    let dev = Device::Cpu;
    let gen = |n: usize, seed: u64| -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let h = (i * 2654435761 + seed * 97).wrapping_mul(0x9E3779B97F4A7C15) >> 40;
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    };
    for &(batch, m, k, n) in &[
        (1, 1, 1, 1),
        (2, 7, 300, 13),
        (1, 64, 256, 512),
        (3, 67, 513, 530),
    ] {
        let (a, b) = (gen(batch * m * k, 1), gen(batch * k * n, 2));
        let mut want = vec![0f32; batch * m * n];
        for z in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k)
                        .map(|p| a[(z * m + i) * k + p] as f64 * b[(z * k + p) * n + j] as f64)
                        .sum();
                    want[(z * m + i) * n + j] = s as f32;
                }
            }
        }
        let ta = Tensor::from_vec(a, (batch, m, k), &dev).unwrap();
        let tb = Tensor::from_vec(b, (batch, k, n), &dev).unwrap();
        let got = values(&websam::threads::matmul(&ta, &tb).unwrap());
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{batch}x{m}x{k}x{n}: {d}");
        // Column-strided views of the same matrices.
        let t = |x: &Tensor| {
            x.transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(1, 2)
                .unwrap()
        };
        let got = values(&websam::threads::matmul(&t(&ta), &t(&tb)).unwrap());
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "transposed {batch}x{m}x{k}x{n}: {d}");
    }
}

fn web_sys_log(msg: &str) {
    wasm_bindgen_test::console_log!("{msg}");
}
