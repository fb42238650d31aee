//! The CPU model against the PyTorch goldens (`tests/fixtures`): decoder cases, the full
//! predictor path for a non-square image, the TinyViT embedding, image -> click -> mask, and
//! the resize that feeds the encoder.

mod common;

use std::sync::OnceLock;

use common::{cases, fixture, mask_mismatches, max_abs_diff, npy, npy_vec};
use websam::image::{preprocess_shape, resize_bilinear_pil, ImageFrame, RgbImage};
use websam::model::config::IMAGE_SIZE;
use websam::model::sam::{ImageEmbedding, Sam};
use websam::model::weights::Weights;

/// Low-res logits and IoU predictions, decoder from the golden embedding.
const DECODER_TOLERANCE: f32 = 1e-4;
/// TinyViT embedding of the fixture image.
const EMBEDDING_TOLERANCE: f32 = 1e-3;
/// Final masks may differ only where the reference logit is this close to 0.
const MASK_BAND: f32 = 1e-3;

fn sam_pth() -> &'static Sam {
    static SAM: OnceLock<Sam> = OnceLock::new();
    SAM.get_or_init(|| Sam::from_file(fixture("mobile_sam.pth")).expect("load .pth"))
}

fn golden_embedding(frame: ImageFrame) -> ImageEmbedding {
    ImageEmbedding::new(npy("embedding.npy"), frame).expect("embedding")
}

