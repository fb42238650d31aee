//! The GPU model against the CPU model and the PyTorch goldens, natively (lavapipe on machines
//! without a GPU): every decoder case of the fixtures.
// Native GPU tests (lavapipe without a GPU); the WebGPU ones run in Chromium (tests/web.rs).
#![cfg(not(target_arch = "wasm32"))]

mod common;
#[path = "common/gpu.rs"]
mod gpu;

use common::{cases, fixture, max_abs_diff, npy, npy_vec};
use websam::gpu::GpuSam;
use websam::model::sam::{ImageEmbedding, Sam};
use websam::model::weights::Weights;

/// GPU vs CPU and GPU vs PyTorch, low-res logits and IoU.
const GPU_TOLERANCE: f32 = 1e-3;

#[test]
fn gpu_decoder_matches_cpu_and_pytorch_on_every_case() {
    let weights = Weights::from_file(fixture("mobile_sam.pth")).unwrap();
    let cpu = Sam::new(&weights).unwrap();
    let gpu = pollster::block_on(GpuSam::upload(gpu::ctx(), &weights)).expect("GPU model");
    let mut failures = Vec::new();
    for case in &cases().cases {
        let emb = ImageEmbedding::new(npy("embedding.npy"), case.frame()).unwrap();
        let gemb = pollster::block_on(gpu.upload_embedding(&emb)).unwrap();
        let prompt = case.prompt();
        let (g, dispatches) = pollster::block_on(gpu.decode_counted(&gemb, &prompt))
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let c = cpu.decode(&emb, &prompt).unwrap();
        let vs_cpu = max_abs_diff(&g.low_res_logits, &c.low_res_logits);
        let vs_cpu_iou = max_abs_diff(&g.iou, &c.iou);
        let vs_ref = max_abs_diff(&g.low_res_logits, &npy_vec(&case.low_res_logits));
        let vs_ref_iou = max_abs_diff(&g.iou, &npy_vec(&case.iou));
        println!(
            "{:>22}: vs CPU logits {vs_cpu:.2e} iou {vs_cpu_iou:.2e}; vs PyTorch logits {vs_ref:.2e} iou {vs_ref_iou:.2e}; {dispatches} dispatches, 1 submit",
            case.name
        );
        if [vs_cpu, vs_cpu_iou, vs_ref, vs_ref_iou]
            .iter()
            .any(|d| *d > GPU_TOLERANCE || d.is_nan())
        {
            failures.push(case.name.clone());
        }
    }
    assert!(failures.is_empty(), "over {GPU_TOLERANCE:e}: {failures:?}");
}

/// The postprocessing on the GPU (upsample, crop, resize to 480x640) against the CPU's and
/// against the reference's full-resolution logits.
#[test]
fn gpu_postprocessing_matches_cpu_and_pytorch() {
    let weights = Weights::from_file(fixture("sam_decoder.safetensors")).unwrap();
    let gpu = pollster::block_on(GpuSam::upload(gpu::ctx(), &weights)).expect("GPU model");
    let mut checked = 0;
    for case in cases().cases.iter().filter(|c| !c.in_1024_frame()) {
        let emb = ImageEmbedding::new(npy("embedding.npy"), case.frame()).unwrap();
        let gemb = pollster::block_on(gpu.upload_embedding(&emb)).unwrap();
        let (pred, planes) =
            pollster::block_on(gpu.decode_with_logits(&gemb, &case.prompt())).unwrap();
        assert_eq!(planes.len(), pred.num_masks());
        let reference = npy_vec(case.logits.as_ref().unwrap());
        let (h, w) = (case.orig_size[0], case.orig_size[1]);
        for (i, plane) in planes.iter().enumerate() {
            // Same low-res logits through the CPU postprocessing.
            let cpu = pred.logits(i).unwrap();
            let d = max_abs_diff(plane, &cpu);
            let bad = common::mask_mismatches(plane, &reference[i * h * w..(i + 1) * h * w], 1e-3);
            println!("{} mask {i}: GPU vs CPU postprocess {d:.2e}; {bad} pixels differ from PyTorch outside the band", case.name);
            assert!(d <= 1e-4, "{} mask {i}: {d}", case.name);
            assert_eq!(bad, 0, "{} mask {i}", case.name);
            let mask = pred.mask_from_logits(i, plane).unwrap();
            assert_eq!((mask.height, mask.width), (h, w));
        }
        checked += 1;
    }
    assert!(checked >= 2);
}
