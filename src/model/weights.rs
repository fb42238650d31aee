//! Weight loading: official PyTorch checkpoints (`.pth`/`.pt`: a zip holding a pickle and raw
//! storages) and safetensors, in f32, f16 or bf16, from bytes, a file or any [`ByteSource`].
//! Loading indexes the file (every tensor's key, dtype, shape and bytes, checked against the
//! file's length); a tensor is read, converted to f32 and checked when the model takes it, so
//! the checkpoint is never held whole beside the model: a file source keeps only the open file,
//! the browser's keeps the fetched bytes outside the wasm module's memory. The model asks for
//! tensors by their official key with the shape it expects, and a missing or mis-shaped key is
//! an error naming the key and both shapes.
//! Hugging Face transformers' `SamModel` checkpoints (in either container) are renamed to the
//! official keys as they are read ([`crate::model::hf`]); errors then name the HF key too.
//!
//! The pickle is read by candle's pickle reader, a stack machine that only builds data, after
//! a check of its opcodes ([`crate::model::pth`]): no code from the checkpoint is ever executed.
//! Every value the model takes is checked to be finite: a NaN or an infinity in a checkpoint is
//! an error naming the tensor, not a model that answers with NaN masks and plausible scores.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::hf;
use crate::model::pth::{self, TensorRef};
use crate::model::source::{check_range, read_range, ByteSource};

/// The tensors of a checkpoint, by official key: an index into its bytes, each tensor read as
/// f32 on the CPU when asked for.
#[derive(Debug, Clone)]
pub struct Weights {
    tensors: HashMap<String, StoredTensor>,
    source: Arc<dyn ByteSource>,
    /// Read from a Hugging Face `SamModel` checkpoint (its keys renamed on load).
    hugging_face: bool,
    /// A safetensors file's `__metadata__` (strings by key); empty for other files.
    metadata: HashMap<String, String>,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            tensors: HashMap::new(),
            source: Arc::new(Vec::new()),
            hugging_face: false,
            metadata: HashMap::new(),
        }
    }
}

/// One tensor of a checkpoint: its dtype in the file, its shape, and where its values are.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub(crate) at: Stored,
}

/// Where a tensor's values are.
#[derive(Debug, Clone)]
pub(crate) enum Stored {
    /// Contiguous little-endian values at `offset` of the source (safetensors).
    Contiguous { offset: u64 },
    /// A view into a PyTorch storage: the zip entry at `offset`, `len` bytes, with its CRC.
    PthStorage {
        offset: u64,
        len: u64,
        crc32: u32,
        view: TensorRef,
    },
    /// Already in memory (tensors given by the caller), f32.
    Held(Tensor),
}

impl StoredTensor {
    /// The number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Reads the tensor from `src`, in f32.
    fn read(&self, src: &dyn ByteSource) -> Result<Tensor> {
        let t = match &self.at {
            Stored::Held(t) => return Ok(t.clone()),
            Stored::Contiguous { offset } => {
                let len = (self.numel() * self.dtype.size_in_bytes()) as u64;
                let bytes = read_range(src, *offset, len)?;
                Tensor::from_raw_buffer(&bytes, self.dtype, &self.shape, &Device::Cpu)?
            }
            Stored::PthStorage {
                offset,
                len,
                crc32,
                view,
            } => {
                let storage = pth::read_storage(src, *offset, *len, *crc32)?;
                pth::strided_tensor(&storage, self.dtype, view)?
            }
        };
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// Which container a weight file uses, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// PyTorch's zip checkpoint (`torch.save` since 1.6).
    PyTorchZip,
    /// safetensors: an 8-byte header length, a JSON header, raw data.
    Safetensors,
}

impl WeightFormat {
    /// Sniffs the container from the first bytes; an error when it is neither.
    pub fn detect(bytes: &[u8]) -> Result<Self> {
        Self::detect_head(&bytes[..bytes.len().min(16)], bytes.len() as u64)
    }

    /// Sniffs the container from the first bytes of a file of `len` bytes.
    fn detect_head(bytes: &[u8], len: u64) -> Result<Self> {
        if len < 8 || bytes.len() < 8 {
            return Err(Error::format(format!(
                "file is {len} bytes long, too short for a checkpoint"
            )));
        }
        if bytes.starts_with(b"PK\x03\x04") {
            return Ok(WeightFormat::PyTorchZip);
        }
        // Legacy (pre-1.6) torch.save files start with a pickle protocol marker.
        if bytes[0] == 0x80 && bytes.get(1).is_some_and(|p| (2..=5).contains(p)) {
            return Err(Error::format(
                "legacy (non-zip) PyTorch checkpoint; re-save it with torch.save in PyTorch >= 1.6 or convert it to safetensors",
            ));
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if header_len > 0 && header_len < len && bytes.get(8) == Some(&b'{') {
            return Ok(WeightFormat::Safetensors);
        }
        Err(Error::format(
            "not a PyTorch checkpoint (.pth/.pt zip) nor a safetensors file",
        ))
    }
}

impl Weights {
    /// Reads a checkpoint from memory, telling its format from its first bytes. The bytes are
    /// copied once into the weights (see [`Weights::from_vec`] to hand them over instead).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_vec(bytes.to_vec())
    }

