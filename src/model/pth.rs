//! PyTorch's zip checkpoints (`torch.save` since 1.6): a zip of stored entries holding
//! `<dir>/data.pkl`, a pickle of the state dict, and `<dir>/data/<key>`, one raw storage each.
//!
//! The pickle is built by candle's pickle reader, a stack machine that only builds data (no
//! code in a checkpoint is ever executed). Before it runs, [`check_pickle`] walks the opcodes
//! once with the same stack discipline but sizes in place of objects, and refuses what a
//! checkpoint never holds and what would hurt the reader: a global outside the tensor-rebuild
//! set (`os.system` through GLOBAL + REDUCE, say), an argument longer than the bytes left, a
//! nesting deeper than [`MAX_DEPTH`] (dropping such an object recurses once per level), or more
//! than [`MAX_NODES`] objects built (the reader copies memoised objects on every get, so a few
//! bytes can ask for exponentially many). The tensors are then read from the dict with checked
//! arithmetic: every size comes from the file and is proved against it before anything is
//! allocated.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::source::{check_range, read_range, ByteSource, SourceReader};
use crate::model::weights::{Stored, StoredTensor};

/// Deepest nesting of lists, tuples, dicts and calls a checkpoint's pickle may have (a state
/// dict is about 6 deep; a wrapped one a few more).
pub const MAX_DEPTH: usize = 100;

/// Most objects the pickle may build, memo copies included (MobileSAM's: about 25,000).
pub const MAX_NODES: u64 = 4_000_000;

/// The globals a checkpoint of tensors names: the dict type, the tensor and parameter
/// rebuilders, and the storage types. Anything else is refused by name.
const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "Tensor"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

fn bad(msg: impl Into<String>) -> Error {
    Error::format(msg)
}

/// What the checker keeps per stack entry in place of the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mark,
    List,
    Dict,
    /// The `collections.OrderedDict` global: calling it gives a dict.
    DictType,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Shadow {
    kind: Kind,
    depth: usize,
    nodes: u64,
}

impl Shadow {
    fn leaf(kind: Kind) -> Self {
        Shadow {
            kind,
            depth: 1,
            nodes: 1,
        }
    }

    fn parent(kind: Kind, children: &[Shadow]) -> Self {
        Shadow {
            kind,
            depth: 1 + children.iter().map(|c| c.depth).max().unwrap_or(0),
            nodes: 1 + children.iter().map(|c| c.nodes).sum::<u64>(),
        }
    }
}

fn check_depth(depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(bad(format!(
            "pickle nests deeper than {MAX_DEPTH} levels: not a checkpoint"
        )));
    }
    Ok(())
}

/// The opcode walk of [`check_pickle`].
struct Checker<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Shadow>,
    memo: HashMap<u32, Shadow>,
    built: u64,
}

