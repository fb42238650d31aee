//! `websam`: the native command line. Embeds images, decodes prompts and segments an image in
//! one go, reading official SAM / MobileSAM checkpoints (`.pth`, `.pt`, `.safetensors`).
//! It is also the contract for checking the model from outside: its `.npy` outputs are what
//! the reference's `SamPredictor` produces.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::{Parser, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};
use websam::amg::{records_to_json, GeneratorOptions, MaskGenerator, MaskRecord};
use websam::gpu::context::Precision;
use websam::image::{ImageFrame, MaskCleanup, RgbImage};
use websam::model::config::{IMAGE_SIZE, LOW_RES_SIDE};
use websam::model::sam::Sam;
use websam::model::sam::{read_npy_f32, ImageEmbedding, Point, PointLabel, Prediction, Prompt};
use websam::model::weights::Weights;
use websam::predictor::{BackendChoice, Predictor};
use websam::train::coco::Coco;
use websam::train::eval::{click_ious, ClickScore};
use websam::train::interactive::Truth;
use websam::train::{Object, Run, RunOptions};
use websam::{Error, Result};

#[derive(Parser)]
#[command(
    name = "websam",
    version,
    about = "Segment Anything (SAM, MobileSAM) on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// candle on the CPU.
    Cpu,
    /// The WebGPU engine (wgpu: Vulkan, Metal, DX12 or GL natively); an error without an adapter.
    Gpu,
    /// The GPU when a hardware adapter exists, else the CPU (a software adapter such as
    /// lavapipe is slower than the CPU backend).
    Auto,
}

/// Precision of the GPU's GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PrecisionArg {
    /// f32: the reference's results.
    F32,
    /// f16 weights and products where the adapter offers shader-f16 (else f32); see
    /// docs/API.md for its tolerance.
    F16,
}

/// Where and how the model runs.
#[derive(clap::Args, Clone, Debug)]
struct Engine {
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// GPU precision (the CPU backend computes in f32).
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// The checkpoint's expected SHA-256 (64 hex digits): checked before anything in the file
    /// is read; a mismatch is an error naming both digests.
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
}

/// Reads a checkpoint, first checking its bytes against `sha256` where one is given.
fn read_weights(path: &Path, sha256: Option<&str>) -> Result<Weights> {
    let Some(expected) = sha256 else {
        return Weights::from_file(path);
    };
    let expected = expected.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(format!(
            "--sha256 {expected:?}: give the 64 hex digits of a SHA-256"
        )));
    }
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    // Hashed as it streams from the file; the weights are then read from the same file.
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).map_err(io)?;
    std::io::copy(&mut file, &mut hasher).map_err(io)?;
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != expected {
        return Err(Error::invalid(format!(
            "{}: sha256 is {got}, expected {expected} (--sha256): not the checkpoint asked for",
            path.display()
        )));
    }
    Weights::from_file(path)
}

impl From<Backend> for BackendChoice {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Cpu => BackendChoice::Cpu,
            Backend::Gpu => BackendChoice::Gpu,
            Backend::Auto => BackendChoice::Auto,
        }
    }
}

/// Loads the weights into a predictor on `engine`, saying on stderr which backend it uses.
fn load(weights: &Path, engine: &Engine) -> Result<Predictor> {
    let t = Instant::now();
    let w = read_weights(weights, engine.sha256.as_deref())?;
    let precision = match engine.precision {
        PrecisionArg::F32 => Precision::F32,
        PrecisionArg::F16 => Precision::F16,
    };
    let (p, why_not) = pollster::block_on(Predictor::with_precision(
        w,
        engine.backend.into(),
        precision,
    ))?;
    if let Some(e) = why_not {
        eprintln!("backend auto: {e}; using the CPU");
    }
    let used = match (p.adapter_name(), p.gpu()) {
        (Some(name), Some(gpu)) => format!(
            "gpu, {name}, {}, {:.1} MB of GPU buffers",
            p.precision().name(),
            gpu.ctx().pool().allocated_bytes() as f64 / 1e6
        ),
        _ => "cpu".to_owned(),
    };
    let file_mb = std::fs::metadata(weights).map_or(f64::NAN, |m| m.len() as f64 / 1e6);
    eprintln!(
        "loaded {} ({file_mb:.1} MB) in {:.0} ms (backend: {used}); peak resident memory so far \
         {:.1} MB",
        weights.display(),
        t.elapsed().as_secs_f64() * 1e3,
        proc_memory_mb("VmHWM")
    );
    Ok(p)
}

