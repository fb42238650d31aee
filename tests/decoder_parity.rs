//! Prompt encoder + mask decoder parity against the PyTorch goldens in `tests/fixtures`
//! (made by `tools/golden/make_fixtures.py` with the official segment-anything code).
//!
//! Only the cases in the 1024 frame (`orig_size` [1024, 1024]) are checked here: their
//! coordinates go to the prompt encoder as given, the predictor's transform being the
//! identity. The other cases need the coordinate transform and belong to the predictor's tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use websam::model::config::SamConfig;
use websam::model::mask_decoder::MaskDecoder;
use websam::model::prompt_encoder::PromptEncoder;
use websam::model::weights::Weights;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// Max abs difference allowed on the low-res logits and the IoU predictions.
const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    let path = Path::new(FIXTURES).join(name);
    assert!(
        path.exists(),
        "fixture {} is missing: make it with `/work/pyenv/bin/python tools/golden/make_fixtures.py`",
        path.display()
    );
    path
}

fn npy(name: &str) -> Tensor {
    let path = fixture(name);
    Tensor::read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max abs diff")
}

/// A decoder case of `cases.json`, batched as `SamPredictor.predict` batches it (B = 1).
struct Case {
    name: String,
    points: Option<(Tensor, Tensor)>,
    boxes: Option<Tensor>,
    mask_input: Option<Tensor>,
    multimask: bool,
    low_res_logits: Tensor,
    iou: Tensor,
}

fn tensor_f32(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &candle_core::Device::Cpu).expect("tensor")
}

/// The cases whose prompts are in the 1024 frame.
fn frame_1024_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("cases.json")).expect("cases.json");
    let json = Json::parse(&text);
    let cases = json.get("cases").array();
    let mut out = Vec::new();
    for c in cases {
        let orig: Vec<f32> = c.get("orig_size").floats();
        if orig != [1024.0, 1024.0] {
            continue;
        }
        let points = c.get("points").opt().map(|p| {
            let rows = p.array();
            let coords: Vec<f32> = rows.iter().flat_map(|r| r.floats()).collect();
            let labels = c.get("labels").floats();
            (
                tensor_f32(&coords, &[1, rows.len(), 2]),
                tensor_f32(&labels, &[1, rows.len()]),
            )
        });
        let boxes = c.get("box").opt().map(|b| tensor_f32(&b.floats(), &[1, 4]));
        let mask_input = c.get("mask_input").opt().map(|m| {
            // Saved as [1, 256, 256]; the predictor adds the batch dim.
            npy(m.str()).unsqueeze(0).expect("mask input")
        });
        out.push(Case {
            name: c.get("name").str().to_owned(),
            points,
            boxes,
            mask_input,
            multimask: c.get("multimask").bool(),
            low_res_logits: npy(c.get("low_res_logits").str())
                .unsqueeze(0)
                .expect("logits"),
            iou: npy(c.get("iou").str()).unsqueeze(0).expect("iou"),
        });
    }
    out
}