impl<'a> Checker<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(bad(format!(
                "pickle: {what} at byte {} needs {n} bytes, {} are left",
                self.pos,
                self.data.len() - self.pos
            )));
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32_arg(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("pickle: a GLOBAL's name runs to the end of the data"))?;
        let line = self.take(n + 1, "GLOBAL")?;
        let line = &line[..n];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        std::str::from_utf8(line).map_err(|_| bad("pickle: a GLOBAL's name is not UTF-8"))
    }

    fn push(&mut self, s: Shadow) -> Result<()> {
        check_depth(s.depth)?;
        self.count(s.nodes)?;
        self.stack.push(s);
        Ok(())
    }

    /// Counts objects the reader builds (copies of memoised ones included).
    fn count(&mut self, nodes: u64) -> Result<()> {
        self.built = self.built.saturating_add(nodes);
        if self.built > MAX_NODES {
            return Err(bad(format!(
                "pickle builds more than {MAX_NODES} objects: not a checkpoint"
            )));
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<Shadow> {
        self.stack
            .pop()
            .ok_or_else(|| bad(format!("pickle: empty stack at byte {}", self.pos)))
    }

    fn pop_to_mark(&mut self) -> Result<Vec<Shadow>> {
        let at = self
            .stack
            .iter()
            .rposition(|s| s.kind == Kind::Mark)
            .ok_or_else(|| bad(format!("pickle: no MARK before byte {}", self.pos)))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    /// Adds `children` to the list or dict on top of the stack.
    fn extend_top(&mut self, kind: Kind, children: &[Shadow]) -> Result<()> {
        let pos = self.pos;
        let top = self
            .stack
            .last_mut()
            .filter(|t| t.kind == kind)
            .ok_or_else(|| bad(format!("pickle: no {kind:?} to add to at byte {pos}")))?;
        for c in children {
            top.depth = top.depth.max(c.depth + 1);
            top.nodes += c.nodes;
        }
        check_depth(top.depth)
    }

    fn memo_get(&mut self, id: u32) -> Result<()> {
        let s = *self
            .memo
            .get(&id)
            .ok_or_else(|| bad(format!("pickle: memo {id} read before it is written")))?;
        self.push(s)
    }

    fn memo_put(&mut self, id: u32) -> Result<()> {
        let top = *self
            .stack
            .last()
            .ok_or_else(|| bad("pickle: memo write on an empty stack"))?;
        self.count(top.nodes)?;
        self.memo.insert(id, top);
        Ok(())
    }

    fn run(&mut self) -> Result<()> {
        loop {
            let at = self.pos;
            let op = self.take(1, "opcode")?[0];
            match op {
                0x80 => {
                    self.take(1, "PROTO")?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    if !ALLOWED_GLOBALS.contains(&(module, name)) {
                        return Err(bad(format!(
                            "pickle names `{module}.{name}`, which is not part of a tensor \
                             checkpoint: refused (nothing in the file is run)"
                        )));
                    }
                    let kind = if (module, name) == ("collections", "OrderedDict") {
                        Kind::DictType
                    } else {
                        Kind::Other
                    };
                    self.push(Shadow::leaf(kind))?;
                }
                b'K' | b'M' | b'J' | b'G' => {
                    let n = match op {
                        b'K' => 1,
                        b'M' => 2,
                        b'J' => 4,
                        _ => 8,
                    };
                    self.take(n, "number")?;
                    self.push(Shadow::leaf(Kind::Other))?;
                }
                0x8a => {
                    let n = self.take(1, "LONG1")?[0] as usize;
                    if n > 8 {
                        return Err(bad(format!(
                            "pickle: a {n}-byte integer at byte {at} (checkpoints use at most 8)"
                        )));
                    }
                    self.take(n, "LONG1")?;
                    self.push(Shadow::leaf(Kind::Other))?;
                }
                b'X' => {
                    let n = self.u32_arg("BINUNICODE")? as usize;
                    self.take(n, "a string")?;
                    self.push(Shadow::leaf(Kind::Other))?;
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Shadow::parent(Kind::Other, &[id]))?;
                }
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.push(Shadow::parent(Kind::Other, &items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    self.push(Shadow::parent(Kind::Other, &items))?;
                }
                0x88 | 0x89 | b'N' | b')' => self.push(Shadow::leaf(Kind::Other))?,
                b'(' => self.push(Shadow::leaf(Kind::Mark))?,
                b']' => self.push(Shadow::leaf(Kind::List))?,
                b'}' => self.push(Shadow::leaf(Kind::Dict))?,
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(Kind::List, &[v])?;
                }
                b'e' => {
                    let items = self.pop_to_mark()?;
                    self.extend_top(Kind::List, &items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top(Kind::Dict, &[k, v])?;
                }
                b'u' | b'd' => {
                    let items = self.pop_to_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(bad(format!(
                            "pickle: odd number of dict items at byte {at}"
                        )));
                    }
                    if op == b'u' {
                        self.extend_top(Kind::Dict, &items)?;
                    } else {
                        self.push(Shadow::parent(Kind::Dict, &items))?;
                    }
                }
                b'b' => {
                    let args = self.pop()?;
                    let obj = self.pop()?;
                    let kind = if obj.kind == Kind::Dict && args.kind == Kind::Dict {
                        Kind::Dict
                    } else {
                        Kind::Other
                    };
                    self.push(Shadow::parent(kind, &[obj, args]))?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    if op == b'R' && callable.kind == Kind::DictType {
                        // The reader turns `OrderedDict()` into an empty dict.
                        self.push(Shadow::leaf(Kind::Dict))?;
                    } else {
                        self.push(Shadow::parent(Kind::Other, &[callable, args]))?;
                    }
                }
                // BINGET, LONG_BINGET, BINPUT, LONG_BINPUT: a 1- or 4-byte memo index.
                b'h' | b'j' | b'q' | b'r' => {
                    let id = if matches!(op, b'h' | b'q') {
                        self.take(1, "a memo index")?[0] as u32
                    } else {
                        self.u32_arg("a memo index")?
                    };
                    if matches!(op, b'h' | b'j') {
                        self.memo_get(id)?;
                    } else {
                        self.memo_put(id)?;
                    }
                }
                b'.' => {
                    if self.stack.is_empty() {
                        return Err(bad("pickle: STOP on an empty stack"));
                    }
                    return Ok(());
                }
                other => {
                    return Err(bad(format!(
                        "pickle: opcode 0x{other:02x} at byte {at} is not one a tensor \
                         checkpoint uses"
                    )))
                }
            }
        }
    }
}

/// Walks a pickle's opcodes without building anything: `Ok` when candle's reader may build
/// it safely (see the module's comment), else an error that says why.
pub fn check_pickle(data: &[u8]) -> Result<()> {
    Checker {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        built: 0,
    }
    .run()
}

/// Builds the object a pickle holds, after [`check_pickle`].
pub fn read_pickle(data: &[u8]) -> Result<Object> {
    check_pickle(data)?;
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut Cursor::new(data))
        .map_err(|e| bad(format!("pickle: {e}")))?;
    stack.finalize().map_err(|e| bad(format!("pickle: {e}")))
}