#[derive(Subcommand)]
enum Command {
    /// Write the image embedding of an image: SAM's 1x256x64x64 f32 .npy; SAM 2's .npz
    /// (image_embed 1x256x64x64, high_res_feats_0 1x32x256x256, high_res_feats_1 1x64x128x128).
    Embed {
        /// Checkpoint with an image encoder (.pth, .pt or .safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// PNG or JPEG image.
        #[arg(long)]
        image: PathBuf,
        /// Output file: .npy (SAM), .npz (SAM 2).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        engine: Engine,
    },
    /// Decode a prompt against an image embedding; writes low_res_logits.npy, iou.npy and,
    /// with --orig-size, masks.npy and mask.png (the best mask).
    Decode {
        /// Checkpoint (a decoder-only one is enough).
        #[arg(long)]
        weights: PathBuf,
        /// Image embedding: SAM's 1x256x64x64 (or 256x64x64) .npy, SAM 2's .npz (as `embed`
        /// writes them).
        #[arg(long)]
        embedding: PathBuf,
        #[command(flatten)]
        prompt: PromptArgs,
        /// Original image size "H,W"; prompts are in its pixel coordinates.
        /// Without it the frame is the encoder's 1024x1024.
        #[arg(long, value_parser = parse_size)]
        orig_size: Option<(usize, usize)>,
        #[command(flatten)]
        engine: Engine,
        /// Output folder (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Embed an image, decode a prompt, and write the best mask as PNG.
    Segment {
        /// Checkpoint with an image encoder (.pth, .pt or .safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// PNG or JPEG image.
        #[arg(long)]
        image: PathBuf,
        #[command(flatten)]
        prompt: PromptArgs,
        #[command(flatten)]
        engine: Engine,
        /// Output PNG (white = mask).
        #[arg(long)]
        out: PathBuf,
    },
    /// Segment everything: the official automatic mask generator
    /// (`SamAutomaticMaskGenerator`, output_mode "coco_rle"). One image to one JSON list of
    /// records, or a folder to one JSON per image plus a COCO dataset file.
    Everything {
        /// Checkpoint with an image encoder (.pth, .pt or .safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// PNG or JPEG image (with --out).
        #[arg(long, required_unless_present = "images", conflicts_with = "images")]
        image: Option<PathBuf>,
        /// Output JSON: the records as the reference's generate() returns them.
        #[arg(long, requires = "image")]
        out: Option<PathBuf>,
        /// A folder of PNG and JPEG images (with --out-dir).
        #[arg(long, requires = "out_dir")]
        images: Option<PathBuf>,
        /// Output folder: <image stem>.json per image and coco.json (or
        /// coco.shard-I-of-N.json), a COCO dataset of every mask.
        #[arg(long, requires = "images")]
        out_dir: Option<PathBuf>,
        /// "I/N": only the images whose index in the sorted folder is I modulo N, so that N
        /// processes (on any machines) share a folder; image ids are the same in every shard.
        #[arg(long, value_parser = parse_shard, requires = "images")]
        shard: Option<(usize, usize)>,
        #[command(flatten)]
        options: GeneratorArgs,
        #[command(flatten)]
        engine: Engine,
    },
    /// Fine-tune the prompt encoder and mask decoder on COCO annotations, the image encoder
    /// frozen: the paper's loss and interactive training (11 predictions per object), AdamW
    /// with warm-up and step decay. Writes the whole checkpoint (safetensors, official keys).
    Train(TrainArgs),
    /// Long-session check: many decodes on one predictor, the embedding replaced now and then,
    /// printing the process's resident memory as it goes (docs/RELIABILITY.md; not in the tests).
    Soak {
        /// Checkpoint (a decoder-only one is enough).
        #[arg(long)]
        weights: PathBuf,
        /// Image embedding, 1x256x64x64 .npy; variants of it (scaled) stand for other images.
        #[arg(long)]
        embedding: PathBuf,
        /// Decodes in all.
        #[arg(long, default_value_t = 100_000)]
        decodes: usize,
        /// Embeddings set in turn, evenly over the run.
        #[arg(long, default_value_t = 200)]
        embeddings: usize,
        /// Print the resident memory every this many decodes.
        #[arg(long, default_value_t = 1000)]
        every: usize,
        #[command(flatten)]
        engine: Engine,
    },
    /// Time the encoder, the first decode after an image and further decodes (one point,
    /// multimask): median and spread over N runs.
    Bench {
        /// Checkpoint with an image encoder.
        #[arg(long)]
        weights: PathBuf,
        /// Image to embed (PNG or JPEG).
        #[arg(long)]
        image: PathBuf,
        /// Runs per measurement.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[command(flatten)]
        engine: Engine,
    },
}

/// Median, min and max of durations in milliseconds.
fn summary(ms: &mut [f64]) -> String {
    ms.sort_by(f64::total_cmp);
    let median = if ms.len() % 2 == 1 {
        ms[ms.len() / 2]
    } else {
        (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
    };
    format!(
        "median {median:8.1} ms  min {:8.1}  max {:8.1}  (n={})",
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    )
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64() * 1e3))
}

/// The generator's options (segment-anything's and sam2's names and defaults).
#[derive(clap::Args, Debug)]
struct GeneratorArgs {
    #[arg(long, default_value_t = 32)]
    points_per_side: usize,
    #[arg(long, default_value_t = 64)]
    points_per_batch: usize,
    /// Default: 0.88 for SAM, 0.8 for SAM 2 (the reference generators').
    #[arg(long)]
    pred_iou_thresh: Option<f64>,
    #[arg(long, default_value_t = 0.95)]
    stability_score_thresh: f64,
    #[arg(long, default_value_t = 1.0)]
    stability_score_offset: f64,
    #[arg(long, default_value_t = 0.7)]
    box_nms_thresh: f64,
    #[arg(long, default_value_t = 0)]
    crop_n_layers: usize,
    #[arg(long, default_value_t = 0.7)]
    crop_nms_thresh: f64,
    #[arg(long, default_value_t = 512.0 / 1500.0)]
    crop_overlap_ratio: f64,
    #[arg(long, default_value_t = 1)]
    crop_n_points_downscale_factor: usize,
    #[arg(long, default_value_t = 0.0)]
    min_mask_region_area: f64,
}

