//! Weight loading: official PyTorch checkpoints (`.pth`/`.pt`: a zip holding a pickle and raw
//! storages) and safetensors, in f32, f16 or bf16, from bytes or a file. Every tensor is
//! converted to f32 on load; the model asks for tensors by their official key with the shape
//! it expects, and a missing or mis-shaped key is an error naming the key and both shapes.
//! Hugging Face transformers' `SamModel` checkpoints (in either container) are renamed to the
//! official keys as they are read ([`crate::model::hf`]); errors then name the HF key too.
//!
//! The pickle is read by candle's pickle reader, a stack machine that only builds data, after
//! a check of its opcodes ([`crate::model::pth`]): no code from the checkpoint is ever executed.
//! Every value the model takes is checked to be finite: a NaN or an infinity in a checkpoint is
//! an error naming the tensor, not a model that answers with NaN masks and plausible scores.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::hf;

/// The tensors of a checkpoint, by official key, as f32 on the CPU.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// Read from a Hugging Face `SamModel` checkpoint (its keys renamed on load).
    hugging_face: bool,
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
        if bytes.len() < 8 {
            return Err(Error::format(format!(
                "file is {} bytes long, too short for a checkpoint",
                bytes.len()
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
        if header_len > 0 && header_len < bytes.len() as u64 && bytes.get(8) == Some(&b'{') {
            return Ok(WeightFormat::Safetensors);
        }
        Err(Error::format(
            "not a PyTorch checkpoint (.pth/.pt zip) nor a safetensors file",
        ))
    }
}

impl Weights {
    /// Reads a checkpoint from memory, telling its format from its first bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        match WeightFormat::detect(bytes)? {
            WeightFormat::PyTorchZip => Self::from_pth_bytes(bytes),
            WeightFormat::Safetensors => Self::from_safetensors_bytes(bytes),
        }
    }

    /// Reads a checkpoint file (`.pth`, `.pt` or `.safetensors`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|e| e.context(path.display()))
    }

    /// Builds weights from named tensors (converted to f32 on the CPU); Hugging Face
    /// `SamModel` names are renamed as in a file.
    pub fn from_tensors(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Result<Self> {
        let mut map = HashMap::new();
        for (k, t) in tensors {
            let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            map.insert(k, t);
        }
        Self::from_map(map)
    }

    /// The one place every loader ends: a Hugging Face `SamModel` checkpoint, told by its keys,
    /// gets the official keys ([`hf::to_official`]); any other is kept as it is.
    fn from_map(mut tensors: HashMap<String, Tensor>) -> Result<Self> {
        if !hf::is_hf_checkpoint(tensors.keys().map(String::as_str)) {
            return Ok(Self {
                tensors,
                hugging_face: false,
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
            hugging_face: true,
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
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(format!("safetensors: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F64 => DType::F64,
                // Integer tensors (counters such as `num_batches_tracked`) are never model weights.
                _ => continue,
            };
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?
                .to_dtype(DType::F32)?;
            tensors.insert(name, t);
        }
        Self::from_map(tensors)
    }

    /// Reads a PyTorch zip checkpoint held in memory: a state dict at the top level, or under
    /// `model` / `state_dict` as training scripts often save it (see [`crate::model::pth`]).
    pub fn from_pth_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_map(crate::model::pth::read_pth(bytes)?)
    }

    /// The tensor under `key`, checked against the shape the model expects and to hold only
    /// finite values.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(key).ok_or_else(|| Error::MissingWeight {
            key: self.shown(key),
            expected: shape.to_vec(),
        })?;
        if t.dims() != shape {
            return Err(Error::WeightShape {
                key: self.shown(key),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
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
        Ok(t.clone())
    }

    /// The shape of the tensor under `key`, if any.
    pub fn shape_of(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).map(|t| t.dims().to_vec())
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
        self.tensors.insert(key.into(), t.to_dtype(DType::F32)?);
        Ok(())
    }

    /// Removes a tensor, returning it.
    pub fn remove(&mut self, key: &str) -> Option<Tensor> {
        self.tensors.remove(key)
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
            let t = &self.tensors[key];
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            data.push((key.to_owned(), t.dims().to_vec(), bytes));
        }
        let views = data
            .iter()
            .map(|(k, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (k.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::format(format!("safetensors: {e}")))?;
        safetensors::serialize(views, None).map_err(|e| Error::format(format!("safetensors: {e}")))
    }
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