/// Largest value a size, stride or offset may take (2^48: far beyond any file).
const MAX_INDEX: i64 = 1 << 48;

/// A tensor as the pickle describes it: which storage, its dtype, and the view into it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The storage's entry name under `<dir>/data/`.
    pub storage: String,
    /// `None` for integer and boolean storages (counters, not weights).
    pub dtype: Option<DType>,
    pub elem_size: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

impl TensorRef {
    /// The number of bytes of storage the view reaches, checked against overflow.
    pub fn bytes_needed(&self) -> Option<usize> {
        if self.shape.contains(&0) {
            return Some(0);
        }
        let mut last = self.offset;
        for (d, s) in self.shape.iter().zip(&self.strides) {
            last = last.checked_add((d - 1).checked_mul(*s)?)?;
        }
        last.checked_add(1)?.checked_mul(self.elem_size)
    }

    /// The number of elements, checked against overflow.
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }
}

fn index(o: &Object, what: &str) -> Result<usize> {
    let v = match o {
        Object::Int(i) => *i as i64,
        Object::Long(i) => *i,
        other => return Err(bad(format!("{what} is {other:?}, not an integer"))),
    };
    if !(0..=MAX_INDEX).contains(&v) {
        return Err(bad(format!("{what} is {v}")));
    }
    Ok(v as usize)
}

fn indices(o: &Object, what: &str) -> Result<Vec<usize>> {
    match o {
        Object::Tuple(items) | Object::List(items) => {
            items.iter().map(|i| index(i, what)).collect()
        }
        other => Err(bad(format!("{what} is {other:?}, not a tuple"))),
    }
}

fn global(o: &Object) -> Option<(&str, &str)> {
    match o {
        Object::Class {
            module_name,
            class_name,
        } => Some((module_name, class_name)),
        _ => None,
    }
}

