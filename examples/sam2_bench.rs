//! Times SAM 2.1 natively on one checkpoint (bench/sam2_native.py runs it beside PyTorch on the same
//! cores): the load, `runs` encodes of an image and `runs` decodes of a click, medians; writes
//! the last encode's `image_embed` as .npy for the script's parity check.
//! `cargo run --release --example sam2_bench -- CKPT IMAGE RUNS OUT.npy [cpu|gpu]`
//! (`RAYON_NUM_THREADS` sets the CPU's threads).

use std::time::Instant;

use websam::gpu::{GpuContext, GpuSam};
use websam::image::RgbImage;
use websam::model::sam::{Point, PointLabel, Prompt, Sam};
use websam::model::weights::Weights;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> websam::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: sam2_bench CKPT IMAGE RUNS OUT.npy [cpu|gpu]");
        std::process::exit(2);
    }
    let runs: usize = args[3].parse().expect("RUNS: a number");
    let gpu = args.get(5).is_some_and(|b| b == "gpu");
    let image = RgbImage::open(&args[2])?;
    let click = Prompt {
        points: vec![Point {
            x: image.width as f64 * 0.55,
            y: image.height as f64 * 0.55,
            label: PointLabel::Positive,
        }],
        multimask: true,
        ..Prompt::default()
    };
    let t = Instant::now();
    let weights = Weights::from_file(&args[1])?;
    let (mut encodes, mut decodes) = (Vec::new(), Vec::new());
    let embedding;
    if gpu {
        let ctx = pollster::block_on(GpuContext::new())?;
        let sam = pollster::block_on(GpuSam::upload(&ctx, &weights))?;
        println!(
            "load {:.3} s ({})",
            t.elapsed().as_secs_f64(),
            ctx.adapter_name()
        );
        let mut last = None;
        for _ in 0..runs {
            let t = Instant::now();
            last = Some(pollster::block_on(sam.embed(&image))?);
            encodes.push(t.elapsed().as_secs_f64());
        }
        let (e, prepared) = last.expect("runs > 0");
        for _ in 0..runs {
            let t = Instant::now();
            pollster::block_on(sam.decode(&prepared, &click))?;
            decodes.push(t.elapsed().as_secs_f64());
        }
        embedding = e;
    } else {
        let sam = Sam::new(&weights)?;
        println!("load {:.3} s (CPU)", t.elapsed().as_secs_f64());
        let mut last = None;
        for _ in 0..runs {
            let t = Instant::now();
            last = Some(sam.embed(&image)?);
            encodes.push(t.elapsed().as_secs_f64());
        }
        let e = last.expect("runs > 0");
        sam.prepare_decoder(&e)?;
        for _ in 0..runs {
            let t = Instant::now();
            sam.decode(&e, &click)?;
            decodes.push(t.elapsed().as_secs_f64());
        }
        embedding = e;
    }
    println!(
        "encode median {:.3} s of {runs}: {encodes:.3?}",
        median(encodes.clone())
    );
    println!("decode median {:.4} s of {runs}", median(decodes));
    // image_embed alone (the .npy of one array; SAM 2's whole embedding is an .npz).
    let image_embed = websam::model::sam::ImageEmbedding::new(embedding.features, embedding.frame)?;
    std::fs::write(&args[4], image_embed.to_npy_bytes()?).expect("write the embedding");
    Ok(())
}