    /// Reads a checkpoint held in a `Vec`, which the weights keep and read tensors from.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self> {
        Self::from_source(Arc::new(bytes))
    }

    /// Reads a checkpoint file (`.pth`, `.pt` or `.safetensors`), kept open: tensors are read
    /// from it as the model takes them.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let source = crate::model::source::FileSource::open(path)?;
        Self::from_source(Arc::new(source)).map_err(|e| e.context(path.display()))
    }

    /// Indexes the checkpoint in `source`, telling its format from its first bytes.
    pub fn from_source(source: Arc<dyn ByteSource>) -> Result<Self> {
        let mut head = vec![0u8; source.len().min(16) as usize];
        source.read_into(0, &mut head)?;
        match WeightFormat::detect_head(&head, source.len())? {
            WeightFormat::PyTorchZip => Self::indexed_by(source, pth::index_pth),
            WeightFormat::Safetensors => Self::safetensors(source),
        }
    }

    /// A safetensors file's tensors and its `__metadata__`.
    fn safetensors(source: Arc<dyn ByteSource>) -> Result<Self> {
        let mut w = Self::indexed_by(source, index_safetensors)?;
        w.metadata = safetensors_header(w.source.as_ref())?
            .0
            .metadata()
            .clone()
            .unwrap_or_default();
        Ok(w)
    }

    /// The value under `key` in a safetensors file's `__metadata__`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Weights over `source`, indexed by one container's reader.
    fn indexed_by(
        source: Arc<dyn ByteSource>,
        index: fn(&dyn ByteSource) -> Result<HashMap<String, StoredTensor>>,
    ) -> Result<Self> {
        let tensors = index(source.as_ref())?;
        Self::from_index(tensors, source)
    }

    /// Builds weights from named tensors (converted to f32 on the CPU); Hugging Face
    /// `SamModel` names are renamed as in a file.
    pub fn from_tensors(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Result<Self> {
        let mut map = HashMap::new();
        for (k, t) in tensors {
            map.insert(k, held(t)?);
        }
        Self::from_index(map, Arc::new(Vec::new()))
    }

    /// The one place every loader ends: a Hugging Face `SamModel` checkpoint, told by its keys,
    /// gets the official keys ([`hf::to_official`]); any other is kept as it is.
    fn from_index(
        mut tensors: HashMap<String, StoredTensor>,
        source: Arc<dyn ByteSource>,
    ) -> Result<Self> {
        if !hf::is_hf_checkpoint(tensors.keys().map(String::as_str)) {
            return Ok(Self {
                tensors,
                source,
                hugging_face: false,
                metadata: HashMap::new(),
            });
        }
        let renames = hf::to_official(tensors.keys().map(String::as_str))?;
        let mut official = HashMap::with_capacity(renames.len());
        for (hf_key, key) in renames {
            // `to_official` answers with keys of this map only.
            if let Some(t) = tensors.remove(&hf_key) {
                official.insert(key, t);
            }
        }
        Ok(Self {
            tensors: official,
            source,
            hugging_face: true,
            metadata: HashMap::new(),
        })
    }

    /// Whether the checkpoint was a Hugging Face `SamModel` one (its keys now official).
    pub fn is_hugging_face(&self) -> bool {
        self.hugging_face
    }

    /// `key` as errors show it: with its HF name when the checkpoint used those.
    fn shown(&self, key: &str) -> String {
        match hf::hf_name(key) {
            Some(hf_key) if self.hugging_face => format!("{hf_key} (official {key})"),
            _ => key.to_owned(),
        }
    }

    /// Reads a safetensors file held in memory.
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<Self> {
        Self::safetensors(Arc::new(bytes.to_vec()))
    }

    /// Reads a PyTorch zip checkpoint held in memory: a state dict at the top level, or under
    /// `model` / `state_dict` as training scripts often save it (see [`crate::model::pth`]).
    pub fn from_pth_bytes(bytes: &[u8]) -> Result<Self> {
        Self::indexed_by(Arc::new(bytes.to_vec()), pth::index_pth)
    }

    /// The bytes the model's tensors take once read as f32: what a CPU model holds.
    pub fn f32_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.numel() as u64 * 4).sum()
    }

    /// The dtype the file stores the tensor under `key` in.
    pub fn stored_dtype(&self, key: &str) -> Option<DType> {
        self.tensors.get(key).map(|t| t.dtype)
    }

    /// The tensor under `key`, checked against the shape the model expects and to hold only
    /// finite values.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let stored = self.tensors.get(key).ok_or_else(|| Error::MissingWeight {
            key: self.shown(key),
            expected: shape.to_vec(),
        })?;
        if stored.shape != shape {
            return Err(Error::WeightShape {
                key: self.shown(key),
                expected: shape.to_vec(),
                found: stored.shape.clone(),
            });
        }
        let t = self.read(key, stored)?;
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::format(format!(
                "weight `{}` holds {} (element {i} of {}): a checkpoint with NaN or infinite \
                 values is refused",
                self.shown(key),
                values[i],
                values.len()
            )));
        }
        Ok(t)
    }

    /// The values of `stored` (the tensor under `key`), as they are in the file, in f32.
    fn read(&self, key: &str, stored: &StoredTensor) -> Result<Tensor> {
        stored
            .read(self.source.as_ref())
            .map_err(|e| e.context(format_args!("weight `{}`", self.shown(key))))
    }

    /// The shape of the tensor under `key`, if any.
    pub fn shape_of(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).map(|t| t.shape.clone())
    }

    /// Whether a tensor is stored under `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Whether any key starts with `prefix` (e.g. `"image_encoder."`).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors.keys().any(|k| k.starts_with(prefix))
    }

    /// All keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// Number of tensors held.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor is held.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Adds or replaces a tensor (converted to f32).
    pub fn insert(&mut self, key: impl Into<String>, t: Tensor) -> Result<()> {
        self.tensors.insert(key.into(), held(t)?);
        Ok(())
    }

    /// Removes a tensor; whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        self.tensors.remove(key).is_some()
    }

    /// A view that prefixes every key with `prefix.`.
    pub fn pp(&self, prefix: impl AsRef<str>) -> WeightPath<'_> {
        WeightPath {
            weights: self,
            prefix: prefix.as_ref().to_owned(),
        }
    }

    /// Serializes to safetensors (f32), e.g. to convert a `.pth` checkpoint.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(self.tensors.len());
        for key in self.keys() {
            let stored = &self.tensors[key];
            let values = self.read(key, stored)?.flatten_all()?.to_vec1::<f32>()?;
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            data.push((key.to_owned(), stored.shape.clone(), bytes));
        }
        let views = data
            .iter()
            .map(|(k, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (k.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::format(format!("safetensors: {e}")))?;
        safetensors::serialize(
            views,
            (!self.metadata.is_empty()).then(|| self.metadata.clone()),
        )
        .map_err(|e| Error::format(format!("safetensors: {e}")))
    }
}