/// The tensor a state dict's value rebuilds: `Ok(None)` when the value is not a tensor
/// (metadata), an error when it is one whose description does not hold together.
pub fn tensor_ref(value: &Object) -> Result<Option<TensorRef>> {
    let Object::Reduce { callable, args } = value else {
        return Ok(None);
    };
    let Object::Tuple(args) = args.as_ref() else {
        return Ok(None);
    };
    match global(callable) {
        // `Parameter(tensor, requires_grad, hooks)`.
        Some(("torch._utils", "_rebuild_parameter")) => match args.first() {
            Some(inner) => tensor_ref(inner),
            None => Err(bad("_rebuild_parameter without a tensor")),
        },
        // `_rebuild_from_type_v2(func, type, args, state)`: `func(*args)` is the tensor.
        Some(("torch._tensor", "_rebuild_from_type_v2")) => match args.as_slice() {
            [func, _, Object::Tuple(inner), ..] => tensor_ref(&Object::Reduce {
                callable: Box::new(func.clone()),
                args: Box::new(Object::Tuple(inner.clone())),
            }),
            _ => Err(bad("_rebuild_from_type_v2 with unexpected arguments")),
        },
        // `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`.
        Some(("torch._utils", "_rebuild_tensor_v2")) => {
            let [storage, offset, size, stride, ..] = args.as_slice() else {
                return Err(bad("_rebuild_tensor_v2 with fewer than 4 arguments"));
            };
            let Object::PersistentLoad(storage) = storage else {
                return Err(bad("a tensor's storage is not a persistent reference"));
            };
            // ("storage", <storage type>, key, location, numel)
            let Object::Tuple(parts) = storage.as_ref() else {
                return Err(bad("a tensor's storage reference is not a tuple"));
            };
            let (Some(kind), Some(Object::Unicode(key))) = (parts.get(1), parts.get(2)) else {
                return Err(bad("a tensor's storage reference lacks its type or key"));
            };
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(bad(format!("storage key {key:?}")));
            }
            let (dtype, elem_size) = match global(kind) {
                Some(("torch", "FloatStorage")) => (Some(DType::F32), 4),
                Some(("torch", "DoubleStorage")) => (Some(DType::F64), 8),
                Some(("torch", "HalfStorage")) => (Some(DType::F16), 2),
                Some(("torch", "BFloat16Storage")) => (Some(DType::BF16), 2),
                Some(("torch", "LongStorage")) => (None, 8),
                Some(("torch", "IntStorage")) => (None, 4),
                Some(("torch", "ShortStorage")) => (None, 2),
                Some(("torch", "CharStorage" | "ByteStorage" | "BoolStorage")) => (None, 1),
                _ => return Err(bad(format!("storage type {kind:?}"))),
            };
            let shape = indices(size, "a tensor's size")?;
            let strides = indices(stride, "a tensor's stride")?;
            if shape.len() != strides.len() {
                return Err(bad(format!(
                    "a tensor has {} sizes and {} strides",
                    shape.len(),
                    strides.len()
                )));
            }
            let t = TensorRef {
                storage: key.clone(),
                dtype,
                elem_size,
                offset: index(offset, "a tensor's offset")?,
                shape,
                strides,
            };
            if t.bytes_needed().is_none() || t.numel().is_none() {
                return Err(bad(format!(
                    "a tensor's size {:?} and stride {:?} overflow",
                    t.shape, t.strides
                )));
            }
            Ok(Some(t))
        }
        _ => Ok(None),
    }
}

