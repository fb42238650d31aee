//! SAM's ViT image encoder against the official `ImageEncoderViT`: configuration detection on
//! the official ViT-B/L/H key sets (shapes only), and parity on deterministic weights of ViT-B's
//! structure cut to two blocks, one windowed and one global (`tools/golden/make_vit.py`; the
//! weights are generated here from the fixture's manifest, see `tests/common/vit.rs`).
// Native (lavapipe without a GPU); the WebGPU and wasm CPU paths run in Chromium.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::HashMap;
use std::sync::OnceLock;

use common::{fixture, mask_mismatches, max_abs_diff, npy_vec, vit};
use websam::gpu::GpuSam;
use websam::image::{ImageFrame, RgbImage};
use websam::model::sam::{EncoderKind, ImageEmbedding, ImageEncoder, Prediction, Prompt, Sam};
use websam::model::vit::VitConfig;
use websam::model::weights::Weights;

mod common;
#[path = "common/gpu.rs"]
mod gpu;

/// `tests/fixtures/vit/keys_vit_<name>.json`: every key of `build_sam_vit_<name>()`'s state
/// dict with its shape.
fn official_shapes(name: &str) -> HashMap<String, Vec<usize>> {
    let path = common::fixture(&format!("vit/keys_vit_{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn detects_the_official_configurations_from_their_shapes() {
    for (name, want) in [
        ("b", VitConfig::vit_b()),
        ("l", VitConfig::vit_l()),
        ("h", VitConfig::vit_h()),
    ] {
        let shapes = official_shapes(name);
        let got = VitConfig::detect(&|k: &str| shapes.get(&format!("image_encoder.{k}")).cloned())
            .unwrap();
        assert_eq!(got, want, "ViT-{name}");
        assert_eq!(
            got.name(),
            Some(
                ["ViT-B", "ViT-L", "ViT-H"]
                    [["b", "l", "h"].iter().position(|n| *n == name).unwrap()]
            )
        );
    }
}

#[test]
fn detection_refuses_what_is_not_a_vit_encoder() {
    let mut shapes = official_shapes("b");
    let lookup = |s: &HashMap<String, Vec<usize>>| {
        VitConfig::detect(&|k: &str| s.get(&format!("image_encoder.{k}")).cloned())
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    shapes.insert("image_encoder.pos_embed".into(), vec![1, 64, 32, 768]);
    let err = lookup(&shapes);
    assert!(err.contains("pos_embed"), "{err}");
    let mut shapes = official_shapes("b");
    shapes.remove("image_encoder.blocks.3.attn.rel_pos_w");
    let err = lookup(&shapes);
    assert!(err.contains("blocks.3.attn.rel_pos_w"), "{err}");
    let mut shapes = official_shapes("b");
    shapes.insert("image_encoder.blocks.4.attn.rel_pos_h".into(), vec![27, 48]);
    let err = lookup(&shapes);
    assert!(err.contains("block 4"), "{err}");
}

/// Image embedding: CPU within 1e-4 of PyTorch, the GPU (lavapipe without one) within 2e-3.
const CPU_EMBEDDING: f32 = 1e-4;
const GPU_EMBEDDING: f32 = 2e-3;
/// Final masks may differ only where the reference logit is this close to 0 (as tests/parity.rs).
const MASK_BAND: f32 = 1e-3;

fn weights() -> &'static Weights {
    static W: OnceLock<Weights> = OnceLock::new();
    W.get_or_init(|| {
        let t = std::time::Instant::now();
        let bytes = vit::checkpoint();
        println!(
            "generated {} MB of weights in {:.1?}",
            bytes.len() / 1_000_000,
            t.elapsed()
        );
        Weights::from_safetensors_bytes(&bytes).unwrap()
    })
}

/// The image through `set_image`'s path (PIL resize, normalize, pad, the encoder), then every
/// predictor case at the image's own size (640x480), each mask as the reference's.
fn check_image_to_masks(
    emb: &ImageEmbedding,
    decode: &dyn Fn(&ImageEmbedding, &Prompt) -> Prediction,
    label: &str,
    tol: f32,
) {
    let c = vit::cases();
    let d = max_abs_diff(&emb.to_vec().unwrap(), &npy_vec(&c.embedding));
    println!("{label}: ViT embedding max abs diff {d:.2e}");
    assert!(d <= tol, "{label}: embedding diff {d:e} > {tol:e}");
    for case in &c.cases {
        let reference = npy_vec(case.logits.as_ref().unwrap());
        let pred = decode(emb, &case.prompt());
        let low = max_abs_diff(&pred.low_res_logits, &npy_vec(&case.low_res_logits));
        let iou = max_abs_diff(&pred.iou, &npy_vec(&case.iou));
        let (h, w) = (case.orig_size[0], case.orig_size[1]);
        for i in 0..pred.num_masks() {
            let ours = pred.logits(i).unwrap();
            let plane = &reference[i * h * w..(i + 1) * h * w];
            let bad = mask_mismatches(&ours, plane, MASK_BAND);
            let on = plane.iter().filter(|&&v| v > 0.0).count();
            println!(
                "{label} {} mask {i}: {bad} pixels differ outside the band ({on} on); low-res logits {low:.2e}, iou {iou:.2e}",
                case.name
            );
            assert_eq!(bad, 0, "{label} {} mask {i}", case.name);
            assert!(
                on > 0 && on < h * w,
                "{label} {} mask {i} is trivial",
                case.name
            );
        }
    }
}

#[test]
fn the_weights_are_the_reference_s_and_load_under_the_official_keys() {
    let w = weights();
    let m = vit::manifest();
    assert_eq!(w.len(), m.tensors.len());
    for t in &m.tensors {
        assert_eq!(
            w.shape_of(&t.key).as_deref(),
            Some(&t.shape[..]),
            "{}",
            t.key
        );
    }
    let sam = Sam::new(w).unwrap();
    assert_eq!(sam.encoder_kind(), EncoderKind::Vit);
    let Some(ImageEncoder::Vit(vit)) = sam.image_encoder() else {
        panic!("not a ViT encoder");
    };
    let mut want = VitConfig::vit_b();
    want.depth = 2;
    want.global_attn_indexes = vec![1];
    want.rel_pos_lens = vec![(27, 27), (127, 127)];
    assert_eq!(vit.config(), &want);
}

#[test]
fn cpu_image_to_embedding_to_masks_matches_pytorch() {
    let sam = Sam::new(weights()).unwrap();
    let image = RgbImage::open(fixture(&vit::cases().image)).unwrap();
    let t = std::time::Instant::now();
    let mut steps = Vec::new();
    let emb = sam
        .embed_with_progress(&image, &mut |done, all| steps.push((done, all)))
        .unwrap();
    println!("CPU encode {:.2?}", t.elapsed());
    // Progress after each block.
    assert_eq!(steps, [(1, 2), (2, 2)]);
    assert_eq!(emb.frame, ImageFrame::new(480, 640).unwrap());
    check_image_to_masks(
        &emb,
        &|e, p| sam.decode(e, p).unwrap(),
        "CPU",
        CPU_EMBEDDING,
    );
}

#[test]
fn gpu_image_to_embedding_to_masks_matches_pytorch() {
    let gpu = pollster::block_on(GpuSam::upload(gpu::ctx(), weights())).expect("GPU model");
    let image = RgbImage::open(fixture(&vit::cases().image)).unwrap();
    let t = std::time::Instant::now();
    let mut steps = Vec::new();
    let (emb, gemb, dispatches) =
        pollster::block_on(gpu.embed_counted(&image, &mut |done, all| steps.push((done, all))))
            .unwrap();
    println!(
        "GPU encode {:.2?}, {dispatches} dispatches, a submit per block",
        t.elapsed()
    );
    assert_eq!(steps, [(1, 2), (2, 2)]);
    check_image_to_masks(
        &emb,
        &|_, p| pollster::block_on(gpu.decode(&gemb, p)).unwrap(),
        "GPU",
        GPU_EMBEDDING,
    );
}
