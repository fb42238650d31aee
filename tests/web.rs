//! The GPU engine in headless Chromium on WebGPU (`cargo test --target wasm32-unknown-unknown
//! --test web`, run by `./build.sh test`): kernels and the decoder below the JS API. The whole
//! model through the package's API (TinyViT included, both backends, page and worker) is tested
//! by tests/browser/api.test.mjs. Chromium's WebGPU here is SwiftShader: correct but slow.
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

fn npy(bytes: &[u8]) -> Vec<f32> {
    websam::model::sam::read_npy_f32(bytes).unwrap().1
}

/// The GPU decoder on WebGPU against the PyTorch goldens, with and without a mask input.
#[wasm_bindgen_test]
async fn webgpu_decoder_matches_pytorch() {
    use websam::gpu::model::GpuSam;
    use websam::image::ImageFrame;
    use websam::model::sam::{ImageEmbedding, Point, PointLabel, Prompt};
    use websam::model::weights::Weights;

    let ctx = ctx().await;
    let weights = Weights::from_bytes(fixture!("sam_decoder.safetensors")).unwrap();
    let sam = GpuSam::new(&ctx, &weights).await.expect("GPU model");
    let frame = ImageFrame::new(1024, 1024).unwrap();
    let emb = ImageEmbedding::from_npy_bytes(fixture!("embedding.npy"), frame).unwrap();
    let gemb = sam.upload_embedding(&emb).await.unwrap();
    // The cases `point_multimask` and `point_mask_input` of tests/fixtures/cases.json.
    let click = Point {
        x: 256.0,
        y: 240.0,
        label: PointLabel::Positive,
    };
    let cases = [
        (
            Prompt {
                points: vec![click],
                multimask: true,
                ..Prompt::default()
            },
            npy(fixture!("case_point_multimask_low_res_logits.npy")),
            npy(fixture!("case_point_multimask_iou.npy")),
        ),
        (
            Prompt {
                points: vec![click],
                mask_input: Some(npy(fixture!("case_point_mask_input_mask_input.npy"))),
                multimask: false,
                ..Prompt::default()
            },
            npy(fixture!("case_point_mask_input_low_res_logits.npy")),
            npy(fixture!("case_point_mask_input_iou.npy")),
        ),
    ];
    for (i, (prompt, logits, iou)) in cases.iter().enumerate() {
        let pred = sam.decode(&gemb, prompt).await.expect("decode");
        let d_logits = max_abs_diff(&pred.low_res_logits, logits);
        let d_iou = max_abs_diff(&pred.iou, iou);
        web_sys_log(&format!(
            "case {i} on {}: low-res logits {d_logits:.2e}, iou {d_iou:.2e}",
            ctx.adapter_name()
        ));
        assert!(
            d_logits <= 1e-3 && d_iou <= 1e-3,
            "case {i}: {d_logits} {d_iou}"
        );
    }
}

fn web_sys_log(msg: &str) {
    wasm_bindgen_test::console_log!("{msg}");
}
