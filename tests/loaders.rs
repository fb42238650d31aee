//! Checkpoint loading: every float dtype PyTorch saves, views with strides and offsets, 0-d
//! tensors, parameters, wrapped state dicts, and bytes that are not a checkpoint.

mod common;

use common::fixture;
use websam::model::weights::{WeightFormat, Weights};
use websam::Error;

fn values(w: &Weights, key: &str) -> Vec<f32> {
    let shape = w.shape_of(key).unwrap_or_else(|| panic!("{key} missing"));
    w.get(key, &shape)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn check_against_expected(file: &str) {
    let got = Weights::from_file(fixture(file)).unwrap();
    let expected = Weights::from_file(fixture("loader/expected.safetensors")).unwrap();
    assert_eq!(got.keys(), expected.keys(), "{file}: keys");
    for key in expected.keys() {
        assert_eq!(
            got.shape_of(key),
            expected.shape_of(key),
            "{file}: {key} shape"
        );
        assert_eq!(values(&got, key), values(&expected, key), "{file}: {key}");
    }
}

#[test]
fn pth_dtypes_views_and_parameters_load_exactly() {
    check_against_expected("loader/dtypes.pth");
    let w = Weights::from_file(fixture("loader/dtypes.pth")).unwrap();
    // Integer buffers are not weights.
    assert!(!w.contains("h.count"));
    assert_eq!(w.shape_of("e.transposed"), Some(vec![6, 4]));
    assert_eq!(w.shape_of("i.scalar"), Some(vec![]));
    assert_eq!(values(&w, "i.scalar"), vec![2.5]);
}

#[test]
fn state_dict_wrapped_under_model_loads() {
    check_against_expected("loader/wrapped.pt");
}

#[test]
fn format_is_told_from_the_bytes() {
    let pth = std::fs::read(fixture("mobile_sam.pth")).unwrap();
    let st = std::fs::read(fixture("sam_decoder.safetensors")).unwrap();
    assert_eq!(
        WeightFormat::detect(&pth).unwrap(),
        WeightFormat::PyTorchZip
    );
    assert_eq!(
        WeightFormat::detect(&st).unwrap(),
        WeightFormat::Safetensors
    );
    for bad in [
        &b""[..],
        b"short",
        b"\x80\x02legacy pickle bytes",
        b"{\"json\": true}  ",
    ] {
        let err = Weights::from_bytes(bad).unwrap_err();
        assert!(matches!(err, Error::WeightFormat(_)), "{err}");
    }
    let legacy = Weights::from_bytes(b"\x80\x02legacy pickle bytes").unwrap_err();
    assert!(legacy.to_string().contains("legacy"), "{legacy}");
}

#[test]
fn missing_and_misshaped_keys_name_key_and_shapes() {
    let w = Weights::from_file(fixture("loader/expected.safetensors")).unwrap();
    let err = w.get("nope.weight", &[2, 3]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "weight `nope.weight` is missing from the checkpoint (expected shape [2, 3])"
    );
    let err = w.get("a.f32", &[5, 3]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "weight `a.f32` has shape [3, 5] but the model expects [5, 3]"
    );
}

#[test]
fn every_official_key_of_the_full_checkpoint_is_float32_after_load() {
    let w = Weights::from_file(fixture("mobile_sam.pth")).unwrap();
    // 439 entries in the state dict, minus the int64 `num_batches_tracked` counters.
    assert!(w.len() > 300, "{} tensors", w.len());
    assert!(
        w.has_prefix("image_encoder.")
            && w.has_prefix("prompt_encoder.")
            && w.has_prefix("mask_decoder.")
    );
    assert!(!w.keys().iter().any(|k| k.ends_with("num_batches_tracked")));
    let t = w.get("mask_decoder.iou_token.weight", &[1, 256]).unwrap();
    assert_eq!(t.dtype(), candle_core::DType::F32);
}

/// An embedding written as `.npy` reads back bit for bit, with the header NumPy writes for a
/// float32 `[1, 256, 64, 64]` C-order array.
#[test]
fn embedding_npy_round_trips() {
    use websam::image::ImageFrame;
    use websam::model::sam::ImageEmbedding;
    let bytes = std::fs::read(fixture("embedding.npy")).unwrap();
    let frame = ImageFrame::new(480, 640).unwrap();
    let e = ImageEmbedding::from_npy_bytes(&bytes, frame).unwrap();
    let written = e.to_npy_bytes().unwrap();
    let back = ImageEmbedding::from_npy_bytes(&written, frame).unwrap();
    assert_eq!(back.to_vec().unwrap(), e.to_vec().unwrap());
    assert_eq!(&written[..6], b"\x93NUMPY");
    let n = u16::from_le_bytes([written[8], written[9]]) as usize;
    let header = String::from_utf8_lossy(&written[10..10 + n]).replace(' ', "");
    for part in [
        "'descr':'<f4'",
        "'fortran_order':False",
        "'shape':(1,256,64,64",
    ] {
        assert!(header.contains(part), "header {header} lacks {part}");
    }
    assert_eq!(written.len(), 10 + n + 4 * 256 * 64 * 64);
}