impl GeneratorArgs {
    fn options(&self) -> GeneratorOptions {
        GeneratorOptions {
            points_per_side: Some(self.points_per_side),
            point_grids: None,
            points_per_batch: self.points_per_batch,
            pred_iou_thresh: self.pred_iou_thresh,
            stability_score_thresh: self.stability_score_thresh,
            stability_score_offset: self.stability_score_offset,
            box_nms_thresh: self.box_nms_thresh,
            crop_n_layers: self.crop_n_layers,
            crop_nms_thresh: self.crop_nms_thresh,
            crop_overlap_ratio: self.crop_overlap_ratio,
            crop_n_points_downscale_factor: self.crop_n_points_downscale_factor,
            min_mask_region_area: self.min_mask_region_area,
        }
    }
}

fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("shard \"{s}\": expected \"I/N\" with 0 <= I < N");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n) = (
        i.trim().parse::<usize>().map_err(|_| bad())?,
        n.trim().parse::<usize>().map_err(|_| bad())?,
    );
    if i < n {
        Ok((i, n))
    } else {
        Err(bad())
    }
}

#[derive(clap::Args)]
struct PromptArgs {
    /// Points "x,y,label;x,y,label" with label 1 (positive), 0 (negative) or -1 (ignored).
    #[arg(long, value_parser = parse_points)]
    points: Option<Points>,
    /// Box "x0,y0,x1,y1".
    #[arg(long = "box", value_parser = parse_box)]
    bbox: Option<[f64; 4]>,
    /// Low-res logits of a previous prediction, [1,256,256] or [256,256] f32 .npy.
    #[arg(long)]
    mask_input: Option<PathBuf>,
    /// Three candidate masks instead of one.
    #[arg(long)]
    multimask: bool,
    /// SAM2ImagePredictor's max_hole_area: regions outside a mask of at most this many low-res
    /// (256x256) pixels are filled before the mask is made at the image's size (0: off).
    #[arg(long, default_value_t = 0.0)]
    max_hole_area: f64,
    /// SAM2ImagePredictor's max_sprinkle_area: regions of a mask of at most this many low-res
    /// pixels are dropped (0: off).
    #[arg(long, default_value_t = 0.0)]
    max_sprinkle_area: f64,
}

impl PromptArgs {
    fn cleanup(&self) -> Result<MaskCleanup> {
        MaskCleanup::new(self.max_hole_area, self.max_sprinkle_area)
    }

    fn to_prompt(&self) -> Result<Prompt> {
        let mask_input = match &self.mask_input {
            None => None,
            Some(path) => {
                let t = read_npy(path)?;
                let side = LOW_RES_SIDE;
                if t.dims() != [1, side, side] && t.dims() != [side, side] {
                    return Err(Error::invalid(format!(
                        "{}: mask input has shape {:?}, expected [1, {side}, {side}] or [{side}, {side}]",
                        path.display(),
                        t.dims()
                    )));
                }
                Some(t.flatten_all()?.to_vec1()?)
            }
        };
        Ok(Prompt {
            points: self.points.clone().map(|p| p.0).unwrap_or_default(),
            bbox: self.bbox,
            mask_input,
            multimask: self.multimask,
        })
    }
}

fn numbers(s: &str, n: usize, what: &str) -> std::result::Result<Vec<f64>, String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{what} \"{s}\": {e}"))?;
    if v.len() != n {
        return Err(format!(
            "{what} \"{s}\": expected {n} comma-separated numbers"
        ));
    }
    Ok(v)
}

/// The points of `--points` (a newtype, so clap takes the list as one value).
#[derive(Clone, Debug)]
struct Points(Vec<Point>);

fn parse_points(s: &str) -> std::result::Result<Points, String> {
    s.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let v = numbers(p, 3, "point")?;
            if v[2].fract() != 0.0 {
                return Err(format!("point \"{p}\": the label must be 1, 0 or -1"));
            }
            let label = PointLabel::from_i32(v[2] as i32).map_err(|e| e.to_string())?;
            Ok(Point {
                x: v[0],
                y: v[1],
                label,
            })
        })
        .collect::<std::result::Result<_, _>>()
        .map(Points)
}

fn parse_box(s: &str) -> std::result::Result<[f64; 4], String> {
    let v = numbers(s, 4, "box")?;
    Ok([v[0], v[1], v[2], v[3]])
}

fn parse_size(s: &str) -> std::result::Result<(usize, usize), String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("size \"{s}\": {e}"))?;
    match v[..] {
        [h, w] if h > 0 && w > 0 => Ok((h, w)),
        _ => Err(format!("size \"{s}\": expected \"H,W\" with both > 0")),
    }
}