fn check_parity(weights_file: &str) {
    let weights = Weights::from_file(fixture(weights_file)).expect("weights");
    let cfg = SamConfig::mobile_sam();
    let prompt_encoder = PromptEncoder::new(&cfg.prompt_encoder, &weights.pp("prompt_encoder"))
        .expect("prompt encoder");
    let mask_decoder =
        MaskDecoder::new(&cfg.mask_decoder, &weights.pp("mask_decoder")).expect("mask decoder");
    let embedding = npy("embedding.npy");
    let image_pe = prompt_encoder.get_dense_pe().expect("dense pe");

    let cases = frame_1024_cases();
    assert!(!cases.is_empty(), "cases.json lists no 1024-frame case");
    let mut failures = Vec::new();
    for case in &cases {
        let points = case.points.as_ref().map(|(c, l)| (c, l));
        let (sparse, dense) = prompt_encoder
            .forward(points, case.boxes.as_ref(), case.mask_input.as_ref())
            .expect("prompt encoder forward");
        let (low_res, iou) = mask_decoder
            .forward(&embedding, &image_pe, &sparse, &dense, case.multimask)
            .expect("mask decoder forward");
        let d_logits = max_abs_diff(&low_res, &case.low_res_logits);
        let d_iou = max_abs_diff(&iou, &case.iou);
        println!(
            "{weights_file} {:>18}: low-res logits {d_logits:.2e}, iou {d_iou:.2e}",
            case.name
        );
        if d_logits > TOLERANCE || d_iou > TOLERANCE {
            failures.push(format!("{}: logits {d_logits:e}, iou {d_iou:e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{weights_file}: over {TOLERANCE:e}: {failures:?}"
    );
}

/// The full MobileSAM checkpoint, f16, as PyTorch saves it.
#[test]
fn decoder_matches_pytorch_pth_f16() {
    check_parity("mobile_sam.pth");
}

/// The decoder-only safetensors, bf16 (same values: the fixture weights are exact in both).
#[test]
fn decoder_matches_pytorch_safetensors_bf16() {
    check_parity("sam_decoder.safetensors");
}

/// Just enough JSON for `cases.json` (the crate has no JSON dependency).
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    fn parse(text: &str) -> Json {
        let bytes = text.as_bytes();
        let mut pos = 0;
        let value = Self::value(bytes, &mut pos);
        Self::skip_ws(bytes, &mut pos);
        assert_eq!(pos, bytes.len(), "trailing characters in JSON");
        value
    }

    fn skip_ws(b: &[u8], pos: &mut usize) {
        while *pos < b.len() && b[*pos].is_ascii_whitespace() {
            *pos += 1;
        }
    }

    fn expect(b: &[u8], pos: &mut usize, lit: &str) {
        assert!(
            b[*pos..].starts_with(lit.as_bytes()),
            "JSON: expected {lit}"
        );
        *pos += lit.len();
    }

    fn value(b: &[u8], pos: &mut usize) -> Json {
        Self::skip_ws(b, pos);
        match b[*pos] {
            b'n' => {
                Self::expect(b, pos, "null");
                Json::Null
            }
            b't' => {
                Self::expect(b, pos, "true");
                Json::Bool(true)
            }
            b'f' => {
                Self::expect(b, pos, "false");
                Json::Bool(false)
            }
            b'"' => Json::Str(Self::string(b, pos)),
            b'[' => {
                *pos += 1;
                let mut items = Vec::new();
                loop {
                    Self::skip_ws(b, pos);
                    if b[*pos] == b']' {
                        *pos += 1;
                        break;
                    }
                    items.push(Self::value(b, pos));
                    Self::skip_ws(b, pos);
                    if b[*pos] == b',' {
                        *pos += 1;
                    }
                }
                Json::Arr(items)
            }
            b'{' => {
                *pos += 1;
                let mut map = BTreeMap::new();
                loop {
                    Self::skip_ws(b, pos);
                    if b[*pos] == b'}' {
                        *pos += 1;
                        break;
                    }
                    let key = Self::string(b, pos);
                    Self::skip_ws(b, pos);
                    Self::expect(b, pos, ":");
                    map.insert(key, Self::value(b, pos));
                    Self::skip_ws(b, pos);
                    if b[*pos] == b',' {
                        *pos += 1;
                    }
                }
                Json::Obj(map)
            }
            _ => {
                let start = *pos;
                while *pos < b.len()
                    && matches!(b[*pos], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    *pos += 1;
                }
                let s = std::str::from_utf8(&b[start..*pos]).expect("utf8");
                Json::Num(
                    s.parse()
                        .unwrap_or_else(|_| panic!("JSON: bad number {s:?}")),
                )
            }
        }
    }

    /// A string without escapes (all that `cases.json` holds).
    fn string(b: &[u8], pos: &mut usize) -> String {
        Self::expect(b, pos, "\"");
        let start = *pos;
        while b[*pos] != b'"' {
            assert_ne!(b[*pos], b'\\', "JSON: escapes are not supported");
            *pos += 1;
        }
        *pos += 1;
        String::from_utf8(b[start..*pos - 1].to_vec()).expect("utf8")
    }

    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(map) => map
                .get(key)
                .unwrap_or_else(|| panic!("JSON: no key {key:?}")),
            _ => panic!("JSON: {key:?} looked up in a non-object"),
        }
    }

    fn opt(&self) -> Option<&Json> {
        match self {
            Json::Null => None,
            v => Some(v),
        }
    }

    fn array(&self) -> &[Json] {
        match self {
            Json::Arr(items) => items,
            v => panic!("JSON: expected an array, got {v:?}"),
        }
    }

    fn floats(&self) -> Vec<f32> {
        self.array()
            .iter()
            .map(|v| match v {
                Json::Num(x) => *x as f32,
                v => panic!("JSON: expected a number, got {v:?}"),
            })
            .collect()
    }

    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            v => panic!("JSON: expected a string, got {v:?}"),
        }
    }

    fn bool(&self) -> bool {
        match self {
            Json::Bool(x) => *x,
            v => panic!("JSON: expected a bool, got {v:?}"),
        }
    }
}
