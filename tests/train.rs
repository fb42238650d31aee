//! Training: SAM's loss against the reference written from the paper's definitions in PyTorch
//! (tools/golden/make_train.py): each term, the chosen candidate and the gradients.

use candle_core::{Device, Tensor, Var};
use websam::train::loss::{sam_loss, LossConfig};

fn fixture(name: &str) -> std::collections::HashMap<String, Tensor> {
    let path = format!("{}/tests/fixtures/train/{name}", env!("CARGO_MANIFEST_DIR"));
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Largest `|a - b| / max(|b|, floor)` over the elements.
fn max_rel(a: &[f32], b: &[f32], floor: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(floor))
        .fold(0.0, f32::max)
}

#[test]
fn sam_loss_and_its_gradients_match_the_reference() {
    let f = fixture("loss.safetensors");
    for case in ["three", "one", "empty"] {
        let get = |k: &str| f[&format!("{case}.{k}")].clone();
        let logits = Var::from_tensor(&get("logits")).unwrap();
        let iou_pred = Var::from_tensor(&get("iou_pred")).unwrap();
        let loss = sam_loss(
            logits.as_tensor(),
            iou_pred.as_tensor(),
            &get("target"),
            &LossConfig::default(),
        )
        .unwrap();
        let best = get("best").to_vec1::<i64>().unwrap()[0] as usize;
        assert_eq!(loss.best, best, "{case}: the chosen candidate");
        for (what, ours, reference) in [
            ("focal", &loss.focal, get("focal")),
            ("dice", &loss.dice, get("dice")),
            ("iou", &loss.iou, get("iou")),
            ("iou_error", &loss.iou_error, get("iou_error")),
        ] {
            let err = max_rel(ours, &values(&reference), 1e-6);
            assert!(err < 1e-5, "{case}: {what} off by {err} (relative)");
        }
        let total = loss.total.to_scalar::<f32>().unwrap();
        let want = values(&get("total"))[0];
        assert!(
            (total - want).abs() <= 1e-5 * want.abs(),
            "{case}: total {total} against {want}"
        );
        let grads = loss.total.backward().unwrap();
        for (what, var, reference) in [
            ("logits", &logits, get("grad_logits")),
            ("iou_pred", &iou_pred, get("grad_iou_pred")),
        ] {
            let g = grads.get(var.as_tensor()).expect("a gradient");
            let reference = values(&reference);
            // Relative to the gradient's largest element: single pixels' gradients are tiny.
            let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = max_rel(&values(g), &reference, scale);
            assert!(
                err < 1e-5,
                "{case}: d total / d {what} off by {err} of its largest value"
            );
        }
        // Only the chosen candidate gets a gradient.
        let g = values(grads.get(iou_pred.as_tensor()).unwrap());
        for (i, v) in g.iter().enumerate() {
            assert_eq!(*v == 0.0, i != best, "{case}: IoU gradient {g:?}");
        }
    }
}

#[test]
fn sam_loss_refuses_mismatched_shapes() {
    let logits = Tensor::zeros((3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let iou = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    let small = Tensor::zeros((4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = sam_loss(&logits, &iou, &small, &LossConfig::default()).unwrap_err();
    assert!(err.to_string().contains("[M, H, W]"), "{err}");
    let iou2 = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
    let target = Tensor::zeros((8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(sam_loss(&logits, &iou2, &target, &LossConfig::default()).is_err());
}