/// A `.npy` file as an f32 tensor (f32 or f16 stored), read as the library reads one.
fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let (shape, data) = read_npy_f32(&bytes).map_err(|e| e.context(path.display()))?;
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

fn write_npy(t: &Tensor, path: &Path) -> Result<()> {
    t.write_npy(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write_mask_png(data: &[u8], width: usize, height: usize, path: &Path) -> Result<()> {
    let pixels: Vec<u8> = data.iter().map(|&v| v * 255).collect();
    let img = image::GrayImage::from_raw(width as u32, height as u32, pixels)
        .ok_or_else(|| Error::Image("mask buffer does not match its size".into()))?;
    img.save(path)
        .map_err(|e| Error::Image(format!("{}: {e}", path.display())))
}

fn report(pred: &Prediction) {
    let best = pred.best();
    for (i, iou) in pred.iou.iter().enumerate() {
        let mark = if i == best { " (best)" } else { "" };
        eprintln!("mask {i}: predicted IoU {iou:.4}{mark}");
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Embed {
            weights,
            image,
            out,
            engine,
        } => {
            let mut sam = load(&weights, &engine)?;
            let want = if sam.is_sam2() { "npz" } else { "npy" };
            if out.extension().and_then(|e| e.to_str()) != Some(want) {
                return Err(Error::invalid(format!(
                    "{}: this model's embedding is a .{want} file",
                    out.display()
                )));
            }
            let img = RgbImage::open(&image)?;
            let t = Instant::now();
            pollster::block_on(sam.set_image(&img))?;
            eprintln!(
                "embedded {}x{} image in {:.0} ms",
                img.width,
                img.height,
                t.elapsed().as_secs_f64() * 1e3
            );
            let embedding = sam.embedding()?;
            if embedding.high_res.is_none() {
                return write_npy(&embedding.features, &out);
            }
            std::fs::write(&out, embedding.to_npz_bytes()?).map_err(io_err(&out))
        }
        Command::Train(args) => train(args),
        Command::Decode {
            weights,
            embedding,
            prompt,
            orig_size,
            engine,
            out_dir,
        } => {
            let mut sam = load(&weights, &engine)?;
            let (cleanup, prompt) = (prompt.cleanup()?, prompt.to_prompt()?);
            let (h, w) = orig_size.unwrap_or((IMAGE_SIZE, IMAGE_SIZE));
            let bytes = std::fs::read(&embedding).map_err(io_err(&embedding))?;
            let emb = ImageEmbedding::from_file_bytes(&bytes, sam.frame(h, w)?)
                .map_err(|e| e.context(embedding.display()))?;
            let t = Instant::now();
            pollster::block_on(sam.set_embedding(emb))?;
            // Masks only exist in an image's frame.
            let (pred, masks) = if orig_size.is_some() {
                let (pred, masks) = pollster::block_on(sam.predict_with(&prompt, &cleanup))?;
                (pred, Some(masks))
            } else {
                (pollster::block_on(sam.predict_low_res(&prompt))?, None)
            };
            eprintln!("decoded in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
            report(&pred);
            std::fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;
            let c = pred.num_masks();
            let dev = Device::Cpu;
            let low_res =
                Tensor::from_slice(&pred.low_res_logits, (c, LOW_RES_SIDE, LOW_RES_SIDE), &dev)?;
            write_npy(&low_res, &out_dir.join("low_res_logits.npy"))?;
            write_npy(
                &Tensor::from_slice(&pred.iou, c, &dev)?,
                &out_dir.join("iou.npy"),
            )?;
            if let Some(masks) = masks {
                let data: Vec<u8> = masks.iter().flat_map(|m| m.data.iter().copied()).collect();
                write_npy(
                    &Tensor::from_vec(data, (c, h, w), &dev)?,
                    &out_dir.join("masks.npy"),
                )?;
                let best = &masks[pred.best()];
                write_mask_png(&best.data, w, h, &out_dir.join("mask.png"))?;
            }
            Ok(())
        }
        Command::Segment {
            weights,
            image,
            prompt,
            engine,
            out,
        } => {
            let mut sam = load(&weights, &engine)?;
            let (cleanup, prompt) = (prompt.cleanup()?, prompt.to_prompt()?);
            let img = RgbImage::open(&image)?;
            let t = Instant::now();
            pollster::block_on(sam.set_image(&img))?;
            eprintln!("embedded in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let (pred, masks) = pollster::block_on(sam.predict_with(&prompt, &cleanup))?;
            eprintln!("decoded in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
            report(&pred);
            let best = &masks[pred.best()];
            write_mask_png(&best.data, best.width, best.height, &out)?;
            let on: usize = best.data.iter().map(|&v| v as usize).sum();
            eprintln!(
                "wrote {} ({}x{}, {on} pixels in the mask, stability {:.3})",
                out.display(),
                best.width,
                best.height,
                best.stability_score
            );
            Ok(())
        }
        Command::Bench {
            weights,
            image,
            runs,
            engine,
        } => bench(&weights, &image, runs, &engine),
        Command::Soak {
            weights,
            embedding,
            decodes,
            embeddings,
            every,
            engine,
        } => soak(&weights, &embedding, decodes, embeddings, every, &engine),
        Command::Everything {
            weights,
            image,
            out,
            images,
            out_dir,
            shard,
            options,
            engine,
        } => {
            let options = options.options();
            options.point_grids()?;
            let mut sam = load(&weights, &engine)?;
            match (image, out, images, out_dir) {
                (Some(image), Some(out), None, None) => {
                    let img = RgbImage::open(&image)?;
                    let records = everything(&mut sam, &img, &options, &image)?;
                    write_text(&out, &records_to_json(&records))
                }
                (None, None, Some(images), Some(out_dir)) => {
                    everything_folder(&mut sam, &images, &out_dir, shard, &options)
                }
                _ => Err(Error::invalid(
                    "give --image with --out, or --images with --out-dir",
                )),
            }
        }
    }
}

/// Generates every mask of one image, reporting the time taken on stderr.
fn everything(
    sam: &mut Predictor,
    img: &RgbImage,
    options: &GeneratorOptions,
    path: &Path,
) -> Result<Vec<MaskRecord>> {
    let t = Instant::now();
    pollster::block_on(sam.set_image(img))?;
    let embed_ms = t.elapsed().as_secs_f64() * 1e3;
    let generator = MaskGenerator::new(options.clone(), sam, Some(img.clone()))?;
    let total = generator.progress().total;
    let records = pollster::block_on(generator.run(sam))?;
    eprintln!(
        "{}: {} masks from {} steps in {:.0} ms ({:.0} ms of it encoding the image)",
        path.display(),
        records.len(),
        total,
        t.elapsed().as_secs_f64() * 1e3,
        embed_ms
    );
    Ok(records)
}

/// `--images DIR --out-dir DIR [--shard I/N]`: one JSON per image and a COCO dataset file.
fn everything_folder(
    sam: &mut Predictor,
    dir: &Path,
    out_dir: &Path,
    shard: Option<(usize, usize)>,
    options: &GeneratorOptions,
) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str())
                })
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no PNG or JPEG images in this folder",
            dir.display()
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let (shard_i, shard_n) = shard.unwrap_or((0, 1));
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    for (index, path) in files.iter().enumerate() {
        if index % shard_n != shard_i {
            continue;
        }
        let img = RgbImage::open(path)?;
        let records = everything(sam, &img, options, path)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        write_text(
            &out_dir.join(format!("{stem}.json")),
            &records_to_json(&records),
        )?;
        // Ids from the image's place in the whole folder: the same in every shard.
        let image_id = index + 1;
        let file_name = path.file_name().and_then(|s| s.to_str()).unwrap_or(stem);
        images.push(serde_json::json!({
            "id": image_id, "file_name": file_name, "width": img.width, "height": img.height,
        }));
        for (k, r) in records.iter().enumerate() {
            let mut ann = r.to_json();
            if let Some(obj) = ann.as_object_mut() {
                obj.insert("id".into(), (image_id * 10_000_000 + k + 1).into());
                obj.insert("image_id".into(), image_id.into());
                obj.insert("category_id".into(), 1.into());
                obj.insert("iscrowd".into(), 0.into());
            }
            annotations.push(ann);
        }
    }
    let coco = serde_json::json!({
        "info": { "description": "websam everything (SamAutomaticMaskGenerator)" },
        "images": images,
        "annotations": annotations,
        "categories": [{ "id": 1, "name": "object", "supercategory": "object" }],
    });
    let name = match shard {
        Some((i, n)) => format!("coco.shard-{i}-of-{n}.json"),
        None => "coco.json".to_owned(),
    };
    write_text(&out_dir.join(name), &coco.to_string())
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(io_err(path))
}

/// Bytes the allocator holds for live allocations (glibc's `mallinfo2`: in-use heap chunks and
/// mmapped ones), in MB: flat when nothing leaks, whatever the heap's fragmentation does to the
/// resident size. NaN off glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_in_use_mb() -> f64 {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as f64 / 1e6
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_in_use_mb() -> f64 {
    f64::NAN
}

/// A memory figure of this process in MB from /proc/self/status (Linux): `VmRSS` (resident
/// now) or `VmHWM` (the most resident so far); NaN elsewhere.
fn proc_memory_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let rest = s
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kb| kb * 1024.0 / 1e6)
}

