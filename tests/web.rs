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

/// TinyViT on WebGPU: the embedding of the fixture image against the PyTorch golden, then a
/// click decoded from it against the golden masks (SwiftShader: the slowest test here).
#[wasm_bindgen_test]
async fn webgpu_tiny_vit_matches_pytorch() {
    use websam::gpu::model::GpuSam;
    use websam::image::RgbImage;
    use websam::model::weights::Weights;

    let ctx = ctx().await;
    let weights = Weights::from_bytes(fixture!("mobile_sam.pth")).unwrap();
    let sam = GpuSam::new(&ctx, &weights).await.expect("GPU model");
    let image = RgbImage::decode(fixture!("image.png")).unwrap();
    let t0 = js_sys_now();
    let (emb, _gpu_emb) = sam.embed(&image).await.expect("embed");
    let ms = js_sys_now() - t0;
    let d = max_abs_diff(&emb.to_vec().unwrap(), &npy(fixture!("embedding.npy")));
    web_sys_log(&format!(
        "TinyViT on {}: embedding max abs diff {d:.2e}, {ms:.0} ms",
        ctx.adapter_name()
    ));
    assert!(d <= 2e-3, "TinyViT embedding on WebGPU differs by {d}");
}

fn js_sys_now() -> f64 {
    js_sys::Date::now()
}

/// `WebSam`, the surface the JS wrapper calls, on both backends: `setEmbedding` + `predict`
/// against the goldens, and the errors a page can cause.
#[wasm_bindgen_test]
async fn websam_binding_predicts_on_webgpu_and_cpu() {
    use js_sys::{Float32Array, Reflect};
    use wasm_bindgen::JsValue;
    use wasm_bindgen_futures::JsFuture;
    use websam::web::WebSam;

    let get = |obj: &JsValue, key: &str| Reflect::get(obj, &JsValue::from_str(key)).unwrap();
    let embedding = npy(fixture!("embedding.npy"));
    let want = npy(fixture!("case_predictor_box_low_res_logits.npy"));
    for backend in ["webgpu", "cpu"] {
        let sam = WebSam::load(fixture!("sam_decoder.safetensors").to_vec(), backend.into())
            .await
            .unwrap_or_else(|e| panic!("{backend}: {e:?}"));
        assert_eq!(sam.backend(), backend);

        // Before an image: a rejected promise with a message, not a panic.
        let err = JsFuture::from(sam.predict(Some(vec![10.0, 10.0, 1.0]), None, None, true))
            .await
            .unwrap_err();
        let msg = format!("{:?}", js_sys::Error::from(err).message());
        assert!(msg.contains("no image set"), "{backend}: {msg}");

        JsFuture::from(sam.set_embedding(embedding.clone(), 640, 480))
            .await
            .unwrap();
        // The `predictor_box` case of tests/fixtures/cases.json, in image pixels.
        let r =
            JsFuture::from(sam.predict(None, Some(vec![370.0, 50.0, 570.0, 210.0]), None, false))
                .await
                .unwrap_or_else(|e| panic!("{backend}: {e:?}"));
        let logits = Float32Array::from(get(&r, "lowResLogits")).to_vec();
        let d = max_abs_diff(&logits, &want);
        web_sys_log(&format!(
            "WebSam on {backend}: low-res logits within {d:.2e}"
        ));
        assert!(d <= 1e-3, "{backend}: {d}");
        let masks = js_sys::Array::from(&get(&r, "masks"));
        assert_eq!(masks.length(), 1);
        assert_eq!(get(&masks.get(0), "width").as_f64(), Some(640.0));

        let err = JsFuture::from(sam.predict(Some(vec![700.0, 10.0, 1.0]), None, None, true))
            .await
            .unwrap_err();
        let msg = format!("{:?}", js_sys::Error::from(err).message());
        assert!(
            msg.contains("outside the 640x480 image"),
            "{backend}: {msg}"
        );
    }
}
