//! The GPU TinyViT encoder against the CPU port and the PyTorch golden embedding, natively
//! (lavapipe on machines without a GPU), then image -> GPU embedding -> GPU decode -> masks
//! against the golden full-resolution logits.
// Native GPU tests (lavapipe without a GPU); the WebGPU ones run in Chromium (tests/web.rs).
#![cfg(not(target_arch = "wasm32"))]

mod common;
#[path = "common/gpu.rs"]
mod gpu;

use std::time::Instant;

use common::{cases, fixture, mask_mismatches, max_abs_diff, npy_vec};
use websam::gpu::GpuSam;
use websam::image::RgbImage;
use websam::model::sam::Sam;
use websam::model::weights::Weights;

/// GPU embedding vs the CPU port's and vs PyTorch's.
const EMBEDDING_TOLERANCE: f32 = 2e-3;
/// Final masks may differ only where the reference logit is this close to 0.
const MASK_BAND: f32 = 1e-3;

#[test]
fn gpu_tiny_vit_matches_cpu_and_pytorch_then_decodes_masks() {
    let all = cases();
    let weights = Weights::from_file(fixture("mobile_sam.pth")).unwrap();
    let image = RgbImage::open(fixture(&all.image)).unwrap();
    let gpu = pollster::block_on(GpuSam::upload(gpu::ctx(), &weights)).expect("GPU model");

    let start = Instant::now();
    let (emb, gemb, dispatches) =
        pollster::block_on(gpu.embed_counted(&image, &mut |_, _| {})).expect("GPU embed");
    let gpu_time = start.elapsed();
    let ours = emb.to_vec().unwrap();
    assert!(
        ours.iter().all(|v| v.is_finite()),
        "non-finite GPU embedding"
    );

    let cpu = Sam::new(&weights).unwrap();
    let start = Instant::now();
    let cpu_emb = cpu.embed(&image).unwrap();
    let cpu_time = start.elapsed();
    assert_eq!(emb.frame, cpu_emb.frame);
    let vs_cpu = max_abs_diff(&ours, &cpu_emb.to_vec().unwrap());
    let vs_ref = max_abs_diff(&ours, &npy_vec(&all.embedding));
    println!(
        "GPU TinyViT embedding: vs CPU {vs_cpu:.2e}, vs PyTorch {vs_ref:.2e}; {dispatches} dispatches, 1 submit; encode {gpu_time:.2?} (CPU port {cpu_time:.2?})"
    );
    assert!(
        vs_cpu <= EMBEDDING_TOLERANCE && vs_ref <= EMBEDDING_TOLERANCE,
        "embedding diff over {EMBEDDING_TOLERANCE:e}: vs CPU {vs_cpu:e}, vs PyTorch {vs_ref:e}"
    );

    let mut checked = 0;
    for case in all.cases.iter().filter(|c| !c.in_1024_frame()) {
        let reference = npy_vec(case.logits.as_ref().unwrap());
        let pred = pollster::block_on(gpu.decode(&gemb, &case.prompt()))
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let (h, w) = (case.orig_size[0], case.orig_size[1]);
        for i in 0..pred.num_masks() {
            let ours = pred.logits(i).unwrap();
            let bad = mask_mismatches(&ours, &reference[i * h * w..(i + 1) * h * w], MASK_BAND);
            println!(
                "GPU end to end {} mask {i}: {bad} pixels differ outside the band",
                case.name
            );
            assert_eq!(bad, 0, "GPU end to end {} mask {i}", case.name);
            checked += 1;
        }
    }
    assert!(checked > 0, "no full-resolution case in the fixtures");
}