/// Finds the state dict in the unpickled object: at the top, or under `model` /
/// `state_dict` as training scripts often save it.
fn state_dict_entries(obj: Object) -> Result<Vec<(Object, Object)>> {
    // An OrderedDict with attributes pickles as a BUILD around a REDUCE; the dict is inside.
    let obj = match obj {
        Object::Build { callable, args } => match *callable {
            Object::Reduce { .. } => *args,
            other => other,
        },
        other => other,
    };
    let Object::Dict(entries) = obj else {
        return Err(bad("the pickle does not hold a dict of tensors"));
    };
    let holds_tensors = entries
        .iter()
        .any(|(_, v)| matches!(v, Object::Reduce { .. } | Object::Build { .. }));
    if !holds_tensors {
        for wrapper in ["model", "state_dict"] {
            if let Some((_, inner)) = entries
                .iter()
                .find(|(k, _)| matches!(k, Object::Unicode(s) if s == wrapper))
            {
                return state_dict_entries(inner.clone());
            }
        }
    }
    Ok(entries)
}

/// Indexes a PyTorch zip checkpoint: every floating-point tensor's key, dtype, shape and the
/// zip entry its storage is in, each checked against the file (entries stored, inside the file,
/// views inside their storage) before anything but the pickle is read. Integer buffers
/// (`num_batches_tracked`) are left out. The tensors are read when the model takes them
/// ([`StoredTensor::read`]): their entry's CRC checked, the view copied out.
pub fn index_pth(src: &dyn ByteSource) -> Result<HashMap<String, StoredTensor>> {
    let file_len = src.len();
    let zerr = |e: zip::result::ZipError| bad(format!("PyTorch zip: {e}"));
    let mut zip = zip::ZipArchive::new(SourceReader::new(src)).map_err(zerr)?;
    let pkl_name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl"))
        .map(|n| n.into_owned())
        .ok_or_else(|| bad("zip archive holds no data.pkl: not a PyTorch checkpoint"))?;
    let dir = pkl_name.strip_suffix("data.pkl").unwrap_or("").to_owned();
    let pickle = read_entry(&mut zip, &pkl_name, file_len)?;
    let entries = state_dict_entries(read_pickle(&pickle)?)?;
    drop(pickle);

    let mut storages: HashMap<String, Entry> = HashMap::new();
    let mut tensors = HashMap::new();
    let budget = file_len.saturating_mul(2);
    let mut used = 0u64;
    let mut stored = 0u64;
    for (name, value) in &entries {
        let Object::Unicode(key) = name else {
            continue;
        };
        let t = match tensor_ref(value) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => return Err(e.context(format_args!("tensor `{key}`"))),
        };
        let Some(dtype) = t.dtype else {
            continue;
        };
        let numel = t.numel().unwrap_or(usize::MAX);
        let size = numel.saturating_mul(t.elem_size) as u64;
        used = used.saturating_add(size);
        if used > budget {
            return Err(bad(format!(
                "tensor `{key}`: the tensors need more than twice the file's {file_len} bytes \
                 (views overlapping far beyond their storage)"
            )));
        }
        if !storages.contains_key(&t.storage) {
            let path = format!("{dir}data/{}", t.storage);
            let entry = locate_entry(&mut zip, &path, file_len)
                .map_err(|e| e.context(format_args!("tensor `{key}`")))?;
            // Distinct entries of a zip hold distinct bytes: more than the file in all means
            // entries that overlap, which no checkpoint writer makes.
            stored = stored.saturating_add(entry.len);
            if stored > file_len {
                return Err(bad(format!(
                    "tensor `{key}`: the storages claim more than the file's {file_len} bytes"
                )));
            }
            storages.insert(t.storage.clone(), entry);
        }
        let entry = storages[&t.storage];
        let needed = t.bytes_needed().unwrap_or(usize::MAX) as u64;
        if needed > entry.len {
            return Err(bad(format!(
                "tensor `{key}` needs {needed} bytes of storage but the file holds {} \
                 (truncated?)",
                entry.len
            )));
        }
        tensors.insert(
            key.clone(),
            StoredTensor {
                dtype,
                shape: t.shape.clone(),
                at: Stored::PthStorage {
                    offset: entry.offset,
                    len: entry.len,
                    crc32: entry.crc32,
                    view: t,
                },
            },
        );
    }
    if tensors.is_empty() {
        return Err(bad("checkpoint holds no floating-point tensors"));
    }
    Ok(tensors)
}

