//! Native half of the candle-transformers peer: load, encode and decode timings on the fixture
//! weights, image and prompts of `./build.sh bench`, then (with `--fixtures`) a parity report
//! against the repository's golden outputs. Not a gate: candle's SAM is expected to deviate
//! (tanh GELU where SAM uses erf; CatmullRom resize where the official predictor uses PIL's
//! bilinear), and the report says by how much.
//!
//! candle-peer --weights bench/out/mobile_sam_candle.safetensors --image tests/fixtures/image.png
//!     [--runs 10] [--fixtures tests/fixtures] [--pil-image bench/out/image_768x1024_pil.png]

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, IndexOp, Tensor};
use candle_peer::{resized_size, var_builder, Decoded, Peer, Prompt, Result};
use candle_transformers::models::segment_anything::sam::Sam;

struct Args {
    weights: PathBuf,
    image: PathBuf,
    runs: usize,
    fixtures: Option<PathBuf>,
    pil_image: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: candle-peer --weights FILE.safetensors --image FILE.png [--runs N] \
         [--fixtures DIR] [--pil-image FILE.png]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        weights: PathBuf::new(),
        image: PathBuf::new(),
        runs: 10,
        fixtures: None,
        pil_image: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--weights" => a.weights = value.into(),
            "--image" => a.image = value.into(),
            "--runs" => a.runs = value.parse().unwrap_or_else(|_| usage()),
            "--fixtures" => a.fixtures = Some(value.into()),
            "--pil-image" => a.pil_image = Some(value.into()),
            _ => usage(),
        }
    }
    if a.weights.as_os_str().is_empty() || a.image.as_os_str().is_empty() || a.runs == 0 {
        usage()
    }
    a
}

