//! The predictor: image state, backends, and recovery from a lost GPU device without losing
//! the image (natively on lavapipe without a GPU).
#![cfg(not(target_arch = "wasm32"))]

mod common;
#[path = "common/gpu.rs"]
mod gpu;

use common::{cases, fixture, max_abs_diff, npy, npy_vec, Case};
use websam::model::sam::{ImageEmbedding, Prompt};
use websam::model::weights::Weights;
use websam::predictor::{Backend, BackendChoice, Predictor};

fn case(name: &str) -> Case {
    cases().cases.into_iter().find(|c| c.name == name).unwrap()
}

fn predictor(choice: BackendChoice) -> Predictor {
    let weights = Weights::from_file(fixture("sam_decoder.safetensors")).unwrap();
    let (p, why_not) = pollster::block_on(Predictor::new(weights, choice)).unwrap();
    assert!(why_not.is_none(), "{why_not:?}");
    p
}

fn check(p: &mut Predictor, c: &Case) -> f32 {
    let (pred, masks) = pollster::block_on(p.predict(&c.prompt())).unwrap();
    assert_eq!(masks.len(), pred.num_masks());
    let d = max_abs_diff(&pred.low_res_logits, &npy_vec(&c.low_res_logits));
    assert!(d <= 1e-3, "{}: {d}", c.name);
    d
}

#[test]
fn predicting_before_an_image_is_an_error() {
    let mut p = predictor(BackendChoice::Cpu);
    let err = pollster::block_on(p.predict(&Prompt::default())).unwrap_err();
    assert!(err.to_string().contains("no image set"), "{err}");
    assert!(p.embedding().is_err());
}

#[test]
fn cpu_and_gpu_predictors_match_the_reference() {
    let c = case("predictor_points");
    for choice in [BackendChoice::Cpu, BackendChoice::Gpu] {
        gpu::ctx(); // fails loudly when no adapter exists
        let mut p = predictor(choice);
        let expected = if choice == BackendChoice::Cpu {
            Backend::Cpu
        } else {
            Backend::Gpu
        };
        assert_eq!(p.backend(), expected);
        let emb = ImageEmbedding::new(npy("embedding.npy"), c.frame()).unwrap();
        pollster::block_on(p.set_embedding(emb)).unwrap();
        check(&mut p, &c);
    }
}

/// A lost device is replaced and the image survives: the next predict gives the same masks.
#[test]
fn a_lost_gpu_device_is_recovered_with_the_image() {
    gpu::ctx();
    let c = case("predictor_box");
    let mut p = predictor(BackendChoice::Gpu);
    let emb = ImageEmbedding::new(npy("embedding.npy"), c.frame()).unwrap();
    pollster::block_on(p.set_embedding(emb)).unwrap();
    check(&mut p, &c);
    let lost = p.gpu().unwrap().ctx().clone();
    lost.device().destroy();
    let d = check(&mut p, &c);
    assert_eq!(p.backend(), Backend::Gpu, "a new device was available");
    assert!(!p.gpu().unwrap().ctx().is_lost());
    assert!(lost.is_lost(), "the old device reports its loss");
    println!("after device loss: low-res logits within {d:.2e} of the reference");
}