/// Every decoder case from the golden embedding; returns a report line per case.
fn check_decoder_cases(sam: &Sam, label: &str) {
    let all = cases();
    let mut failures = Vec::new();
    for case in &all.cases {
        let pred = sam
            .decode(&golden_embedding(case.frame()), &case.prompt())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let d_logits = max_abs_diff(&pred.low_res_logits, &npy_vec(&case.low_res_logits));
        let d_iou = max_abs_diff(&pred.iou, &npy_vec(&case.iou));
        println!(
            "{label} {:>22}: low-res logits {d_logits:.2e}, iou {d_iou:.2e}",
            case.name
        );
        if d_logits > DECODER_TOLERANCE || d_iou > DECODER_TOLERANCE {
            failures.push(format!("{}: logits {d_logits:e}, iou {d_iou:e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: over {DECODER_TOLERANCE:e}: {failures:?}"
    );
}

#[test]
fn decoder_cases_match_pytorch_from_pth_f16() {
    check_decoder_cases(sam_pth(), "pth");
}

#[test]
fn decoder_cases_match_pytorch_from_safetensors_bf16() {
    let sam = Sam::from_file(fixture("sam_decoder.safetensors")).expect("load safetensors");
    check_decoder_cases(&sam, "safetensors");
}

/// The full predictor path (coordinate transform, upsampling, crop, resize to 480x640,
/// threshold) against the reference's full-resolution logits.
#[test]
fn predictor_masks_match_pytorch() {
    let sam = sam_pth();
    let mut checked = 0;
    for case in cases().cases.iter().filter(|c| !c.in_1024_frame()) {
        let logits_file = case
            .logits
            .as_ref()
            .expect("predictor case has full-res logits");
        let reference = npy(logits_file);
        let (h, w) = (case.orig_size[0], case.orig_size[1]);
        assert_eq!(reference.dims()[1..], [h, w]);
        let reference: Vec<f32> = reference.flatten_all().unwrap().to_vec1().unwrap();
        let pred = sam
            .decode(&golden_embedding(case.frame()), &case.prompt())
            .unwrap();
        let masks = pred.masks().unwrap();
        for (i, mask) in masks.iter().enumerate() {
            assert_eq!((mask.height, mask.width), (h, w));
            let ours = pred.logits(i).unwrap();
            let plane = &reference[i * h * w..(i + 1) * h * w];
            let bad = mask_mismatches(&ours, plane, MASK_BAND);
            // The mask is the thresholded logits, as the reference's `logits > 0`.
            let on: usize = mask.data.iter().map(|&v| v as usize).sum();
            let ref_on = plane.iter().filter(|&&v| v > 0.0).count();
            println!(
                "{} mask {i}: {bad} pixels differ outside the +-{MASK_BAND:e} band; {on} on (reference {ref_on}); logits max diff {:.2e}",
                case.name,
                max_abs_diff(&ours, plane)
            );
            assert_eq!(bad, 0, "{} mask {i}", case.name);
            assert!(on > 0 && on < h * w, "{} mask {i} is trivial", case.name);
        }
        checked += 1;
    }
    assert!(checked >= 2, "expected the predictor cases in cases.json");
}

/// `.pth` (f16) and safetensors (bf16) hold the same values: outputs must be identical.
#[test]
fn pth_and_safetensors_give_identical_outputs() {
    let st = Sam::from_file(fixture("sam_decoder.safetensors")).unwrap();
    for case in &cases().cases {
        let emb = golden_embedding(case.frame());
        let a = sam_pth().decode(&emb, &case.prompt()).unwrap();
        let b = st.decode(&emb, &case.prompt()).unwrap();
        assert_eq!(a.low_res_logits, b.low_res_logits, "{}", case.name);
        assert_eq!(a.iou, b.iou, "{}", case.name);
    }
}

/// TinyViT on the fixture image through the whole `set_image` path (PIL resize, normalize,
/// pad, encoder), then the same click as the reference: masks must agree.
#[test]
fn image_to_embedding_to_mask_matches_pytorch() {
    let all = cases();
    let image = RgbImage::open(fixture(&all.image)).unwrap();
    let sam = sam_pth();
    let emb = sam.embed(&image).unwrap();
    assert_eq!(
        emb.frame,
        ImageFrame::new(image.height, image.width).unwrap()
    );
    let d = max_abs_diff(&emb.to_vec().unwrap(), &npy_vec(&all.embedding));
    println!("TinyViT embedding max abs diff {d:.2e}");
    assert!(
        d <= EMBEDDING_TOLERANCE,
        "embedding diff {d:e} > {EMBEDDING_TOLERANCE:e}"
    );

    for case in all.cases.iter().filter(|c| !c.in_1024_frame()) {
        let reference: Vec<f32> = npy_vec(case.logits.as_ref().unwrap());
        let pred = sam.decode(&emb, &case.prompt()).unwrap();
        let (h, w) = (case.orig_size[0], case.orig_size[1]);
        for i in 0..pred.num_masks() {
            let ours = pred.logits(i).unwrap();
            let bad = mask_mismatches(&ours, &reference[i * h * w..(i + 1) * h * w], MASK_BAND);
            println!(
                "end to end {} mask {i}: {bad} pixels differ outside the band",
                case.name
            );
            assert_eq!(bad, 0, "end to end {} mask {i}", case.name);
        }
    }
}

/// The resize is bit-exact to torchvision's resize of a PIL image (Pillow's bilinear).
#[test]
fn resize_matches_pil_exactly() {
    let all = cases();
    let src = RgbImage::open(fixture(&all.resize.src)).unwrap();
    assert!(all.resize.targets.len() >= 4);
    for target in &all.resize.targets {
        let want = RgbImage::open(fixture(target)).unwrap();
        let got = resize_bilinear_pil(&src, want.width, want.height).unwrap();
        let differing = got
            .data
            .iter()
            .zip(&want.data)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differing, 0, "{target}: {differing} bytes differ");
    }
    // The longest-side target of the source is one of them.
    assert_eq!(
        preprocess_shape(src.height, src.width, IMAGE_SIZE),
        (660, 1024)
    );
}

/// Weights converted to f32 safetensors by our own writer load back identically, and the
/// model built from them embeds the image exactly as the one built from the `.pth`.
#[test]
fn safetensors_round_trip_of_pth_weights() {
    let w = Weights::from_file(fixture("mobile_sam.pth")).unwrap();
    let back = Weights::from_bytes(&w.to_safetensors_bytes().unwrap()).unwrap();
    assert_eq!(w.keys(), back.keys());
    for key in w.keys() {
        let shape = w.shape_of(key).unwrap();
        let a: Vec<f32> = w
            .get(key, &shape)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = back
            .get(key, &shape)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b, "{key}");
    }
    let image = RgbImage::open(fixture(&cases().image)).unwrap();
    let from_st = Sam::new(&back).unwrap().embed(&image).unwrap();
    let from_pth = sam_pth().embed(&image).unwrap();
    assert_eq!(from_st.to_vec().unwrap(), from_pth.to_vec().unwrap());
}
