//! Training: SAM's loss against the reference written from the paper's definitions in PyTorch
//! (tools/golden/make_train.py): each term, the chosen candidate and the gradients; one AdamW
//! step of the trained MobileSAM's prompt encoder and mask decoder against PyTorch's.

mod common;

use candle_core::{Device, Tensor, Var};
use candle_nn::ParamsAdamW;
use common::npy_vec;
use common::real::{manifest, weights_path};
use websam::model::sam::{Point, PointLabel, Prompt};
use websam::model::weights::Weights;
use websam::train::loss::{sam_loss, LossConfig};
use websam::train::{Sample, Trainer};

fn fixture(name: &str) -> std::collections::HashMap<String, Tensor> {
    // The fixtures of this test: tools/golden/make_train.py.
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

/// The batch of tools/golden/make_train.py's step: the reference's embedding of chelsea, the
/// reference's box mask as the target; a click with three candidates, and a box, a negative
/// click and the earlier mask as input with one.
fn step_batch() -> Vec<Sample> {
    let photo = manifest()
        .photos
        .into_iter()
        .find(|p| p.name == "chelsea")
        .expect("chelsea in the real fixtures");
    let embedding = photo.embedding();
    let box_mask: Vec<f32> = npy_vec("real/chelsea_box_low_res_logits.npy")
        .iter()
        .map(|&v| if v > 0.0 { 1.0 } else { 0.0 })
        .collect();
    let target = Tensor::from_vec(box_mask, (256, 256), &Device::Cpu).unwrap();
    let point = |x, y, label| Point { x, y, label };
    vec![
        Sample {
            embedding: embedding.clone(),
            prompt: Prompt {
                points: vec![point(250.0, 170.0, PointLabel::Positive)],
                multimask: true,
                ..Prompt::default()
            },
            target: target.clone(),
        },
        Sample {
            embedding,
            prompt: Prompt {
                points: vec![point(180.0, 120.0, PointLabel::Negative)],
                bbox: Some([130.0, 80.0, 215.0, 150.0]),
                mask_input: Some(npy_vec("real/chelsea_mask_input.npy")),
                multimask: false,
            },
            target,
        },
    ]
}

#[test]
fn one_decoder_step_matches_pytorch_on_the_real_weights() {
    let f = fixture("step.safetensors");
    let weights = Weights::from_file(weights_path()).unwrap();
    let adamw = ParamsAdamW {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut trainer = Trainer::new(&weights, adamw.clone(), LossConfig::default()).unwrap();
    let batch = step_batch();
    let (loss, grads) = trainer.gradients(&batch).unwrap();
    let want = values(&f["loss"])[0];
    let got = loss.value().unwrap();
    println!("loss {got} (reference {want})");
    for l in &loss.samples {
        println!(
            "sample: best {}, focal {:?}, dice {:?}, iou {:?}",
            l.best, l.focal, l.dice, l.iou
        );
    }
    assert!(
        (got - want).abs() <= 1e-5 * want.abs(),
        "loss {got} against {want}"
    );
    let bests: Vec<usize> = loss.samples.iter().map(|l| l.best).collect();
    let want_bests: Vec<usize> = f["best"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|b| b as usize)
        .collect();
    assert_eq!(bests, want_bests);

    // Every parameter's gradient, relative to its largest magnitude.
    let sampled = |key: &str, t: &Tensor| -> Vec<f32> {
        let flat = values(t);
        match f.get(&format!("index.{key}")) {
            Some(index) => index
                .to_vec1::<i64>()
                .unwrap()
                .into_iter()
                .map(|i| flat[i as usize])
                .collect(),
            None => flat,
        }
    };
    let grad_max = |key: &str| match f.get(&format!("grad_max.{key}")) {
        Some(m) => values(m)[0],
        None => values(&f[&format!("grad.{key}")])
            .iter()
            .fold(0f32, |m, v| m.max(v.abs())),
    };
    let largest = trainer
        .params()
        .map(|(k, _)| grad_max(k))
        .fold(0f32, f32::max);
    let mut worst = (String::new(), 0f32);
    let mut count = 0;
    // The keys' biases of the attentions: a bias on every key adds the same q.b to each of a
    // query's logits, which the softmax cancels, so their gradient is 0 and what either side
    // computes is rounding (PyTorch's reaches 2.8e-6 here); where the decoder leaves the bias
    // out, autograd finds no path to it at all.
    let mut cancelled = Vec::new();
    for (key, var) in trainer.params() {
        let reference = values(&f[&format!("grad.{key}")]);
        let scale = grad_max(key);
        if key.ends_with("k_proj.bias") {
            let ours = grads
                .get(var.as_tensor())
                .map_or(0.0, |g| values(g).iter().fold(0f32, |m, v| m.max(v.abs())));
            assert!(
                scale < 1e-5 * largest && ours < 1e-5 * largest,
                "{key}: a gradient of {ours} (reference {scale}) where the softmax cancels it (the largest: {largest})"
            );
            cancelled.push(key.to_string());
            continue;
        }
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {key}"));
        let err = max_rel(&sampled(key, g), &reference, scale.max(1e-30));
        if err > worst.1 {
            worst = (key.to_string(), err);
        }
        assert!(
            err < 1e-4,
            "gradient of {key} off by {err} of its largest value"
        );
        count += 1;
    }
    assert_eq!(cancelled.len(), 7, "{cancelled:?}");
    assert_eq!(
        count + cancelled.len(),
        136,
        "the prompt encoder's and decoder's parameters"
    );
    println!("{count} gradients; worst {} at {:.2e}", worst.0, worst.1);

    // One AdamW step: the parameters after it. The keys' biases move by at most the step size
    // (AdamW's first step moves each value by lr times the sign of its gradient, here the sign
    // of rounding, or not at all without a gradient).
    let before: Vec<Vec<f32>> = trainer
        .params()
        .map(|(_, v)| values(v.as_tensor()))
        .collect();
    trainer.step(&batch).unwrap();
    let (mut worst, mut checked, mut amplified) = ((String::new(), 0f32), 0, 0);
    for ((key, var), before) in trainer.params().zip(before) {
        if cancelled.iter().any(|k| k == key) {
            let moved = values(var.as_tensor())
                .iter()
                .zip(&before)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(moved <= 1.01e-4, "{key} moved by {moved}");
            continue;
        }
        let got = sampled(key, var.as_tensor());
        let reference = values(&f[&format!("after.{key}")]);
        let g_ref = values(&f[&format!("grad.{key}")]);
        let g_ours = sampled(key, grads.get(var.as_tensor()).unwrap());
        // Within 1e-6, beyond what the two gradients' difference moves the first step
        // `lr g / (|g| + eps)` by (which amplifies the rounding of gradients near eps: 1.5e-6
        // at one value, a gradient of -4.6e-7 against -2.7e-7).
        let first_step = |g: f32| adamw.lr as f32 * g / (g.abs() + adamw.eps as f32);
        for i in 0..got.len() {
            let allowed = (first_step(g_ours[i]) - first_step(g_ref[i])).abs();
            let d = (got[i] - reference[i]).abs();
            assert!(
                d <= 1e-6 + allowed,
                "{key}: value {i} after the step {} against {} (gradients {:e}, {:e})",
                got[i],
                reference[i],
                g_ours[i],
                g_ref[i]
            );
            if d > 1e-6 {
                amplified += 1;
            }
            if d > worst.1 {
                worst = (key.to_string(), d);
            }
            checked += 1;
        }
    }
    println!(
        "{checked} values after the step: worst {} at {:.2e}; {amplified} beyond 1e-6 by their gradients' rounding",
        worst.0, worst.1
    );
}

mod interactive {
    use super::*;
    use websam::image::{postprocess_logits, threshold, ImageFrame};
    use websam::train::interactive::{
        error_point, first_prompt, rng, schedule, target_from_mask, Truth, POINTS,
    };
    use websam::train::{Object, TARGET_SIDE};

    /// A rectangle of a 300x451 image (chelsea's size) as a mask.
    fn rectangle(frame: &ImageFrame, [x0, y0, x1, y1]: [usize; 4]) -> Vec<u8> {
        let (h, w) = frame.original;
        (0..h * w)
            .map(|i| {
                let (y, x) = (i / w, i % w);
                u8::from((x0..x1).contains(&x) && (y0..y1).contains(&y))
            })
            .collect()
    }

    #[test]
    fn a_mask_goes_to_the_low_res_frame_as_the_image_does() {
        let frame = ImageFrame::new(300, 451).unwrap();
        // 1024 / 451 per pixel: columns 100..200 -> 227..454 of 1024 -> 56.8..113.5 at 256, a
        // low-res pixel set where at least half of it is inside.
        let target = target_from_mask(&rectangle(&frame, [100, 50, 200, 150]), &frame).unwrap();
        let at = |i: usize, j: usize| target[i * TARGET_SIDE + j];
        assert_eq!(at(60, 80), 1.0);
        assert_eq!(
            (at(60, 56), at(60, 57), at(60, 113), at(60, 114)),
            (0.0, 1.0, 1.0, 0.0)
        );
        // Rows 50..150 -> 113.5..340.5 of 681 -> 28.4..85.1 at 256: row 28 is 62% inside.
        assert_eq!(
            (at(27, 80), at(28, 80), at(84, 80), at(85, 80)),
            (0.0, 1.0, 1.0, 0.0)
        );
        // The whole image: the resized image's 681 rows -> 170.25 low-res rows (row 170 is a
        // quarter inside), then padding.
        let all = target_from_mask(&vec![1; 300 * 451], &frame).unwrap();
        let rows = |r: usize| {
            all[r * TARGET_SIDE..(r + 1) * TARGET_SIDE]
                .iter()
                .sum::<f32>()
        };
        assert_eq!((rows(0), rows(169), rows(170)), (256.0, 256.0, 0.0));
        assert!(target_from_mask(&[1, 0], &frame).is_err());
        assert!(Truth::new(vec![0; 300 * 451], frame).is_err());
    }

    #[test]
    fn prompts_follow_the_paper_and_the_seed() {
        let frame = ImageFrame::new(300, 451).unwrap();
        let truth = Truth::new(rectangle(&frame, [100, 50, 200, 150]), frame).unwrap();
        let (mut points, mut boxes) = (0, 0);
        for index in 0..200 {
            let mut r = rng(7, index);
            let prompt = first_prompt(&mut r, &truth);
            assert!(prompt.multimask && prompt.mask_input.is_none());
            match (prompt.points.as_slice(), prompt.bbox) {
                ([p], None) => {
                    assert!((100.0..200.0).contains(&p.x) && (50.0..150.0).contains(&p.y));
                    assert_eq!(p.label, PointLabel::Positive);
                    points += 1;
                }
                ([], Some([x0, y0, x1, y1])) => {
                    // The box 100..199 x 50..149 with noise of sd 9.9 px: within 6 sd.
                    for (v, want) in [(x0, 100.0), (y0, 50.0), (x1, 199.0), (y1, 149.0)] {
                        assert!((v - want).abs() < 60.0, "{v} for {want}");
                    }
                    boxes += 1;
                }
                other => panic!("a first prompt of {other:?}"),
            }
            let plan = schedule(&mut r);
            assert_eq!(plan.len(), POINTS + 2);
            assert_eq!(plan.iter().filter(|&&p| p).count(), POINTS);
            assert!(!plan[POINTS + 1]);
            // The same seed and index, the same sequence.
            let mut again = rng(7, index);
            assert_eq!(
                format!("{:?}", first_prompt(&mut again, &truth)),
                format!("{prompt:?}")
            );
            assert_eq!(schedule(&mut again), plan);
        }
        assert!(points > 70 && boxes > 70, "{points} points, {boxes} boxes");

        // The error region: a prediction missing the rectangle's right half and marking a
        // square outside it.
        let mut pred: Vec<f32> = truth.low_res().iter().map(|&t| t * 2.0 - 1.0).collect();
        for i in 0..TARGET_SIDE {
            for j in 0..TARGET_SIDE {
                if j >= 86 {
                    pred[i * TARGET_SIDE + j] = -1.0;
                }
                if (120..130).contains(&i) && (20..30).contains(&j) {
                    pred[i * TARGET_SIDE + j] = 1.0;
                }
            }
        }
        let (mut pos, mut neg) = (0, 0);
        let mut r = rng(3, 0);
        for _ in 0..300 {
            let p = error_point(&mut r, &pred, &truth).expect("an error region");
            match p.label {
                PointLabel::Positive => {
                    assert!(
                        (150.0..200.0).contains(&p.x) && (50.0..150.0).contains(&p.y),
                        "{p:?}"
                    );
                    pos += 1;
                }
                PointLabel::Negative => {
                    // Low-res 120..130 x 20..30 -> 1024 frame 480..520 x 80..120 -> pixels.
                    assert!(
                        (35.0..53.0).contains(&p.x) && (211.0..229.0).contains(&p.y),
                        "{p:?}"
                    );
                    neg += 1;
                }
                PointLabel::NotAPoint => panic!("{p:?}"),
            }
        }
        // Uniform over the region: 1,624 missed pixels against 100 wrong ones.
        assert!(pos > 250 && neg > 5, "{pos} positive, {neg} negative");
        let perfect: Vec<f32> = truth.low_res().iter().map(|&t| t * 2.0 - 1.0).collect();
        assert!(error_point(&mut r, &perfect, &truth).is_none());
    }

    #[test]
    fn objective_is_the_training_loss_of_seeded_first_prompts() {
        use websam::train::{objective, OBJECTIVE_PROMPTS, OBJECTIVE_STREAM};
        let photo = manifest()
            .photos
            .into_iter()
            .find(|p| p.name == "chelsea")
            .unwrap();
        let embedding = photo.embedding();
        let low_res = npy_vec("real/chelsea_box_low_res_logits.npy");
        let mask = threshold(&postprocess_logits(&low_res, &embedding.frame).unwrap());
        let object = Object {
            truth: Truth::new(mask, embedding.frame).unwrap(),
            embedding,
        };
        let weights = Weights::from_file(weights_path()).unwrap();
        let value = objective(&weights, std::slice::from_ref(&object), 3).unwrap();
        // The same prompts through the trainer's autograd path.
        let target = Tensor::from_slice(
            object.truth.low_res(),
            (TARGET_SIDE, TARGET_SIDE),
            &Device::Cpu,
        )
        .unwrap();
        let samples: Vec<Sample> = (0..OBJECTIVE_PROMPTS as u64)
            .map(|k| Sample {
                embedding: object.embedding.clone(),
                prompt: first_prompt(&mut rng(3, OBJECTIVE_STREAM + k), &object.truth),
                target: target.clone(),
            })
            .collect();
        let trainer =
            Trainer::new(&weights, ParamsAdamW::default(), LossConfig::default()).unwrap();
        let tracked = trainer.loss(&samples).unwrap().value().unwrap();
        println!("objective {value}, through autograd {tracked}");
        assert!(
            (value - tracked).abs() <= 1e-5 * tracked.abs(),
            "{value} vs {tracked}"
        );
        assert_eq!(
            objective(&weights, std::slice::from_ref(&object), 3).unwrap(),
            value
        );
        assert_ne!(
            objective(&weights, &[object], 4).unwrap(),
            value,
            "the seed draws other prompts"
        );
        assert!(objective(&weights, &[], 3).is_err());
    }

    #[test]
    fn interactive_training_lowers_the_loss_on_a_real_object() {
        let photo = manifest()
            .photos
            .into_iter()
            .find(|p| p.name == "chelsea")
            .unwrap();
        let embedding = photo.embedding();
        // The object: the reference's box mask at the photograph's size.
        let low_res = npy_vec("real/chelsea_box_low_res_logits.npy");
        let mask = threshold(&postprocess_logits(&low_res, &embedding.frame).unwrap());
        let object = Object {
            truth: Truth::new(mask, embedding.frame).unwrap(),
            embedding,
        };
        let adamw = ParamsAdamW {
            lr: 1e-4,
            weight_decay: 0.1,
            ..ParamsAdamW::default()
        };
        let weights = Weights::from_file(weights_path()).unwrap();
        let mut trainer = Trainer::new(&weights, adamw, LossConfig::default()).unwrap();
        let objects = [object];
        let before = trainer.interactive_loss(&objects, 5, 0).unwrap();
        assert_eq!(before.losses[0].len(), 11);
        assert_eq!(before.ious[0].len(), 11);
        // The same seed, the same sequence and loss.
        let again = trainer.interactive_loss(&objects, 5, 0).unwrap();
        assert_eq!(before.losses, again.losses);
        let mut losses = vec![before.value().unwrap()];
        for _ in 0..2 {
            losses.push(
                trainer
                    .step_interactive(&objects, 5, 0)
                    .unwrap()
                    .value()
                    .unwrap(),
            );
        }
        let after = trainer.interactive_loss(&objects, 5, 0).unwrap();
        losses.push(after.value().unwrap());
        println!(
            "loss over the steps: {losses:?}; IoU per iteration before {:?}, after {:?}",
            before.ious[0], after.ious[0]
        );
        assert!(
            losses[3] < 0.9 * losses[0],
            "the loss did not fall: {losses:?}"
        );
    }
}

mod protocol {
    use websam::model::sam::PointLabel;
    use websam::train::eval::{next_click, ClickScore};
    use websam::train::Schedule;

    #[test]
    fn the_schedule_warms_up_then_divides_by_ten_twice() {
        let s = Schedule::new(1e-4, 900);
        assert_eq!(s.warmup, 90);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b;
        assert!(close(s.lr_at(0), 1e-4 / 90.0));
        assert!(close(s.lr_at(89), 1e-4));
        assert!(close(s.lr_at(599), 1e-4));
        assert!(close(s.lr_at(600), 1e-5));
        assert!(close(s.lr_at(865), 1e-5));
        assert!(close(s.lr_at(866), 1e-6));
        assert_eq!(Schedule::new(1e-4, 90_000).warmup, 250);
    }

    #[test]
    fn clicks_go_to_the_middle_of_the_largest_error() {
        let (h, w) = (40, 60);
        let square = |x0: usize, y0: usize, side: usize| -> Vec<bool> {
            (0..h * w)
                .map(|i| {
                    let (y, x) = (i / w, i % w);
                    (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y)
                })
                .collect()
        };
        let truth = square(10, 10, 11);
        let nothing = vec![false; h * w];
        let p = next_click(&nothing, &truth, h, w).unwrap();
        assert_eq!((p.x, p.y, p.label), (15.0, 15.0, PointLabel::Positive));
        // The truth found, and a wrong 15x15 square beside it: a negative click in its middle.
        let wrong: Vec<bool> = truth
            .iter()
            .zip(square(35, 5, 15))
            .map(|(&a, b)| a || b)
            .collect();
        let p = next_click(&wrong, &truth, h, w).unwrap();
        assert_eq!((p.x, p.y, p.label), (42.0, 12.0, PointLabel::Negative));
        assert!(next_click(&truth, &truth, h, w).is_none());
    }

    #[test]
    fn click_scores_average_and_count_clicks() {
        let s = ClickScore::from_ious(&[
            vec![0.5, 0.86, 0.91],
            vec![0.9, 0.95, 0.97],
            vec![0.1, 0.2, 0.3],
        ]);
        let near = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert_eq!(s.objects, 3);
        assert!(near(s.after(1).unwrap(), 0.5) && near(s.after(3).unwrap(), 2.18 / 3.0));
        assert_eq!(s.after(4), None);
        // Clicks to 0.85: 2, 1 and never (3); to 0.90: 3, 1, 3.
        assert!(near(s.clicks_to_85, 2.0) && near(s.clicks_to_90, 7.0 / 3.0));
    }
}

mod coco {
    use websam::train::coco::{polygons_to_mask, Coco};

    #[test]
    fn annotations_read_as_masks_from_rle_and_polygons() {
        let coco = Coco::from_json(
            br#"{"images": [{"id": 1, "file_name": "a.png", "height": 3, "width": 4}],
                 "annotations": [
                   {"id": 1, "image_id": 1, "segmentation": {"size": [3, 4], "counts": [4, 2, 6]}},
                   {"id": 2, "image_id": 1, "segmentation": {"size": [3, 4], "counts": "426"}},
                   {"id": 3, "image_id": 1, "iscrowd": 1, "segmentation": [[0, 0, 3, 0, 3, 2]]},
                   {"id": 4, "image_id": 1, "segmentation": [[0, 0, 3, 0, 3, 2, 0, 2, 0, 0]]}
                 ]}"#,
        )
        .unwrap();
        let objects = coco.objects().unwrap();
        // The crowd region is not an object.
        assert_eq!(
            objects.iter().map(|(_, a)| a.id).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        // Column-major runs: 4 zeros (column 0, then row 0 of column 1), 2 ones.
        let runs = objects[0].1.segmentation.to_mask(3, 4).unwrap();
        assert_eq!(runs, [0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0]);
        // pycocotools' string for the same runs.
        assert_eq!(objects[1].1.segmentation.to_mask(3, 4).unwrap(), runs);
        // A polygon closed on its first point, filled with its outline.
        assert_eq!(objects[2].1.segmentation.to_mask(3, 4).unwrap(), [1; 12]);
        assert_eq!(
            polygons_to_mask(&[vec![1.0, 0.0, 2.0, 0.0, 2.0, 1.0, 1.0, 1.0]], 3, 4).unwrap(),
            [0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0]
        );
        assert!(polygons_to_mask(&[vec![1.0, f64::NAN]], 3, 4).is_err());
    }
}

#[test]
fn a_tuned_decoder_swaps_into_the_predictor_and_reverts_bit_for_bit() {
    use websam::predictor::{BackendChoice, Predictor};
    let weights = Weights::from_file(weights_path()).unwrap();
    let (mut predictor, _) =
        pollster::block_on(Predictor::new(weights.clone(), BackendChoice::Cpu)).unwrap();
    let batch = step_batch();
    pollster::block_on(predictor.set_embedding(batch[0].embedding.clone())).unwrap();
    let prompt = batch[0].prompt.clone();
    let original = pollster::block_on(predictor.predict_low_res(&prompt)).unwrap();
    let adamw = ParamsAdamW {
        lr: 1e-3,
        ..ParamsAdamW::default()
    };
    let mut trainer = Trainer::new(&weights, adamw, LossConfig::default()).unwrap();
    trainer.step(&batch).unwrap();
    pollster::block_on(predictor.set_tensors(trainer.weights().unwrap())).unwrap();
    let tuned = pollster::block_on(predictor.predict_low_res(&prompt)).unwrap();
    assert_ne!(tuned.low_res_logits, original.low_res_logits);
    // The tuned model is the trainer's: the same decode as a model built from its weights.
    let direct = websam::model::sam::Sam::new(&trainer.checkpoint(&weights).unwrap())
        .unwrap()
        .decode(&batch[0].embedding, &prompt)
        .unwrap();
    assert_eq!(tuned.low_res_logits, direct.low_res_logits);
    pollster::block_on(predictor.revert_tensors()).unwrap();
    let reverted = pollster::block_on(predictor.predict_low_res(&prompt)).unwrap();
    assert_eq!(reverted.low_res_logits, original.low_res_logits);
    assert_eq!(reverted.iou, original.iou);
    // A key the checkpoint does not have is refused, the model left as it was.
    let stray = Weights::from_tensors([(
        "mask_decoder.no_such.weight".to_string(),
        Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
    )])
    .unwrap();
    let err = pollster::block_on(predictor.set_tensors(stray)).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a tensor of the loaded checkpoint"),
        "{err}"
    );
    let after = pollster::block_on(predictor.predict_low_res(&prompt)).unwrap();
    assert_eq!(after.low_res_logits, original.low_res_logits);
}