fn soak(
    weights: &Path,
    embedding: &Path,
    decodes: usize,
    embeddings: usize,
    every: usize,
    engine: &Engine,
) -> Result<()> {
    if decodes == 0 || embeddings == 0 || every == 0 {
        return Err(Error::invalid(
            "--decodes, --embeddings and --every must be at least 1",
        ));
    }
    let mut model = load(weights, engine)?;
    let base = ImageEmbedding::new(read_npy(embedding)?, ImageFrame::new(480, 640)?)?;
    let per_embedding = decodes.div_ceil(embeddings);
    println!("decodes,resident_mb,heap_in_use_mb,embeddings_set,elapsed_s");
    let t = Instant::now();
    let mut set = 0;
    let mut samples = Vec::new();
    for i in 0..decodes {
        if i % per_embedding == 0 {
            // Another "image": the embedding scaled, so the decoder's per-image cache turns over.
            let scale = 1.0 - 0.5 * (set % 7) as f64 / 7.0;
            let emb = ImageEmbedding::new((&base.features * scale)?, base.frame)?;
            pollster::block_on(model.set_embedding(emb))?;
            set += 1;
        }
        // A click that wanders over the image, alternating single and multimask, with a box
        // every third decode.
        let (x, y) = ((i * 37) % 640, (i * 53) % 480);
        let prompt = Prompt {
            points: vec![Point {
                x: x as f64,
                y: y as f64,
                label: PointLabel::Positive,
            }],
            bbox: (i % 3 == 0).then_some([0.0, 0.0, 639.0, 479.0]),
            multimask: i % 2 == 0,
            ..Prompt::default()
        };
        pollster::block_on(model.predict(&prompt))?;
        if (i + 1) % every == 0 || i + 1 == decodes {
            let (rss, heap) = (proc_memory_mb("VmRSS"), heap_in_use_mb());
            samples.push((rss, heap));
            println!(
                "{},{rss:.1},{heap:.3},{set},{:.1}",
                i + 1,
                t.elapsed().as_secs_f64()
            );
        }
    }
    // Flat after warm-up: the last sample against the first after a tenth of the run.
    let at = samples.len() / 10;
    let (warm, last) = (samples[at], samples[samples.len() - 1]);
    eprintln!(
        "after warm-up ({} decodes) -> at the end ({decodes} decodes): resident {:.1} -> {:.1} MB \
         ({:+.1}), heap in use {:.3} -> {:.3} MB ({:+.3})",
        (at + 1) * every,
        warm.0,
        last.0,
        last.0 - warm.0,
        warm.1,
        last.1,
        last.1 - warm.1
    );
    Ok(())
}

