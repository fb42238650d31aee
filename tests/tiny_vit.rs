//! TinyViT (MobileSAM's image encoder) built from the official checkpoint fixture
//! (`tests/fixtures/mobile_sam.pth`): keys, error messages, shapes. Its parity with PyTorch is
//! in `tests/parity.rs`; its conv kernels are unit-tested in `src/model/conv.rs`.

use candle_core::{DType, Device, Tensor};
use websam::model::backend::Cpu;
use websam::model::config::SamConfig;
use websam::model::tiny_vit::TinyViT;
use websam::model::weights::Weights;

mod common;

fn fixture_weights() -> Weights {
    Weights::from_file(common::fixture("mobile_sam.pth")).unwrap()
}

/// Every `image_encoder.*` key the port reads is in the official checkpoint with the shape it
/// expects (`head.*` and `norm_head.*` are present there and unused).
#[test]
fn loads_the_official_checkpoint() {
    let weights = fixture_weights();
    TinyViT::<Cpu>::new(
        &(),
        &SamConfig::mobile_sam().tiny_vit,
        &weights.pp("image_encoder"),
    )
    .unwrap();
}

/// A missing weight is an error naming its key and expected shape.
#[test]
fn a_missing_weight_names_its_key() {
    let mut weights = fixture_weights();
    let key = "image_encoder.layers.1.blocks.0.attn.attention_biases";
    assert!(weights.remove(key), "{key} is in the fixture");
    let err = TinyViT::<Cpu>::new(
        &(),
        &SamConfig::mobile_sam().tiny_vit,
        &weights.pp("image_encoder"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(key), "{err}");
    assert!(err.contains("[4, 49]"), "{err}");
}

/// The encoder runs on a small frame too (the grid is derived, not fixed at 64x64), padding
/// every stage to its window: a fast check of the whole forward's shapes.
#[test]
fn forward_shapes_on_a_small_frame() {
    let weights = fixture_weights();
    let mut cfg = SamConfig::mobile_sam().tiny_vit;
    // 64 -> patch grid 16 -> 8 -> 4 -> 4 (the last merge keeps the grid).
    cfg.img_size = 64;
    let model = TinyViT::<Cpu>::new(&(), &cfg, &weights.pp("image_encoder")).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu).unwrap();
    let y = model.forward(&mut Cpu, &x).unwrap();
    assert_eq!(y.dims(), [1, 256, 4, 4]);
    assert_eq!(y.dtype(), DType::F32);
    let values = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_finite()));

    // A frame of the wrong size is refused with the expected shape in the message.
    let wrong = Tensor::zeros((1, 3, 32, 64), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&mut Cpu, &wrong).unwrap_err().to_string();
    assert!(err.contains("[B, 3, 64, 64]"), "{err}");
}
