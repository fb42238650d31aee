//! The values that cross from JS, through the conversion code the wasm surface (src/web.rs)
//! runs on them: `predict`'s flat prompt arrays against the image's frame, `generateStart`'s
//! options JSON, `setImage`'s RGBA bytes with their claimed size, `setEmbedding`'s floats (SAM 2's
//! high-resolution maps too, in a stretched frame), `predict`'s mask clean-up areas.
//! Nothing is capped here: a claimed size must be refused by the code itself.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use websam::amg::{generate_crop_boxes, GeneratorOptions};
use websam::image::{ImageFrame, MaskCleanup, RgbImage};
use websam::model::sam::{ImageEmbedding, Prompt, PromptTensors};

/// A JSON value for one option: mostly numbers near and far from the valid ranges.
#[derive(Arbitrary, Debug)]
enum Value {
    Small(u8),
    /// `2^k` and `2^k - 1`: sizes at the edges of integer widths (usize is 32 bits in wasm).
    Pow2(u8, bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    /// `n / 2^k`: fractions, and huge values as floats (`1e300`).
    Ratio(i32, u8),
    Null,
    Bool(bool),
    Str(String),
    /// `pointGrids`: grids of points.
    Grids(Vec<Vec<(Coord, Coord)>>),
}

#[derive(Arbitrary, Debug)]
enum Coord {
    Unit(u8),
    Float(f64),
}

impl Coord {
    fn json(&self) -> String {
        match self {
            Coord::Unit(v) => format!("{}", *v as f64 / 255.0),
            Coord::Float(v) => json_f64(*v),
        }
    }
}

/// JSON has no NaN or infinity: those become strings (refused by the parser, as JS's
/// `JSON.stringify` would give `null`).
fn json_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{v:?}")
    } else {
        format!("\"{v}\"")
    }
}

impl Value {
    fn json(&self) -> String {
        match self {
            Value::Small(v) => v.to_string(),
            Value::Pow2(k, minus_one) => {
                let v = 1u128 << (k % 65);
                (v - *minus_one as u128).to_string()
            }
            Value::Uint(v) => v.to_string(),
            Value::Int(v) => v.to_string(),
            Value::Float(v) => json_f64(*v),
            Value::Ratio(n, k) => json_f64(
                *n as f64 / 2f64.powi(*k as i32 % 64) * if *k >= 128 { 1e300 } else { 1.0 },
            ),
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Str(s) => format!("{s:?}"),
            Value::Grids(g) => {
                let grids: Vec<String> = g
                    .iter()
                    .map(|grid| {
                        let pts: Vec<String> = grid
                            .iter()
                            .map(|(x, y)| format!("[{},{}]", x.json(), y.json()))
                            .collect();
                        format!("[{}]", pts.join(","))
                    })
                    .collect();
                format!("[{}]", grids.join(","))
            }
        }
    }
}

const OPTION_NAMES: &[&str] = &[
    "pointsPerSide",
    "pointGrids",
    "pointsPerBatch",
    "predIouThresh",
    "stabilityScoreThresh",
    "stabilityScoreOffset",
    "boxNmsThresh",
    "cropNLayers",
    "cropNmsThresh",
    "cropOverlapRatio",
    "cropNPointsDownscaleFactor",
    "minMaskRegionArea",
];

#[derive(Arbitrary, Debug)]
enum Options {
    /// `{"name": value, ...}`: one of the real names, or an unknown one.
    Fields(Vec<(u8, Value)>),
    /// Any text.
    Raw(String),
}

impl Options {
    fn json(&self) -> String {
        match self {
            Options::Raw(s) => s.clone(),
            Options::Fields(fields) => {
                let body: Vec<String> = fields
                    .iter()
                    .map(|(name, value)| {
                        let name = OPTION_NAMES
                            .get(*name as usize % (OPTION_NAMES.len() + 1))
                            .copied()
                            .unwrap_or("somethingElse");
                        format!("{name:?}:{}", value.json())
                    })
                    .collect();
                format!("{{{}}}", body.join(","))
            }
        }
    }
}

