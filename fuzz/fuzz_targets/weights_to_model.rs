//! The weight-to-model mapping: a valid safetensors container whose keys, shapes and dtypes
//! are the real model's with random changes (keys dropped or renamed, shapes and ranks changed,
//! dtypes changed, values not finite, extra keys), loaded with `Weights::from_bytes` and built
//! with `Sam::new`. It must give the model or an error, never a panic.
//!
//! The real keys and shapes come from tests/fixtures/mobile_sam.pth (MobileSAM, 439 tensors),
//! read once. A random shape has at most 65,536 elements, and a container at most 1M values
//! (later tensors are left out past that): building the model copies and checks every value,
//! and under ASan and coverage instrumentation that costs about 1.6 us a value here (the full
//! decoder, 4M values, took 6.5 s a run; the full MobileSAM 13 s). The real keys come in the
//! order `Sam::new` asks for them (prompt encoder, mask decoder, image encoder), so that the
//! cap cuts the image encoder first.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use safetensors::{tensor::TensorView, Dtype};
use websam::model::sam::Sam;
use websam::model::weights::Weights;

/// Elements of one randomly shaped tensor, at most.
const MAX_RANDOM_ELEMENTS: usize = 1 << 16;
/// Elements in the whole container, at most.
const MAX_TOTAL_ELEMENTS: usize = 1 << 20;

/// The fixture's (key, shape): prompt_encoder.*, mask_decoder.*, then the rest, each sorted.
fn real_keys() -> &'static [(String, Vec<usize>)] {
    static KEYS: OnceLock<Vec<(String, Vec<usize>)>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/mobile_sam.pth"
        );
        let w = Weights::from_file(path).expect("tests/fixtures/mobile_sam.pth");
        let mut keys: Vec<(String, Vec<usize>)> = w
            .keys()
            .into_iter()
            .map(|k| (k.to_owned(), w.shape_of(k).expect("a key listed")))
            .collect();
        let rank = |k: &str| match k {
            k if k.starts_with("prompt_encoder.") => 0,
            k if k.starts_with("mask_decoder.") => 1,
            _ => 2,
        };
        keys.sort_by_key(|(k, _)| rank(k));
        keys
    })
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum DT {
    F32,
    F16,
    BF16,
    F64,
    I64,
}

impl DT {
    fn dtype(self) -> Dtype {
        match self {
            DT::F32 => Dtype::F32,
            DT::F16 => Dtype::F16,
            DT::BF16 => Dtype::BF16,
            DT::F64 => Dtype::F64,
            DT::I64 => Dtype::I64,
        }
    }

