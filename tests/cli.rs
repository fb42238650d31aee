//! The `websam` command line as a contract: its `.npy` outputs match the reference, and every
//! bad input gives a one-line error and a non-zero exit.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use common::{cases, fixture, mask_mismatches, max_abs_diff, npy, npy_vec, Case};
use websam::model::weights::Weights;

fn websam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_websam"))
        .args(args)
        .output()
        .expect("run websam")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs websam expecting failure; returns the error line.
fn expect_error(args: &[&str]) -> String {
    let out = websam(args);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "expected failure for {args:?}, stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    lines[0].to_owned()
}

fn case(name: &str) -> Case {
    cases()
        .cases
        .into_iter()
        .find(|c| c.name == name)
        .expect("case")
}

fn points_arg(c: &Case) -> String {
    let (p, l) = (
        c.input.points.as_ref().unwrap(),
        c.input.labels.as_ref().unwrap(),
    );
    p.iter()
        .zip(l)
        .map(|([x, y], l)| format!("{x},{y},{l}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn decode_writes_the_reference_low_res_logits_and_iou() {
    let dir = tempfile::tempdir().unwrap();
    let c = case("point_multimask");
    let out = websam(&[
        "decode",
        "--weights",
        path(&fixture("sam_decoder.safetensors")),
        "--embedding",
        path(&fixture("embedding.npy")),
        "--points",
        &points_arg(&c),
        "--multimask",
        "--out-dir",
        path(dir.path()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let logits = Tensor::read_npy(dir.path().join("low_res_logits.npy")).unwrap();
    assert_eq!(logits.dims(), [3, 256, 256]);
    let d = max_abs_diff(
        &logits.flatten_all().unwrap().to_vec1().unwrap(),
        &npy_vec(&c.low_res_logits),
    );
    assert!(d <= 1e-4, "low-res logits differ by {d}");
    let iou = Tensor::read_npy(dir.path().join("iou.npy")).unwrap();
    assert!(max_abs_diff(&iou.to_vec1().unwrap(), &npy_vec(&c.iou)) <= 1e-4);
    // Without --orig-size there is no image frame, hence no masks.
    assert!(!dir.path().join("masks.npy").exists());
}

#[test]
fn decode_with_orig_size_writes_masks_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let c = case("predictor_box");
    let b = c.input.bbox.unwrap();
    let out = websam(&[
        "decode",
        "--weights",
        path(&fixture("mobile_sam.pth")),
        "--embedding",
        path(&fixture("embedding.npy")),
        "--box",
        &format!("{},{},{},{}", b[0], b[1], b[2], b[3]),
        "--orig-size",
        "480,640",
        "--out-dir",
        path(dir.path()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let masks = Tensor::read_npy(dir.path().join("masks.npy")).unwrap();
    assert_eq!(masks.dims(), [1, 480, 640]);
    assert_eq!(masks.dtype(), candle_core::DType::U8);
    let masks: Vec<u8> = masks.flatten_all().unwrap().to_vec1().unwrap();
    let ours: Vec<f32> = masks
        .iter()
        .map(|&m| if m == 1 { 1.0 } else { -1.0 })
        .collect();
    let reference = npy_vec(c.logits.as_ref().unwrap());
    assert_eq!(mask_mismatches(&ours, &reference, 1e-3), 0);
    let png = image::open(dir.path().join("mask.png")).unwrap().to_luma8();
    assert_eq!(png.dimensions(), (640, 480));
    let png_on = png.pixels().filter(|p| p.0[0] == 255).count();
    assert_eq!(png_on, masks.iter().filter(|&&m| m == 1).count());
}

#[test]
fn decode_with_mask_input_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    let c = case("point_mask_input");
    let out = websam(&[
        "decode",
        "--weights",
        path(&fixture("sam_decoder.safetensors")),
        "--embedding",
        path(&fixture("embedding.npy")),
        "--points",
        &points_arg(&c),
        "--mask-input",
        path(&fixture(c.input.mask_input.as_ref().unwrap())),
        "--out-dir",
        path(dir.path()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let logits = Tensor::read_npy(dir.path().join("low_res_logits.npy")).unwrap();
    let d = max_abs_diff(
        &logits.flatten_all().unwrap().to_vec1().unwrap(),
        &npy_vec(&c.low_res_logits),
    );
    assert!(d <= 1e-4, "{d}");
}

#[test]
fn embed_writes_the_reference_embedding_and_segment_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let all = cases();
    let e = dir.path().join("e.npy");
    let out = websam(&[
        "embed",
        "--weights",
        path(&fixture("mobile_sam.pth")),
        "--image",
        path(&fixture(&all.image)),
        "--out",
        path(&e),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ours = Tensor::read_npy(&e).unwrap();
    assert_eq!(ours.dims(), [1, 256, 64, 64]);
    let d = max_abs_diff(
        &ours.flatten_all().unwrap().to_vec1().unwrap(),
        &npy_vec(&all.embedding),
    );
    assert!(d <= 1e-3, "embedding differs by {d}");

    let png = dir.path().join("mask.png");
    let out = websam(&[
        "segment",
        "--weights",
        path(&fixture("mobile_sam.pth")),
        "--image",
        path(&fixture(&all.image)),
        "--points",
        "160,150,1",
        "--out",
        path(&png),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mask = image::open(&png).unwrap().to_luma8();
    assert_eq!(mask.dimensions(), (640, 480));
    let on = mask.pixels().filter(|p| p.0[0] == 255).count();
    assert!(on > 0 && on < 640 * 480, "{on} pixels on");
}

/// Writes `w` as safetensors into `dir` and returns its path.
fn write_weights(w: &Weights, dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, w.to_safetensors_bytes().unwrap()).unwrap();
    path(&p).to_owned()
}

fn decode_args(weights: &str) -> Vec<String> {
    [
        "decode",
        "--weights",
        weights,
        "--embedding",
        path(&fixture("embedding.npy")),
        "--points",
        "100,100,1",
        "--out-dir",
        path(&std::env::temp_dir().join("websam-cli-unused")),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn expect_decode_error(weights: &str) -> String {
    let args = decode_args(weights);
    expect_error(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn missing_key_is_named_with_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Weights::from_file(fixture("sam_decoder.safetensors")).unwrap();
    assert!(w.remove("mask_decoder.iou_token.weight"));
    let err = expect_decode_error(&write_weights(&w, dir.path(), "missing.safetensors"));
    assert!(
        err.contains("`mask_decoder.iou_token.weight` is missing") && err.contains("[1, 256]"),
        "{err}"
    );
}

#[test]
fn wrong_shape_names_the_key_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Weights::from_file(fixture("sam_decoder.safetensors")).unwrap();
    let wrong = Tensor::zeros((2, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
    w.insert("mask_decoder.iou_token.weight", wrong).unwrap();
    let err = expect_decode_error(&write_weights(&w, dir.path(), "shape.safetensors"));
    assert!(
        err.contains("mask_decoder.iou_token.weight")
            && err.contains("[2, 256]")
            && err.contains("[1, 256]"),
        "{err}"
    );
}

#[test]
fn truncated_checkpoints_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["mobile_sam.pth", "sam_decoder.safetensors"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for keep in [bytes.len() / 2, bytes.len() - 1, 100] {
            let p = dir.path().join(format!("cut_{keep}_{name}"));
            std::fs::write(&p, &bytes[..keep]).unwrap();
            let err = expect_decode_error(path(&p));
            assert!(
                err.contains("unreadable weights"),
                "{name} cut at {keep}: {err}"
            );
        }
    }
}

#[test]
fn non_checkpoint_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "these are not weights, just a text file\n").unwrap();
    let err = expect_decode_error(path(&text));
    assert!(err.contains("not a PyTorch checkpoint"), "{err}");
    let err = expect_decode_error(path(&fixture("image.png")));
    assert!(err.contains("not a PyTorch checkpoint"), "{err}");
    let err = expect_decode_error(path(&dir.path().join("absent.pth")));
    assert!(err.contains("absent.pth"), "{err}");
    // A zip that is not a PyTorch checkpoint.
    let zip_path = dir.path().join("other.pt");
    {
        let f = std::fs::File::create(&zip_path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        z.start_file("readme.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut z, b"hello").unwrap();
        z.finish().unwrap();
    }
    let err = expect_decode_error(path(&zip_path));
    assert!(err.contains("no data.pkl"), "{err}");
}

#[test]
fn bad_prompts_and_embeddings_are_errors() {
    let weights = fixture("sam_decoder.safetensors");
    let emb = fixture("embedding.npy");
    let run = |extra: &[&str], embedding: &Path| {
        let mut args = vec![
            "decode",
            "--weights",
            path(&weights),
            "--embedding",
            path(embedding),
            "--orig-size",
            "480,640",
            "--out-dir",
            "/nonexistent-websam-dir",
        ];
        args.extend_from_slice(extra);
        expect_error(&args)
    };
    let err = run(&["--points", "700,10,1"], &emb);
    assert!(err.contains("outside the 640x480 image"), "{err}");
    let err = run(&["--box", "100,100,50,200"], &emb);
    assert!(err.contains("empty"), "{err}");
    let err = run(&["--points", "10,10,2"], &emb);
    assert!(err.contains("label"), "{err}");
    let wrong = fixture(&case("point_mask_input").low_res_logits);
    let err = run(&["--points", "10,10,1"], &wrong);
    assert!(err.contains("[1, 256, 64, 64]"), "{err}");
    let err = run(&["--points", "10,10,1", "--mask-input", path(&emb)], &emb);
    assert!(err.contains("mask input has shape"), "{err}");
}

#[test]
fn embed_needs_an_image_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let err = expect_error(&[
        "embed",
        "--weights",
        path(&fixture("sam_decoder.safetensors")),
        "--image",
        path(&fixture("image.png")),
        "--out",
        path(&dir.path().join("e.npy")),
    ]);
    assert!(err.contains("no image encoder"), "{err}");
    let err = expect_error(&[
        "embed",
        "--weights",
        path(&fixture("mobile_sam.pth")),
        "--image",
        path(&fixture("cases.json")),
        "--out",
        path(&dir.path().join("e.npy")),
    ]);
    assert!(err.contains("cases.json"), "{err}");
}

#[test]
fn reference_mask_has_both_signs() {
    // Guards the fixtures themselves: a golden mask that is all on or all off would make the
    // mask checks above vacuous.
    let c = case("predictor_box");
    let r = npy(c.logits.as_ref().unwrap());
    let v: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
    let on = v.iter().filter(|&&x| x > 0.0).count();
    assert!(on > v.len() / 20 && on < v.len() * 19 / 20);
}

/// `--backend gpu` (lavapipe without a GPU) writes the same contract; `auto` says what it used:
/// the GPU on a hardware adapter, the CPU (with the reason) when the adapter is software.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn decode_on_the_gpu_backend_matches_reference() {
    let mut software = None;
    for backend in ["gpu", "auto"] {
        let dir = tempfile::tempdir().unwrap();
        let c = case("predictor_box");
        let b = c.input.bbox.unwrap();
        let out = websam(&[
            "decode",
            "--backend",
            backend,
            "--weights",
            path(&fixture("sam_decoder.safetensors")),
            "--embedding",
            path(&fixture("embedding.npy")),
            "--box",
            &format!("{},{},{},{}", b[0], b[1], b[2], b[3]),
            "--orig-size",
            "480,640",
            "--out-dir",
            path(dir.path()),
        ]);
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        match software {
            None => {
                assert!(
                    err.contains("backend: gpu"),
                    "{backend}: GPU tests need an adapter: {err}"
                );
                software = Some(err.contains(", Cpu)"));
            }
            Some(true) => assert!(
                err.contains("software rasterizer") && err.contains("backend: cpu"),
                "auto on a software adapter uses the CPU: {err}"
            ),
            Some(false) => assert!(err.contains("backend: gpu"), "auto: {err}"),
        }
        let logits = Tensor::read_npy(dir.path().join("low_res_logits.npy")).unwrap();
        let d = max_abs_diff(
            &logits.flatten_all().unwrap().to_vec1().unwrap(),
            &npy_vec(&c.low_res_logits),
        );
        assert!(d <= 1e-3, "{backend}: {d}");
        let masks = Tensor::read_npy(dir.path().join("masks.npy")).unwrap();
        let masks: Vec<u8> = masks.flatten_all().unwrap().to_vec1().unwrap();
        let ours: Vec<f32> = masks
            .iter()
            .map(|&m| if m == 1 { 1.0 } else { -1.0 })
            .collect();
        let reference = npy_vec(c.logits.as_ref().unwrap());
        assert_eq!(mask_mismatches(&ours, &reference, 1e-3), 0, "{backend}");
    }
}

/// The generator's options of an `amg` golden as command-line flags (its Python names).
fn generator_flags(golden: &serde_json::Value) -> Vec<String> {
    let mut flags = Vec::new();
    for (k, v) in golden["options"].as_object().unwrap() {
        if v.is_null() || k == "output_mode" || k == "point_grids" {
            continue;
        }
        flags.push(format!("--{}", k.replace('_', "-")));
        flags.push(v.to_string());
    }
    flags
}

fn amg_golden(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(&format!("amg/{case}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// What the records of two runs must share exactly on the same backend and inputs: everything.
fn records(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn everything_writes_the_reference_generators_records() {
    // The fixture weights with the thresholds lowered (tests/everything.rs compares every value
    // with the reference's on each backend; here: the file's form and its records).
    let golden = amg_golden("fixture_min_region");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let weights = fixture("mobile_sam.pth");
    let image = fixture("image.png");
    let mut args = vec![
        "everything".to_owned(),
        "--weights".into(),
        path(&weights).into(),
        "--image".into(),
        path(&image).into(),
        "--out".into(),
        path(&out).into(),
    ];
    args.extend(generator_flags(&golden));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = websam(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    let ours = records(&out);
    let want = golden["records"].as_array().unwrap();
    let ours = ours.as_array().unwrap();
    assert_eq!(ours.len(), want.len());
    for (a, b) in ours.iter().zip(want) {
        let keys: Vec<&String> = a.as_object().unwrap().keys().collect();
        let want_keys: Vec<&String> = b.as_object().unwrap().keys().collect();
        assert_eq!(keys, want_keys, "the reference's keys, in its order");
        for key in ["point_coords", "crop_box"] {
            let numbers = |v: &serde_json::Value| -> Vec<f64> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|x| match x.as_array() {
                        Some(inner) => inner.iter().map(|n| n.as_f64().unwrap()).collect(),
                        None => vec![x.as_f64().unwrap()],
                    })
                    .collect()
            };
            assert_eq!(numbers(&a[key]), numbers(&b[key]), "{key}");
        }
        assert_eq!(a["segmentation"]["size"], b["segmentation"]["size"]);
    }
}

#[test]
fn everything_over_a_folder_in_shards() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    // Three images (the fixture and two crops of it), and a file that is not an image.
    let img = websam::image::RgbImage::open(fixture("image.png")).unwrap();
    for (name, (x0, y0, x1, y1)) in [
        ("a.png", (0, 0, 640, 480)),
        ("b.png", (100, 50, 420, 290)),
        ("c.jpg", (300, 200, 640, 480)),
    ] {
        let c = img.crop(x0, y0, x1, y1).unwrap();
        image::RgbImage::from_raw(c.width as u32, c.height as u32, c.data)
            .unwrap()
            .save(images.join(name))
            .unwrap();
    }
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let weights = fixture("mobile_sam.pth");
    let run = |out: &Path, shard: Option<&str>| {
        let mut args = vec![
            "everything",
            "--weights",
            path(&weights),
            "--images",
            path(&images),
            "--out-dir",
            path(out),
            "--points-per-side",
            "2",
            "--pred-iou-thresh",
            "0",
            "--stability-score-thresh",
            "0",
        ];
        if let Some(s) = shard {
            args.extend(["--shard", s]);
        }
        let r = websam(&args);
        assert!(r.status.success(), "{}", stderr(&r));
    };
    let all = dir.path().join("all");
    run(&all, None);
    let (s0, s1) = (dir.path().join("s0"), dir.path().join("s1"));
    run(&s0, Some("0/2"));
    run(&s1, Some("1/2"));
    // One JSON per image, the same records whether or not the folder was split.
    for (stem, shard) in [("a", &s0), ("b", &s1), ("c", &s0)] {
        let whole = records(&all.join(format!("{stem}.json")));
        assert_eq!(
            whole,
            records(&shard.join(format!("{stem}.json"))),
            "{stem}"
        );
        assert!(!whole.as_array().unwrap().is_empty(), "{stem}: no masks");
    }
    assert!(!s0.join("b.json").exists() && !s1.join("a.json").exists());
    // COCO files: ids from the folder's order, the same in every shard; together the whole.
    let coco = records(&all.join("coco.json"));
    let c0 = records(&s0.join("coco.shard-0-of-2.json"));
    let c1 = records(&s1.join("coco.shard-1-of-2.json"));
    let ids = |c: &serde_json::Value| -> Vec<u64> {
        c["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&coco), [1, 2, 3]);
    assert_eq!(ids(&c0), [1, 3]);
    assert_eq!(ids(&c1), [2]);
    let anns = |c: &serde_json::Value| c["annotations"].as_array().unwrap().len();
    assert_eq!(anns(&coco), anns(&c0) + anns(&c1));
    let first = &coco["annotations"][0];
    for key in [
        "id",
        "image_id",
        "category_id",
        "segmentation",
        "area",
        "bbox",
        "iscrowd",
    ] {
        assert!(!first[key].is_null(), "COCO annotation without {key}");
    }
    assert_eq!(coco["images"][2]["file_name"], "c.jpg");
    // Bad arguments are one-line errors.
    let e = expect_error(&[
        "everything",
        "--weights",
        path(&weights),
        "--images",
        path(&images),
        "--out-dir",
        path(&all),
        "--shard",
        "2/2",
    ]);
    assert!(e.contains("shard"), "{e}");
    let e = expect_error(&[
        "everything",
        "--weights",
        path(&weights),
        "--image",
        path(&fixture("image.png")),
        "--out",
        path(&all.join("x.json")),
        "--points-per-side",
        "0",
    ]);
    assert!(e.contains("pointsPerSide must be at least 1"), "{e}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = expect_error(&[
        "everything",
        "--weights",
        path(&weights),
        "--images",
        path(&empty),
        "--out-dir",
        path(&all),
    ]);
    assert!(e.contains("no PNG or JPEG images"), "{e}");
}

#[test]
fn sha256_is_checked_before_the_checkpoint_is_read() {
    let weights = fixture("sam_decoder.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    // The digest as sha256sum prints it, from Python's hashlib (not our own code).
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
            path(&weights),
        ])
        .output()
        .expect("python3");
    let digest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(digest.len(), 64, "{digest}");
    let dir = tempfile::tempdir().unwrap();
    let ok = |sha: &str| {
        let mut args = decode_args(path(&weights));
        let out_dir = dir.path().to_str().unwrap().to_owned();
        *args.last_mut().unwrap() = out_dir;
        args.extend(["--sha256".to_owned(), sha.to_owned()]);
        websam(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = ok(&digest.to_uppercase());
    assert!(out.status.success(), "{}", stderr(&out));
    // One byte changed: refused, naming both digests.
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let bad = dir.path().join("tampered.safetensors");
    std::fs::write(&bad, &tampered).unwrap();
    let mut args = decode_args(path(&bad));
    args.extend(["--sha256".to_owned(), digest.clone()]);
    let err = expect_error(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains(&format!("expected {digest}")), "{err}");
    assert!(err.contains("sha256 is "), "{err}");
    let mut args = decode_args(path(&weights));
    args.extend(["--sha256".to_owned(), "abc".to_owned()]);
    let err = expect_error(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("64 hex digits"), "{err}");
}

/// The native soak's short version (docs/RELIABILITY.md has the long one's figures): the heap's
/// live bytes flat after warm-up over 150 decodes and 10 embeddings.
#[test]
fn soak_short_heap_in_use_is_flat() {
    let out = websam(&[
        "soak",
        "--weights",
        path(&fixture("sam_decoder.safetensors")),
        "--embedding",
        path(&fixture("embedding.npy")),
        "--decodes",
        "150",
        "--embeddings",
        "10",
        "--every",
        "15",
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 10, "{csv}");
    assert_eq!(rows.last().unwrap()[0], 150.0);
    // Heap in use (MB) after the first embedding's decodes against the end.
    let (warm, last) = (rows[1][2], rows.last().unwrap()[2]);
    assert!(
        last - warm <= 0.064,
        "heap in use grew from {warm} to {last} MB: {csv}"
    );
    assert!(err.contains("heap in use"), "{err}");
}

/// A COCO file of chelsea (www/samples/chelsea.png, 451x300) with two objects: the reference's
/// box mask as a compressed RLE, and a polygon around the cat's head.
fn chelsea_coco(dir: &Path) -> String {
    use websam::amg::rle::Rle;
    use websam::image::{postprocess_logits, threshold, ImageFrame};
    let frame = ImageFrame::new(300, 451).unwrap();
    let low_res = npy_vec("real/chelsea_box_low_res_logits.npy");
    let mask = threshold(&postprocess_logits(&low_res, &frame).unwrap());
    let rle = Rle::from_mask(&mask, 300, 451).unwrap().to_coco_string();
    let coco = serde_json::json!({
        "images": [{"id": 7, "file_name": "chelsea.png", "height": 300, "width": 451}],
        "annotations": [
            {"id": 1, "image_id": 7, "iscrowd": 0,
             "segmentation": {"size": [300, 451], "counts": rle}},
            {"id": 2, "image_id": 7, "iscrowd": 0,
             "segmentation": [[120.0, 60.0, 230.0, 55.0, 250.0, 160.0, 110.0, 170.0]]},
        ],
    });
    let path = dir.join("coco.json");
    std::fs::write(&path, coco.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn train_tunes_the_decoder_on_coco_annotations_and_writes_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let coco = chelsea_coco(dir.path());
    // The reference's embedding of the photograph, as the cache the command reads.
    let embeddings = dir.path().join("embeddings");
    std::fs::create_dir_all(&embeddings).unwrap();
    std::fs::copy(
        fixture("real/chelsea_embedding.npy"),
        embeddings.join("chelsea.npy"),
    )
    .unwrap();
    let weights = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mobile_sam.pt");
    let images = concat!(env!("CARGO_MANIFEST_DIR"), "/www/samples");
    let out = dir.path().join("tuned.safetensors");
    let plot = dir.path().join("curve.png");
    let run = websam(&[
        "train",
        "--weights",
        weights,
        "--coco",
        &coco,
        "--images",
        images,
        "--embeddings",
        path(&embeddings),
        "--val",
        &coco,
        "--steps",
        "2",
        "--batch",
        "1",
        "--eval-every",
        "1",
        "--out",
        path(&out),
        "--plot",
        path(&plot),
    ]);
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    println!("{err}");
    for line in [
        "training on 2 objects (1 images), 2 steps of 1",
        "before training: val IoU after 1 / 3 / 5 clicks",
        "step 1/2: lr",
        "step 2/2: lr",
    ] {
        assert!(err.contains(line), "{line:?} not in {err}");
    }
    assert!(
        !err.contains("embedded"),
        "the cached embedding was not used: {err}"
    );
    let base = Weights::from_file(weights).unwrap();
    let tuned = Weights::from_file(&out).unwrap();
    assert_eq!(tuned.len(), base.len());
    let differs = |key: &str| {
        let shape = base.shape_of(key).unwrap();
        let (a, b) = (
            base.get(key, &shape).unwrap(),
            tuned.get(key, &shape).unwrap(),
        );
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    };
    assert!(differs("mask_decoder.iou_prediction_head.layers.0.weight"));
    assert!(differs("prompt_encoder.point_embeddings.1.weight"));
    assert!(!differs("image_encoder.patch_embed.seq.0.c.weight"));
    // The tuned checkpoint segments as any other.
    let seg = dir.path().join("mask.png");
    let run = websam(&[
        "segment",
        "--weights",
        path(&out),
        "--image",
        concat!(env!("CARGO_MANIFEST_DIR"), "/www/samples/chelsea.png"),
        "--points",
        "250,170,1",
        "--out",
        path(&seg),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let curve = image::open(&plot).unwrap();
    assert_eq!((curve.width(), curve.height()), (640, 360));
}

#[test]
fn train_refuses_bad_annotations_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let weights = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mobile_sam.pt");
    let out = dir.path().join("tuned.safetensors");
    let run = |coco: serde_json::Value| {
        let p = dir.path().join("bad.json");
        std::fs::write(&p, coco.to_string()).unwrap();
        expect_error(&[
            "train",
            "--weights",
            weights,
            "--coco",
            path(&p),
            "--images",
            path(dir.path()),
            "--out",
            path(&out),
        ])
    };
    let image = serde_json::json!([{"id": 1, "file_name": "x.png", "height": 30, "width": 40}]);
    let err = run(serde_json::json!({"images": image, "annotations": [
        {"id": 3, "image_id": 9, "segmentation": [[1.0, 1.0, 9.0, 1.0, 9.0, 9.0]]}]}));
    assert!(err.contains("annotation 3 is of image 9"), "{err}");
    let err = run(serde_json::json!({"images": image, "annotations": [
        {"id": 3, "image_id": 1, "segmentation": {"size": [30, 41], "counts": "abc"}}]}));
    assert!(
        err.contains("an RLE mask of size [30, 41] on a 30x40 image"),
        "{err}"
    );
    let err = run(serde_json::json!({"images": image, "annotations": [
        {"id": 3, "image_id": 1, "segmentation": [[1.0, 1.0, 9.0]]}]}));
    assert!(err.contains("a polygon of 3 numbers"), "{err}");
    let err = run(serde_json::json!({"images": "none"}));
    assert!(err.contains("a COCO annotation file"), "{err}");
    assert!(!out.exists());
}