/// The benchmark's prompts (bench/page/bench.js PROMPTS), in the 640x480 image's pixels.
fn prompts() -> Vec<(&'static str, Prompt)> {
    let point = |x, y, l| (x, y, l);
    vec![
        (
            "decode 1 point, 3 masks",
            Prompt {
                points: vec![point(161., 150., 1.)],
                multimask: true,
                ..Default::default()
            },
        ),
        (
            "decode box",
            Prompt {
                bbox: Some([370., 50., 570., 210.]),
                ..Default::default()
            },
        ),
        (
            "decode 5 points",
            Prompt {
                points: vec![
                    point(161., 150., 1.),
                    point(470., 360., 1.),
                    point(470., 130., 0.),
                    point(300., 300., 1.),
                    point(100., 400., 0.),
                ],
                ..Default::default()
            },
        ),
    ]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn row(what: &str, xs: &mut [f64]) {
    xs.sort_by(f64::total_cmp);
    println!(
        "| {what} | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
        xs[xs.len() / 2],
        xs[0],
        xs[xs.len() - 1],
        xs.len()
    );
}

fn main() -> Result<()> {
    let a = args();
    let image = image::open(&a.image)
        .map_err(candle_core::Error::wrap)?
        .to_rgb8();
    let original = (image.height() as usize, image.width() as usize);

    let t = Instant::now();
    let weights = std::fs::read(&a.weights)?;
    let mut peer = Peer::new(weights.clone())?;
    let load = ms(t);

    println!(
        "candle-transformers 0.11.1 SAM (MobileSAM, TinyViT-5M), native, {} thread(s) \
         (candle: RAYON_NUM_THREADS or all cores), {} runs each",
        candle_core::utils::get_num_threads(),
        a.runs
    );
    println!("\n| what | median | min | max | runs |\n|---|---|---|---|---|");
    println!("| load (read safetensors, build) | {load:.1} ms | | | 1 |");
    let mut encode = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        let t = Instant::now();
        peer.set_image(&image, original)?;
        encode.push(ms(t));
    }
    row("encode (TinyViT, incl. resize and normalize)", &mut encode);
    let mut masks = Vec::new();
    for (name, prompt) in prompts() {
        let first = peer.decode(&prompt)?; // warm-up, as in the page
        let mut xs = Vec::with_capacity(a.runs);
        for _ in 0..a.runs {
            let t = Instant::now();
            peer.decode(&prompt)?;
            xs.push(ms(t));
        }
        row(
            &format!("{name} (masks at {}x{})", original.1, original.0),
            &mut xs,
        );
        masks.push((name, first));
    }
    for (name, d) in &masks {
        let ones: usize = d.mask.iter().map(|&m| m as usize).sum();
        println!(
            "{name}: best mask {} of {}, {ones} pixels on",
            d.best,
            d.iou.len()
        );
    }

    if let Some(fixtures) = &a.fixtures {
        parity(&mut peer, weights, &image, fixtures, a.pil_image.as_deref())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------- parity

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// A little-endian f32 or f16 .npy file (C order), as f32.
fn npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path)?;
    let bad = || {
        candle_core::Error::Msg(format!(
            "{}: not a little-endian f32/f16 .npy",
            path.display()
        ))
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).map_err(|_| bad())?;
    if header.contains("'fortran_order': True") {
        return Err(bad());
    }
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(bad)?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    let data = &bytes[start + len..];
    let values: Vec<f32> = if header.contains("'<f4'") {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else if header.contains("'<f2'") {
        data.chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()
    } else {
        return Err(bad());
    };
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// Pixels where the thresholded mask differs from the golden full-size logits > 0, leaving
/// out those where |golden logit| < 1e-3 (f16 storage, see tests/fixtures/README.md).
fn mask_mismatch(mask: &[u8], golden: &Tensor) -> Result<(usize, usize)> {
    let golden = golden.flatten_all()?.to_vec1::<f32>()?;
    let mut differ = 0;
    let mut counted = 0;
    for (&m, &g) in mask.iter().zip(&golden) {
        if g.abs() >= 1e-3 {
            counted += 1;
            differ += usize::from((m == 1) != (g > 0.));
        }
    }
    Ok((differ, counted))
}

/// The official postprocess_masks with candle's bilinear upsampling (align_corners false):
/// 256 -> 1024, crop to the resized image, -> the original size; the best mask, thresholded.
fn bilinear_mask(d: &Decoded, original: (usize, usize)) -> Result<Vec<u8>> {
    let (rh, rw) = resized_size(original.0, original.1);
    d.low_res
        .upsample_bilinear2d(1024, 1024, false)?
        .i((.., .., ..rh, ..rw))?
        .contiguous()?
        .upsample_bilinear2d(original.0, original.1, false)?
        .i((0, d.best))?
        .ge(0f32)?
        .flatten_all()?
        .to_vec1::<u8>()
}

fn json_points(case: &serde_json::Value) -> Vec<(f32, f32, f32)> {
    let (Some(points), Some(labels)) = (case["points"].as_array(), case["labels"].as_array())
    else {
        return Vec::new();
    };
    points
        .iter()
        .zip(labels)
        .map(|(p, l)| {
            (
                p[0].as_f64().unwrap_or(0.) as f32,
                p[1].as_f64().unwrap_or(0.) as f32,
                l.as_f64().unwrap_or(0.) as f32,
            )
        })
        .collect()
}

fn parity(
    peer: &mut Peer,
    weights: Vec<u8>,
    image: &image::RgbImage,
    fixtures: &Path,
    pil_image: Option<&Path>,
) -> Result<()> {
    let original = (image.height() as usize, image.width() as usize);
    println!("\nParity (a report, not a gate; max abs difference against tests/fixtures)");

    // 1. The assembly in lib.rs against candle-transformers' own `Sam::new_tiny`.
    let sam = Sam::new_tiny(var_builder(weights)?)?;
    let (rh, rw) = resized_size(original.0, original.1);
    let resized = image::imageops::resize(
        image,
        rw as u32,
        rh as u32,
        image::imageops::FilterType::CatmullRom,
    );
    let pixels =
        Tensor::from_slice(resized.as_raw(), (rh, rw, 3), &Device::Cpu)?.permute((2, 0, 1))?;
    let sam_embedding = sam.embeddings(&pixels)?;
    peer.set_image(image, original)?;
    let own = peer.embedding().expect("image set").clone();
    let (sam_low_res, _) = sam.forward_for_embeddings(
        &own,
        rh,
        rw,
        &[(161. / original.1 as f64, 150. / original.0 as f64, true)],
        true,
    )?;
    let peer_point = peer.decode(&prompts()[0].1)?;
    println!(
        "- this crate's assembly vs Sam::new_tiny (its embeddings and forward_for_embeddings, \
         1 point): embedding {:e}, low-res logits {:e}",
        max_abs_diff(&own, &sam_embedding)?,
        max_abs_diff(&peer_point.low_res, &sam_low_res)?
    );
    drop(sam);

    // 2. The embedding: candle's preprocessing, and the official one (PIL) on candle's encoder.
    let golden = npy(&fixtures.join("embedding.npy"))?;
    println!(
        "- embedding (golden |max| {:.3}): candle's preprocessing (CatmullRom resize) {:.3e}",
        golden.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?,
        max_abs_diff(&own, &golden)?
    );
    if let Some(path) = pil_image {
        let pil = image::open(path)
            .map_err(candle_core::Error::wrap)?
            .to_rgb8();
        peer.set_image(&pil, original)?;
        println!(
            "- embedding, encoder alone (input resized by PIL, as the official predictor): {:.3e}",
            max_abs_diff(peer.embedding().expect("image set"), &golden)?
        );
    }

    // 3. The decoder alone, on the golden embedding, every golden case.
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("cases.json"))?)
            .map_err(candle_core::Error::wrap)?;
    let mut mask_inputs = std::collections::HashMap::new();
    println!("- decoder alone, on the golden embedding (low-res logits; IoU predictions):");
    let empty = Vec::new();
    for case in cases["cases"].as_array().unwrap_or(&empty) {
        let name = case["name"].as_str().unwrap_or("?");
        let size = &case["orig_size"];
        let frame = (
            size[0].as_u64().unwrap_or(0) as usize,
            size[1].as_u64().unwrap_or(0) as usize,
        );
        let bbox = case["box"].as_array().map(|b| {
            let v = |i: usize| b[i].as_f64().unwrap_or(0.) as f32;
            [v(0), v(1), v(2), v(3)]
        });
        let mask_input = match case["mask_input"].as_str() {
            Some(file) => Some(
                mask_inputs
                    .entry(file.to_string())
                    .or_insert(npy(&fixtures.join(file))?.unsqueeze(0)?)
                    .clone(),
            ),
            None => None,
        };
        let prompt = Prompt {
            points: json_points(case),
            bbox,
            mask_input,
            multimask: case["multimask"].as_bool().unwrap_or(false),
        };
        peer.set_embedding(golden.clone(), frame);
        let d: Decoded = peer.decode(&prompt)?;
        let low = npy(&fixtures.join(case["low_res_logits"].as_str().unwrap_or("")))?;
        let iou = npy(&fixtures.join(case["iou"].as_str().unwrap_or("")))?;
        let mut line = format!(
            "  - {name}: {:.3e}; {:.3e}",
            max_abs_diff(&d.low_res.squeeze(0)?, &low)?,
            max_abs_diff(&Tensor::new(d.iou.as_slice(), &Device::Cpu)?, &iou)?
        );
        if let Some(file) = case["logits"].as_str() {
            let full = npy(&fixtures.join(file))?.get(d.best)?;
            let (differ, counted) = mask_mismatch(&d.mask, &full)?;
            let (bilinear, _) = mask_mismatch(&bilinear_mask(&d, frame)?, &full)?;
            line += &format!(
                "; {}x{} mask differs on {differ} of {counted} pixels ({:.2} %: candle upsamples \
                 with nearest-neighbour, the golden with bilinear; bilinearly, {bilinear} pixels)",
                frame.1,
                frame.0,
                100. * differ as f64 / counted as f64
            );
        }
        println!("{line}");
    }

    // 4. End to end on the case the benchmark's box prompt shares with the goldens.
    peer.set_image(image, original)?;
    for case in cases["cases"].as_array().unwrap_or(&empty) {
        if case["name"] != "predictor_box" {
            continue;
        }
        let d = peer.decode(&prompts()[1].1)?;
        let low = npy(&fixtures.join(case["low_res_logits"].as_str().unwrap_or("")))?;
        let full = npy(&fixtures.join(case["logits"].as_str().unwrap_or("")))?.get(0)?;
        let (differ, counted) = mask_mismatch(&d.mask, &full)?;
        let (bilinear, _) = mask_mismatch(&bilinear_mask(&d, original)?, &full)?;
        println!(
            "- end to end (candle's preprocessing, encoder and decoder), the benchmark's box = \
             golden predictor_box: low-res logits {:.3e}; 640x480 mask differs on {differ} of \
             {counted} pixels ({:.2} %; upsampled bilinearly, {bilinear} pixels)",
            max_abs_diff(&d.low_res.squeeze(0)?, &low)?,
            100. * differ as f64 / counted as f64
        );
    }
    Ok(())
}