/// `mask_input`: mostly the right length (256 * 256), a few values set.
#[derive(Arbitrary, Debug)]
enum MaskInput {
    Full { fill: f32, set: Vec<(u16, f32)> },
    Any(Vec<f32>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// The image the prompt is for (`setImage`'s `width`, `height`: u32 in JS).
    width: u32,
    height: u32,
    points: Option<Vec<f32>>,
    bbox: Option<Vec<f32>>,
    mask_input: Option<MaskInput>,
    multimask: bool,
    options: Options,
    /// `setImage(rgba, width, height)`: the byte count need not match the claim.
    rgba_width: u32,
    rgba_height: u32,
    rgba: Vec<u8>,
    /// `setEmbedding(data, width, height)`: data of any length.
    embedding: Option<Vec<f32>>,
    /// `setEmbedding`'s SAM 2 high-resolution maps (any lengths) and a SAM 2 model's frame.
    high_res: Option<(Vec<f32>, Vec<f32>)>,
    sam2: bool,
    /// `predict`'s `maxHoleArea`, `maxSprinkleArea`.
    max_hole_area: f64,
    max_sprinkle_area: f64,
}

fuzz_target!(|input: Input| {
    let options = input.options.json();
    // FUZZ_PRINT=1 shows what a reproducer holds (to write its regression test).
    if std::env::var_os("FUZZ_PRINT").is_some() {
        eprintln!("{input:#?}\noptions JSON: {options}");
    }
    let (h, w) = (input.height as usize, input.width as usize);
    let frame = if input.sam2 {
        ImageFrame::stretched(h, w)
    } else {
        ImageFrame::new(h, w)
    };

    // predict(points, box, maskInput, multimask)
    let mask_input = input.mask_input.map(|m| match m {
        MaskInput::Full { fill, set } => {
            let mut v = vec![fill; 256 * 256];
            for (i, x) in set {
                v[i as usize] = x;
            }
            v
        }
        MaskInput::Any(v) => v,
    });
    // The mask clean-up of predict(..., maxHoleArea, maxSprinkleArea), on the mask input's
    // plane when it is one.
    if let Ok(cleanup) = MaskCleanup::new(input.max_hole_area, input.max_sprinkle_area) {
        if let Some(plane) = mask_input.as_ref().filter(|m| m.len() == 256 * 256) {
            assert_eq!(cleanup.apply(plane).len(), plane.len());
        }
    }
    if let (Ok(prompt), Ok(frame)) = (
        Prompt::from_flat(input.points, input.bbox, mask_input, input.multimask),
        frame.as_ref(),
    ) {
        if let Ok(t) = PromptTensors::new(&prompt, frame) {
            // Every coordinate lands in the encoder's 1024 frame.
            if let Some((coords, _)) = &t.points {
                let v = coords.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(v.iter().all(|c| c.is_finite()), "point coords {v:?}");
            }
        }
    }

    // generateStart(options): parsed, checked, then the grids and crops MaskGenerator::new
    // derives from them for an image of this frame.
    if let Ok(opts) = GeneratorOptions::from_json(&options) {
        if let Ok(grids) = opts.point_grids() {
            assert!(grids.len() > opts.crop_n_layers);
            if let Ok(frame) = &frame {
                for (bbox, layer) in
                    generate_crop_boxes(frame.original, opts.crop_n_layers, opts.crop_overlap_ratio)
                {
                    let _ = bbox;
                    let _ = grids[layer].len().div_ceil(opts.points_per_batch);
                }
            }
        }
    }

    // setImage(rgba, width, height)
    if let Ok(img) = RgbImage::from_rgba(
        input.rgba_width as usize,
        input.rgba_height as usize,
        &input.rgba,
    ) {
        assert_eq!(img.data.len() * 4, input.rgba.len() * 3);
    }

    // setEmbedding(data, width, height, highRes0, highRes1), as src/web.rs builds it.
    if let (Some(data), Ok(frame)) = (input.embedding, frame) {
        let tensor = |data: Vec<f32>, shape: [usize; 4]| {
            let n = data.len();
            let t = candle_core::Tensor::from_vec(data, n, &candle_core::Device::Cpu).ok()?;
            Some(if n == shape.iter().product::<usize>() {
                t.reshape(shape.as_slice()).unwrap()
            } else {
                t
            })
        };
        if let Some(t) = tensor(data, [1, 256, 64, 64]) {
            match input.high_res {
                None => {
                    let _ = ImageEmbedding::new(t, frame);
                }
                Some((s0, s1)) => {
                    if let (Some(s0), Some(s1)) =
                        (tensor(s0, [1, 32, 256, 256]), tensor(s1, [1, 64, 128, 128]))
                    {
                        let _ = ImageEmbedding::sam2(t, [s0, s1], frame);
                    }
                }
            }
        }
    }
});
