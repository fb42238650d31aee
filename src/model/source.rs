//! Where a checkpoint's bytes are read from, a range at a time: the loaders index a file (its
//! header, its pickle) and read each tensor only when the model takes it, so a checkpoint is
//! never held whole beside the model built from it. Sources: bytes in memory ([`Vec<u8>`]), a
//! file (natively, [`FileSource`]), and in the browser a JavaScript `Uint8Array` outside the
//! wasm module's memory (`crate::web`).

use std::fmt::Debug;
use std::io::{Read, Seek, SeekFrom};

use crate::error::{Error, Result};

/// `Send + Sync` natively, where models and their weights may cross threads; nothing on wasm32,
/// whose JavaScript values never do.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSendSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> MaybeSendSync for T {}
#[cfg(target_arch = "wasm32")]
pub trait MaybeSendSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSendSync for T {}

/// Random access to a checkpoint's bytes.
pub trait ByteSource: MaybeSendSync + Debug {
    /// The length in bytes.
    fn len(&self) -> u64;

    /// Whether the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`; the range lies inside the source (callers check with
    /// [`check_range`]).
    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// `offset..offset + len` inside a source of `total` bytes, or an error saying the file is
/// shorter than its index claims.
pub fn check_range(offset: u64, len: u64, total: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= total => Ok(()),
        _ => Err(Error::format(format!(
            "bytes {offset}..{} lie past the end of the {total}-byte file (truncated?)",
            offset.saturating_add(len)
        ))),
    }
}

/// Reads `len` bytes at `offset`, checked against the source's length.
pub fn read_range(src: &dyn ByteSource, offset: u64, len: u64) -> Result<Vec<u8>> {
    check_range(offset, len, src.len())?;
    let len = usize::try_from(len)
        .map_err(|_| Error::format(format!("a {len}-byte range does not fit in memory")))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| Error::format(format!("cannot allocate {len} bytes to read a tensor")))?;
    buf.resize(len, 0);
    src.read_into(offset, &mut buf)?;
    Ok(buf)
}

impl ByteSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, ByteSource::len(self))?;
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

/// A checkpoint file, kept open and read a range at a time (natively: a wasm32 module has no
/// files, and opening one is an error there).
#[derive(Debug)]
pub struct FileSource {
    path: String,
    len: u64,
    file: std::sync::Mutex<std::fs::File>,
}

impl FileSource {
    /// Opens `path` for reading.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Ok(Self {
            path: path.display().to_string(),
            len,
            file: std::sync::Mutex::new(file),
        })
    }
}

impl ByteSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        // A poisoned lock only means another reader panicked; the file itself is fine.
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.read_exact(buf).map_err(io)
    }
}

/// `Read + Seek` over a source, for readers that want a stream (the zip directory).
pub struct SourceReader<'a> {
    src: &'a dyn ByteSource,
    pos: u64,
}

impl<'a> SourceReader<'a> {
    pub fn new(src: &'a dyn ByteSource) -> Self {
        Self { src, pos: 0 }
    }
}

impl Read for SourceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.src.len().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.src
            .read_into(self.pos, &mut buf[..n])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SourceReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.src.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let Some(target) = target else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            ));
        };
        self.pos = target;
        Ok(target)
    }
}