    /// One value's little-endian bytes.
    fn encode(self, v: f64) -> Vec<u8> {
        match self {
            DT::F32 => (v as f32).to_le_bytes().to_vec(),
            DT::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
            DT::BF16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
            DT::F64 => v.to_le_bytes().to_vec(),
            DT::I64 => (v as i64).to_le_bytes().to_vec(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Fill {
    Zero,
    Small,
    One,
    Big,
    NaN,
    Inf,
}

impl Fill {
    fn value(self) -> f64 {
        match self {
            Fill::Zero => 0.0,
            Fill::Small => 0.01,
            Fill::One => 1.0,
            Fill::Big => 1e30,
            Fill::NaN => f64::NAN,
            Fill::Inf => f64::NEG_INFINITY,
        }
    }
}

/// Which of the real keys the container starts from.
#[derive(Arbitrary, Debug)]
enum Base {
    /// prompt_encoder.* and mask_decoder.* (a decoder-only checkpoint: fast).
    Decoder,
    /// Every key (the full MobileSAM, about 10M values).
    All,
    /// prompt_encoder.* only.
    PromptEncoder,
    /// Nothing: keys come from the ops.
    Empty,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Removes a key (indices wrap around the real key list).
    Drop(u16),
    /// Adds a real key with its real shape.
    Add(u16),
    /// A new shape: rank `dims.len() % 6`, each dim `d % 17`.
    Shape(u16, Vec<u8>),
    /// One dim moved by `delta` (at least 0).
    Dim(u16, u8, i8),
    /// One dim fewer (false) or one more of size `n % 4` (true).
    Rank(u16, bool, u8),
    Dtype(u16, DT),
    Fill(u16, Fill),
    /// The key renamed: a suffix appended, or a character cut.
    Rename(u16, String),
    Truncate(u16, u8),
    /// Any key, any small shape.
    Extra(String, Vec<u8>, DT),
}

#[derive(Arbitrary, Debug)]
struct Input {
    base: Base,
    dtype: DT,
    ops: Vec<Op>,
}

struct Entry {
    key: String,
    shape: Vec<usize>,
    dtype: DT,
    fill: Fill,
}

/// Elements of a shape (saturating: ranks can be grown without bound by the ops).
fn elements(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
}

fn small_shape(dims: &[u8]) -> Vec<usize> {
    let mut shape: Vec<usize> = dims
        .iter()
        .take(dims.len() % 6)
        .map(|&d| d as usize % 17)
        .collect();
    while elements(&shape) > MAX_RANDOM_ELEMENTS {
        shape.pop();
    }
    shape
}

fuzz_target!(|input: Input| {
    let real = real_keys();
    let mut entries: Vec<Entry> = real
        .iter()
        .filter(|(k, _)| match input.base {
            Base::All => true,
            Base::Decoder => k.starts_with("prompt_encoder.") || k.starts_with("mask_decoder."),
            Base::PromptEncoder => k.starts_with("prompt_encoder."),
            Base::Empty => false,
        })
        .map(|(k, s)| Entry {
            key: k.clone(),
            shape: s.clone(),
            dtype: input.dtype,
            fill: Fill::Small,
        })
        .collect();
    let find = |entries: &mut Vec<Entry>, i: u16| -> Option<usize> {
        let key = &real[i as usize % real.len()].0;
        entries.iter().position(|e| &e.key == key)
    };
    for op in &input.ops {
        match op {
            Op::Drop(i) => {
                if let Some(j) = find(&mut entries, *i) {
                    entries.remove(j);
                }
            }
            Op::Add(i) => {
                if find(&mut entries, *i).is_none() {
                    let (k, s) = &real[*i as usize % real.len()];
                    entries.push(Entry {
                        key: k.clone(),
                        shape: s.clone(),
                        dtype: input.dtype,
                        fill: Fill::Small,
                    });
                }
            }
            Op::Shape(i, dims) => {
                if let Some(j) = find(&mut entries, *i) {
                    entries[j].shape = small_shape(dims);
                }
            }
            Op::Dim(i, d, delta) => {
                if let Some(j) = find(&mut entries, *i) {
                    let e = &mut entries[j];
                    if !e.shape.is_empty() {
                        let d = *d as usize % e.shape.len();
                        let mut shape = e.shape.clone();
                        shape[d] = (shape[d] as isize + *delta as isize).max(0) as usize;
                        if elements(&shape) <= MAX_RANDOM_ELEMENTS.max(elements(&e.shape)) {
                            e.shape = shape;
                        }
                    }
                }
            }
            Op::Rank(i, grow, n) => {
                if let Some(j) = find(&mut entries, *i) {
                    let e = &mut entries[j];
                    if *grow {
                        e.shape.push(*n as usize % 4);
                    } else {
                        e.shape.pop();
                    }
                }
            }
            Op::Dtype(i, dt) => {
                if let Some(j) = find(&mut entries, *i) {
                    entries[j].dtype = *dt;
                }
            }
            Op::Fill(i, fill) => {
                if let Some(j) = find(&mut entries, *i) {
                    entries[j].fill = *fill;
                }
            }
            Op::Rename(i, suffix) => {
                if let Some(j) = find(&mut entries, *i) {
                    entries[j].key.push_str(suffix);
                }
            }
            Op::Truncate(i, n) => {
                if let Some(j) = find(&mut entries, *i) {
                    let key = &mut entries[j].key;
                    let cut = key
                        .char_indices()
                        .nth(*n as usize % key.len().max(1))
                        .map_or(0, |(c, _)| c);
                    key.truncate(cut);
                }
            }
            Op::Extra(key, dims, dt) => {
                entries.push(Entry {
                    key: key.clone(),
                    shape: small_shape(dims),
                    dtype: *dt,
                    fill: Fill::Small,
                });
            }
        }
    }
    // safetensors refuses duplicate names: the last one wins, as a dict would.
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<&Entry> = entries
        .iter()
        .rev()
        .filter(|e| seen.insert(e.key.clone()))
        .collect();
    kept.reverse();
    let mut total = 0;
    kept.retain(|e| {
        total = elements(&e.shape).saturating_add(total);
        total <= MAX_TOTAL_ELEMENTS
    });
    let data: Vec<Vec<u8>> = kept
        .iter()
        .map(|e| {
            let n = elements(&e.shape);
            e.dtype.encode(e.fill.value()).repeat(n)
        })
        .collect();
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .zip(&data)
        .map(|(e, bytes)| {
            let view = TensorView::new(e.dtype.dtype(), e.shape.clone(), bytes)
                .expect("a consistent view");
            (e.key.clone(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, None).expect("serializable");
    // What a checkpoint goes through: the container sniffed and read, then the model built.
    if let Ok(weights) = Weights::from_bytes(&bytes) {
        let _ = Sam::new(&weights);
    }
});