fn bench(weights: &Path, image: &Path, runs: usize, engine: &Engine) -> Result<()> {
    if runs == 0 {
        return Err(Error::invalid("--runs must be at least 1"));
    }
    let model = load(weights, engine)?;
    let img = RgbImage::open(image)?;
    let (h, w) = (img.height as f64, img.width as f64);
    // One positive click near the centre, multimask, as a first click in a page.
    let prompt = Prompt {
        points: vec![Point {
            x: w / 2.0,
            y: h / 2.0,
            label: PointLabel::Positive,
        }],
        multimask: true,
        ..Prompt::default()
    };
    println!("image {}x{}, {runs} runs", img.width, img.height);

    // The CPU encoder and decoder.
    let threads = candle_core::utils::get_num_threads(); // what candle runs on (RAYON_NUM_THREADS)
    if let Some(cpu) = model.cpu() {
        let emb = cpu.embed(&img)?; // warm-up
        let mut encode = Vec::new();
        for _ in 0..runs {
            encode.push(timed(|| cpu.embed(&img))?.1);
        }
        println!(
            "cpu (candle, {threads} threads) encoder          {}",
            summary(&mut encode)
        );
        cpu.decode(&emb, &prompt)?;
        let (mut first, mut further) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            // The first decode after an image does the decoder's per-image work: a copy of the
            // features is a new image to the cache.
            let fresh = ImageEmbedding::new(emb.features.copy()?, emb.frame)?;
            first.push(timed(|| cpu.decode(&fresh, &prompt))?.1);
            further.push(timed(|| cpu.decode(&fresh, &prompt))?.1);
        }
        println!(
            "cpu (candle, {threads} threads) first decode     {}",
            summary(&mut first)
        );
        println!(
            "cpu (candle, {threads} threads) further decodes  {}",
            summary(&mut further)
        );
    }

    // GPU encoder and decoder: the first decode includes the embedding's upload and layout.
    if let Some(gpu) = model.gpu() {
        let name = format!(
            "{}, {}",
            gpu.ctx().adapter_name(),
            gpu.ctx().precision().name()
        );
        let (emb, _) = pollster::block_on(gpu.embed(&img))?; // warm-up: pipelines, pool
        let mut encode = Vec::new();
        for _ in 0..runs {
            encode.push(timed(|| pollster::block_on(gpu.embed(&img)))?.1);
        }
        println!("gpu ({name}) encoder          {}", summary(&mut encode));
        let g = pollster::block_on(gpu.upload_embedding(&emb))?;
        let (_, dispatches) = pollster::block_on(gpu.decode_counted(&g, &prompt))?; // warm-up
        let (mut first, mut further) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            let g = pollster::block_on(gpu.upload_embedding(&emb))?;
            pollster::block_on(gpu.decode(&g, &prompt))?;
            first.push(t.elapsed().as_secs_f64() * 1e3);
            further.push(timed(|| pollster::block_on(gpu.decode(&g, &prompt)))?.1);
        }
        println!("gpu ({name}) first decode     {}", summary(&mut first));
        println!(
            "gpu ({name}) further decodes  {} ({dispatches} dispatches)",
            summary(&mut further)
        );
        println!(
            "gpu ({name}) storage buffers  {:.1} MB (weights, embedding and the largest pass's intermediates)",
            gpu.ctx().pool().allocated_bytes() as f64 / 1e6
        );
    }
    Ok(())
}