/// A caller's tensor, kept in memory as f32.
fn held(t: Tensor) -> Result<StoredTensor> {
    let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    Ok(StoredTensor {
        dtype: DType::F32,
        shape: t.dims().to_vec(),
        at: Stored::Held(t),
    })
}

/// Largest safetensors header read (the format's own limit: 100 MB).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Indexes a safetensors file: its JSON header, validated by the safetensors crate (offsets in
/// order, each tensor's bytes matching its shape), and the data's length against the file's.
/// A safetensors file's header, checked against the file's size, and where its data starts.
fn safetensors_header(src: &dyn ByteSource) -> Result<(safetensors::tensor::Metadata, u64)> {
    let bad = |msg: String| Error::format(format!("safetensors: {msg}"));
    let mut n = [0u8; 8];
    check_range(0, 8, src.len()).map_err(|e| bad(e.to_string()))?;
    src.read_into(0, &mut n)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_SAFETENSORS_HEADER || n > src.len() - 8 {
        return Err(bad(format!(
            "a {n}-byte header in a {}-byte file",
            src.len()
        )));
    }
    let header = read_range(src, 8, n)?;
    let meta: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let data_start = 8 + n;
    let data_len = meta.data_len() as u64;
    if data_start + data_len != src.len() {
        return Err(bad(format!(
            "the header describes {data_len} bytes of data, the file holds {}",
            src.len() - data_start
        )));
    }
    Ok((meta, data_start))
}

fn index_safetensors(src: &dyn ByteSource) -> Result<HashMap<String, StoredTensor>> {
    let (meta, data_start) = safetensors_header(src)?;
    let mut tensors = HashMap::new();
    for (name, info) in meta.tensors() {
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            // Integer tensors (counters such as `num_batches_tracked`) are never model weights.
            _ => continue,
        };
        tensors.insert(
            name,
            StoredTensor {
                dtype,
                shape: info.shape.clone(),
                at: Stored::Contiguous {
                    offset: data_start + info.data_offsets.0 as u64,
                },
            },
        );
    }
    Ok(tensors)
}

/// A prefix into [`Weights`], as the reference's module nesting (`mask_decoder.transformer`).
#[derive(Debug, Clone)]
pub struct WeightPath<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> WeightPath<'a> {
    /// The view one level down: `pp("layers").pp(0)` reads `<prefix>.layers.0.*`.
    pub fn pp(&self, name: impl ToString) -> WeightPath<'a> {
        let name = name.to_string();
        let prefix = if self.prefix.is_empty() {
            name
        } else {
            format!("{}.{}", self.prefix, name)
        };
        WeightPath {
            weights: self.weights,
            prefix,
        }
    }

    /// The full key of `name` under this prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// The tensor `<prefix>.<name>`, checked against `shape`.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        self.weights.get(&self.key(name), shape)
    }

    /// Whether `<prefix>.<name>` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.key(name))
    }

    /// The weights this view reads from.
    pub fn weights(&self) -> &'a Weights {
        self.weights
    }
}