/// Where a stored zip entry's bytes lie in the file.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    len: u64,
    crc32: u32,
}

/// Finds a storage entry: stored (PyTorch never compresses them), lying inside the file.
fn locate_entry(
    zip: &mut zip::ZipArchive<SourceReader<'_>>,
    name: &str,
    file_len: u64,
) -> Result<Entry> {
    let entry = zip.by_name(name).map_err(|e| bad(format!("{name}: {e}")))?;
    if entry.compression() != zip::CompressionMethod::Stored {
        return Err(bad(format!(
            "{name} is compressed ({}); PyTorch stores tensors uncompressed",
            entry.compression()
        )));
    }
    let (len, crc32) = (entry.size(), entry.crc32());
    let offset = entry.data_start().ok_or_else(|| {
        bad(format!(
            "{name}: the zip does not say where its data starts"
        ))
    })?;
    check_range(offset, len, file_len).map_err(|e| e.context(name))?;
    Ok(Entry { offset, len, crc32 })
}

/// One zip entry's bytes (the pickle). Entries of a checkpoint are stored (not compressed), so
/// none can be longer than the file: a header that claims otherwise is refused before anything
/// is read.
fn read_entry(
    zip: &mut zip::ZipArchive<SourceReader<'_>>,
    name: &str,
    file_len: u64,
) -> Result<Vec<u8>> {
    let entry = zip.by_name(name).map_err(|e| bad(format!("{name}: {e}")))?;
    let claimed = entry.size();
    if claimed > file_len || entry.compressed_size() > file_len {
        return Err(bad(format!(
            "{name} claims {claimed} bytes in a {file_len}-byte file"
        )));
    }
    let mut data = Vec::with_capacity(claimed as usize);
    entry
        .take(claimed)
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("{name}: {e}")))?;
    Ok(data)
}

/// A storage entry's bytes as read for one tensor, checked against the entry's CRC-32 as the
/// zip reader checks the pickle's: a flipped bit in the weights is an error, not a wrong mask.
pub(crate) fn read_storage(
    src: &dyn ByteSource,
    offset: u64,
    len: u64,
    crc32: u32,
) -> Result<Vec<u8>> {
    let bytes = read_range(src, offset, len)?;
    let got = crc32fast::hash(&bytes);
    if got != crc32 {
        return Err(bad(format!(
            "a storage's CRC-32 is {got:08x}, the zip says {crc32:08x} (corrupted file)"
        )));
    }
    Ok(bytes)
}

/// The contiguous tensor a (shape, strides, offset) view of `storage` holds: general strides,
/// so views saved from transposes load right. The view was checked to lie inside `storage`.
pub(crate) fn strided_tensor(storage: &[u8], dtype: DType, t: &TensorRef) -> Result<Tensor> {
    let elem = t.elem_size;
    let numel = t.numel().unwrap_or(0);
    let contiguous = {
        let mut expect = 1usize;
        t.shape.iter().zip(&t.strides).rev().all(|(&d, &s)| {
            let ok = d == 1 || s == expect;
            expect = expect.saturating_mul(d);
            ok
        })
    };
    let bytes: Vec<u8> = if numel == 0 {
        Vec::new()
    } else if contiguous {
        storage[t.offset * elem..(t.offset + numel) * elem].to_vec()
    } else {
        let mut out = Vec::with_capacity(numel * elem);
        let mut idx = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let off = t.offset
                + idx
                    .iter()
                    .zip(&t.strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.extend_from_slice(&storage[off * elem..(off + 1) * elem]);
            for d in (0..t.shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    };
    Ok(Tensor::from_raw_buffer(
        &bytes,
        dtype,
        &t.shape,
        &Device::Cpu,
    )?)
}