/// glibc's malloc returns freed memory above 128 KiB to the system (munmap, or a trim of the
/// heap) and takes it back on the next allocation, page faults included; it raises that bound
/// only after a large block is freed, so the encoder's speed depended on what the load had
/// freed: 10% slower with an f32 checkpoint than with an f16 one (whose conversions free large
/// blocks), the same weights either way. Keeping freed memory for the next encode removes the
/// difference and the faults (`websam bench --backend cpu`, the fixture image: encode 1881 /
/// 2026 ms with the f16 / f32 file before, 1670 / 1718 ms after). The browser's allocator never
/// returns memory, so the package is unaffected.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

#[derive(clap::Args)]
struct TrainArgs {
    /// Checkpoint to start from (its image encoder embeds images without a cached
    /// embedding).
    #[arg(long)]
    weights: PathBuf,
    /// COCO annotations to train on (RLE or polygons).
    #[arg(long)]
    coco: PathBuf,
    /// The folder of the annotations' images (`file_name` relative to it).
    #[arg(long)]
    images: PathBuf,
    /// Embeddings: `<image stem>.npy` read from here when present (as `websam embed` and
    /// the page write them), else computed and written here.
    #[arg(long)]
    embeddings: Option<PathBuf>,
    /// COCO annotations to measure on (images in --images): mean IoU after 1, 3 and 5
    /// clicks placed by the error-region rule, before training and every --eval-every steps.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Clicks per validation object (the IoU after each; clicks to reach 0.85 and 0.90
    /// count an object that never does as this many).
    #[arg(long, default_value_t = 5)]
    val_clicks: usize,
    /// Optimisation steps.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Objects per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Learning rate after the warm-up (AdamW, betas 0.9 / 0.999, weight decay 0.1).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Seed of the order of objects and of their prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the loss (and measure on --val) every this many steps (0: a tenth of the run).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// The tuned checkpoint (.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// A PNG of the curves: the training loss (red) and the validation IoU after 1 click
    /// (blue), over the steps.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[command(flatten)]
    engine: Engine,
}

