//! TinyViT (MobileSAM's image encoder): the depthwise conv kernel against candle, and the
//! encoder against the official checkpoint fixture (`tests/fixtures/mobile_sam.pth`, see
//! `tests/fixtures/README.md`).

use candle_core::{DType, Device, Tensor};
use websam::model::config::SamConfig;
use websam::model::conv::{conv2d, Activation, DepthwiseConv2d};
use websam::model::tiny_vit::TinyViT;
use websam::model::weights::Weights;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture_weights() -> Weights {
    let path = format!("{FIXTURES}/mobile_sam.pth");
    Weights::from_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The direct depthwise kernel against candle's grouped conv2d (one conv per channel), on odd
/// sizes, strides 1 and 2, with and without padding, bias, and fused GELU.
#[test]
fn depthwise_conv_matches_candle_grouped_conv() {
    let dev = Device::Cpu;
    let cases = [
        // (batch, channels, h, w, kernel, stride, padding)
        (1, 3, 9, 13, 3, 1, 1),
        (2, 7, 11, 5, 3, 2, 1),
        (1, 4, 17, 17, 3, 2, 0),
        (1, 5, 6, 7, 5, 1, 2),
        (1, 1, 1, 1, 3, 1, 1),
        (1, 6, 15, 31, 3, 1, 0),
    ];
    for (b, c, h, w, k, stride, padding) in cases {
        let what = format!("b{b} c{c} {h}x{w} k{k} s{stride} p{padding}");
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
        let weight = Tensor::randn(0f32, 0.5, (c, 1, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
        let expected = x
            .conv2d(
                &weight, padding, stride, /* dilation */ 1, /* groups */ c,
            )
            .unwrap()
            .broadcast_add(&bias.reshape((c, 1, 1)).unwrap())
            .unwrap();
        let conv = DepthwiseConv2d::new(&weight, &bias, stride, padding).unwrap();

        let got = conv.forward(&x, Activation::Identity).unwrap();
        assert_eq!(got.dims(), expected.dims(), "{what}");
        let diff = max_abs_diff(&got, &expected);
        assert!(diff <= 1e-5, "{what}: max abs diff {diff}");

        let got = conv.forward(&x, Activation::Gelu).unwrap();
        let diff = max_abs_diff(&got, &expected.gelu_erf().unwrap());
        assert!(diff <= 1e-5, "{what} + GELU: max abs diff {diff}");
    }
}

/// The 1x1 conv taken as a matmul against candle's conv2d; other kernels go to candle.
#[test]
fn dense_conv_matches_candle() {
    let dev = Device::Cpu;
    for (k, stride, padding) in [(1, 1, 0), (3, 1, 1), (3, 2, 1)] {
        let x = Tensor::randn(0f32, 1.0, (1, 5, 9, 7), &dev).unwrap();
        let weight = Tensor::randn(0f32, 0.5, (6, 5, k, k), &dev).unwrap();
        let expected = x.conv2d(&weight, padding, stride, 1, 1).unwrap();
        let got = conv2d(&x, &weight, stride, padding).unwrap();
        assert_eq!(got.dims(), expected.dims());
        let diff = max_abs_diff(&got, &expected);
        assert!(
            diff <= 1e-5,
            "k{k} s{stride} p{padding}: max abs diff {diff}"
        );
    }
}

/// Every `image_encoder.*` key the port reads is in the official checkpoint with the shape it
/// expects (`head.*` and `norm_head.*` are present there and unused).
#[test]
fn loads_the_official_checkpoint() {
    let weights = fixture_weights();
    TinyViT::new(
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
    assert!(weights.remove(key).is_some(), "{key} is in the fixture");
    let err = TinyViT::new(
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
    let model = TinyViT::new(&cfg, &weights.pp("image_encoder")).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu).unwrap();
    let y = model.forward(&x).unwrap();
    assert_eq!(y.dims(), [1, 256, 4, 4]);
    assert_eq!(y.dtype(), DType::F32);
    let values = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_finite()));

    // A frame of the wrong size is refused with the expected shape in the message.
    let wrong = Tensor::zeros((1, 3, 32, 64), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&wrong).unwrap_err().to_string();
    assert!(err.contains("[B, 3, 64, 64]"), "{err}");
}
