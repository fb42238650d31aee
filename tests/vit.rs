//! SAM's ViT image encoder against the official `ImageEncoderViT`: configuration detection on
//! the official ViT-B/L/H key sets (shapes only), and parity on deterministic weights of ViT-B's
//! structure cut to two blocks, one windowed and one global (`tools/golden/make_vit.py`; the
//! weights are generated here from the fixture's manifest, see `tests/common/vit.rs`). Also
//! Hugging Face transformers' `SamModel` checkpoints: their ViT-B/L/H key sets, and the fixture
//! model saved under transformers' names (`vit/hf_keys.json`).
// Native (lavapipe without a GPU); the WebGPU and wasm CPU paths run in Chromium.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use common::{fixture, mask_mismatches, max_abs_diff, npy_vec, vit};
use websam::gpu::GpuSam;
use websam::image::{ImageFrame, RgbImage};
use websam::model::hf;
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

/// `tests/fixtures/vit/keys_hf_vit_<name>.json`: every key of transformers' `SamModel` state
/// dict, for the configuration its conversion script gives ViT-<name>, with its shape.
fn hf_shapes(name: &str) -> HashMap<String, Vec<usize>> {
    let path = common::fixture(&format!("vit/keys_hf_vit_{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn hf_sam_model_keys_of_b_l_h_map_one_to_one_onto_the_official_keys() {
    for name in ["b", "l", "h"] {
        let hf_shapes = hf_shapes(name);
        let official = official_shapes(name);
        assert!(hf::is_hf_checkpoint(hf_shapes.keys().map(String::as_str)));
        assert!(!hf::is_hf_checkpoint(official.keys().map(String::as_str)));
        let renames = hf::to_official(hf_shapes.keys().map(String::as_str)).unwrap();
        // No value transform: every tensor keeps its shape.
        for (hf_key, key) in &renames {
            assert_eq!(
                official.get(key),
                Some(&hf_shapes[hf_key]),
                "ViT-{name}: {hf_key} -> {key}"
            );
            assert_eq!(hf::hf_name(key).as_ref(), Some(hf_key), "ViT-{name}: {key}");
        }
        // A bijection onto the official keys once the tied copy of the positional encoding
        // is left out.
        let targets: HashSet<&str> = renames.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(targets.len(), renames.len(), "ViT-{name}");
        assert_eq!(targets.len(), official.len(), "ViT-{name}");
        let kept: HashSet<&str> = renames.iter().map(|(h, _)| h.as_str()).collect();
        let dropped: Vec<&str> = hf_shapes
            .keys()
            .map(String::as_str)
            .filter(|k| !kept.contains(k))
            .collect();
        assert_eq!(dropped, [hf::TIED_PE], "ViT-{name}");
    }
}

#[test]
fn the_fixture_s_names_are_those_transformers_gives_it() {
    let names = vit::hf_keys();
    let manifest: Vec<String> = vit::manifest().tensors.into_iter().map(|t| t.key).collect();
    assert_eq!(
        names.official_to_hf.keys().collect::<HashSet<_>>(),
        manifest.iter().collect::<HashSet<_>>()
    );
    for (key, hf_key) in names.official_to_hf.iter().chain(
        names
            .copies
            .iter()
            .map(|(copy, key)| (key, copy))
            .collect::<Vec<_>>(),
    ) {
        assert_eq!(hf::official_name(hf_key).as_ref(), Some(key), "{hf_key}");
    }
    assert_eq!(names.not_saved, [hf::TIED_PE]);
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

/// The fixture model as a hub file of transformers' `SamModel` (`save_pretrained`'s names, from
/// `vit/hf_keys.json`) through the normal loader: the official keys, every value bit for bit,
/// and the model built from them.
#[test]
fn cpu_hf_checkpoint_loads_as_the_official_one_and_matches_pytorch() {
    let names = vit::hf_keys();
    let bytes = vit::checkpoint_named(&|key| names.hub_names(key));
    let w = Weights::from_safetensors_bytes(&bytes).unwrap();
    drop(bytes);
    assert!(w.is_hugging_face());
    let official = weights();
    assert!(!official.is_hugging_face());
    assert_eq!(w.keys(), official.keys());
    for key in official.keys() {
        let shape = official.shape_of(key).unwrap();
        let ours = w.get(key, &shape).unwrap().flatten_all().unwrap();
        let theirs = official.get(key, &shape).unwrap().flatten_all().unwrap();
        assert_eq!(
            ours.to_vec1::<f32>().unwrap(),
            theirs.to_vec1::<f32>().unwrap(),
            "{key}"
        );
    }
    // The same values under the same keys build the same model: what the official checkpoint
    // gives (cpu_image_to_embedding_to_masks_matches_pytorch), not run twice.
    let sam = Sam::new(&w).unwrap();
    assert_eq!(sam.encoder_kind(), EncoderKind::Vit);
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