/// The objects of a COCO file with their images' embeddings (read from the cache folder, or
/// computed with `encoder`, made on first need, and written there).
fn coco_objects(
    path: &Path,
    args: &TrainArgs,
    encoder: &mut Option<Predictor>,
    cache: &mut std::collections::HashMap<String, ImageEmbedding>,
) -> Result<Vec<(ImageEmbedding, Vec<u8>)>> {
    let coco = Coco::from_json(&std::fs::read(path).map_err(io_err(path))?)
        .map_err(|e| e.context(format_args!("{}", path.display())))?;
    // Every mask first: a bad annotation is an error before any image is embedded.
    let mut masks = Vec::new();
    for (image, annotation) in coco.objects()? {
        let frame = ImageFrame::new(image.height, image.width)?;
        let mask = annotation.segmentation.to_mask(image.height, image.width)?;
        if mask.iter().all(|&m| m == 0) {
            eprintln!(
                "annotation {} of {}: an empty mask, skipped",
                annotation.id, image.file_name
            );
            continue;
        }
        masks.push((image, frame, mask));
    }
    let mut objects = Vec::new();
    for (image, frame, mask) in masks {
        if !cache.contains_key(&image.file_name) {
            let stem = Path::new(&image.file_name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let npy = args
                .embeddings
                .as_ref()
                .map(|d| d.join(format!("{stem}.npy")));
            let embedding = match &npy {
                Some(p) if p.exists() => {
                    ImageEmbedding::from_npy_bytes(&std::fs::read(p).map_err(io_err(p))?, frame)
                        .map_err(|e| e.context(format_args!("{}", p.display())))?
                }
                _ => {
                    if encoder.is_none() {
                        *encoder = Some(load(&args.weights, &args.engine)?);
                    }
                    let sam = encoder.as_mut().expect("made above");
                    let img = RgbImage::open(args.images.join(&image.file_name))?;
                    if (img.height, img.width) != (image.height, image.width) {
                        return Err(Error::invalid(format!(
                            "{} is {}x{}, the annotations say {}x{}",
                            image.file_name, img.height, img.width, image.height, image.width
                        )));
                    }
                    let t = Instant::now();
                    pollster::block_on(sam.set_image(&img))?;
                    eprintln!(
                        "embedded {} in {:.1} s",
                        image.file_name,
                        t.elapsed().as_secs_f64()
                    );
                    let embedding = sam.embedding()?.clone();
                    if let Some(p) = &npy {
                        if let Some(dir) = p.parent() {
                            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                        }
                        write_npy(&embedding.features, p)?;
                    }
                    embedding
                }
            };
            cache.insert(image.file_name.clone(), embedding);
        }
        objects.push((cache[&image.file_name].clone(), mask));
    }
    Ok(objects)
}

/// Mean IoU after each of `clicks` clicks over `objects` ([`websam::train::eval`]).
fn click_score(
    sam: &Sam,
    objects: &[(ImageEmbedding, Vec<u8>)],
    clicks: usize,
) -> Result<ClickScore> {
    let per_object = objects
        .iter()
        .map(|(e, m)| click_ious(sam, e, m, clicks))
        .collect::<Result<Vec<_>>>()?;
    Ok(ClickScore::from_ious(&per_object))
}

fn train(args: TrainArgs) -> Result<()> {
    if args.val_clicks == 0 {
        return Err(Error::invalid("--val-clicks must be at least 1"));
    }
    let options = RunOptions {
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
    };
    let base = Weights::from_file(&args.weights)?;
    let (mut encoder, mut cache) = (None, std::collections::HashMap::new());
    let objects = coco_objects(&args.coco, &args, &mut encoder, &mut cache)?;
    // The cache holds each image once: the training set's images, then those only --val has.
    let train_images = cache.len();
    let val = match &args.val {
        Some(p) => coco_objects(p, &args, &mut encoder, &mut cache)?,
        None => Vec::new(),
    };
    drop(encoder);
    let objects: Vec<Object> = objects
        .into_iter()
        .map(|(embedding, mask)| {
            Ok(Object {
                truth: Truth::new(mask, embedding.frame)?,
                embedding,
            })
        })
        .collect::<Result<_>>()?;
    let mut run = Run::new(&base, objects, options)
        .map_err(|e| e.context(format_args!("{}", args.coco.display())))?;
    let every = if args.eval_every == 0 {
        args.steps.div_ceil(10)
    } else {
        args.eval_every
    };
    eprintln!(
        "training on {} objects ({} images), {} steps of {}; warm-up {} steps; validation: {} objects",
        run.objects(),
        train_images,
        args.steps,
        args.batch,
        run.schedule().warmup,
        val.len()
    );
    let score = |run: &Run| -> Result<Option<ClickScore>> {
        if val.is_empty() {
            return Ok(None);
        }
        Ok(Some(click_score(
            &Sam::new(&run.trainer().weights()?)?,
            &val,
            args.val_clicks,
        )?))
    };
    let show = |s: &ClickScore| {
        let at = |c| s.after(c).map_or("-".to_string(), |v| format!("{v:.4}"));
        format!(
            "val IoU after 1 / 3 / 5 clicks {} / {} / {}, clicks to 0.85 / 0.90 {:.2} / {:.2}",
            at(1),
            at(3),
            at(5),
            s.clicks_to_85,
            s.clicks_to_90
        )
    };
    let mut val_curve = Vec::new();
    if let Some(s) = score(&run)? {
        eprintln!("before training: {}", show(&s));
        val_curve.push((0.0, s.after(1).unwrap_or(0.0)));
    }
    let (mut loss_curve, mut window) = (Vec::new(), Vec::new());
    let t = Instant::now();
    while !run.is_done() {
        let lr = run.schedule().lr_at(run.steps_done());
        window.push(run.step()?);
        let step = run.steps_done();
        if step % every == 0 || run.is_done() {
            let mean = window.iter().sum::<f32>() / window.len() as f32;
            window.clear();
            loss_curve.push((step as f32, mean));
            let mut line = format!(
                "step {step}/{}: lr {lr:.2e}, loss {mean:.5}, {:.1} s",
                args.steps,
                t.elapsed().as_secs_f64()
            );
            if let Some(s) = score(&run)? {
                line.push_str(&format!("; {}", show(&s)));
                val_curve.push((step as f32, s.after(1).unwrap_or(0.0)));
            }
            eprintln!("{line}");
        }
    }
    let trainer = run.trainer();
    let bytes = trainer.checkpoint(&base)?.to_safetensors_bytes()?;
    std::fs::write(&args.out, bytes).map_err(io_err(&args.out))?;
    eprintln!("wrote {}", args.out.display());
    if let Some(p) = &args.plot {
        plot_curves(&[(&loss_curve, [200, 40, 40]), (&val_curve, [40, 80, 200])])
            .save(p)
            .map_err(|e| Error::invalid(format!("{}: {e}", p.display())))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// A line chart of curves `(x, y)`, each scaled to the chart's height by its own range (a
/// curve's values are in the command's output); the x axis shared. 640x360, white.
/// A curve's points `(x, y)` and its colour.
type Curve<'a> = (&'a [(f32, f32)], [u8; 3]);

fn plot_curves(curves: &[Curve<'_>]) -> image::RgbImage {
    use imageproc::drawing::draw_line_segment_mut;
    let (w, h, margin) = (640u32, 360u32, 20f32);
    let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let grey = image::Rgb([200, 200, 200]);
    let (x0, x1, y0, y1) = (margin, w as f32 - margin, h as f32 - margin, margin);
    draw_line_segment_mut(&mut img, (x0, y0), (x1, y0), grey);
    draw_line_segment_mut(&mut img, (x0, y0), (x0, y1), grey);
    let x_max = curves
        .iter()
        .flat_map(|(c, _)| c.iter().map(|p| p.0))
        .fold(1.0f32, f32::max);
    for (curve, color) in curves {
        let (lo, hi) = curve.iter().fold((f32::MAX, f32::MIN), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
        let span = if hi > lo { hi - lo } else { 1.0 };
        let at = |p: &(f32, f32)| {
            (
                x0 + (x1 - x0) * p.0 / x_max,
                y0 - (y0 - y1) * (p.1 - lo) / span,
            )
        };
        for pair in curve.windows(2) {
            draw_line_segment_mut(&mut img, at(&pair[0]), at(&pair[1]), image::Rgb(*color));
        }
    }
    img
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
