//! Storage buffers recycled by byte size. A request takes the smallest free buffer that holds
//! it (up to twice its size: kernels bind whole buffers but read and write only their
//! tensor's extent); a forward pass asks for the same sizes every time, so after the first run
//! every buffer comes from the pool.
//!
//! A buffer goes back to the pool when the last [`crate::gpu::GpuTensor`] holding it drops,
//! also while a recording that uses it is still being built: a later op of the same recording
//! may then write it, which is safe because the dispatches of a pass run in order. What must
//! not happen is a CPU upload (`queue.write_buffer`, which runs before the next submitted
//! commands) into a buffer that an op of the unsubmitted recording still reads. So buffers
//! freed while a recording is open are kept apart ("pending"): kernel outputs of that
//! recording may take them (while it is the only one open), uploads may not; they join the
//! other free buffers once no recording is open.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use crate::error::Result;
use crate::gpu::context::{check_buffer_size, BufferKind};

/// Buffer sizes are rounded up to this many bytes, so near sizes share buffers.
const SIZE_GRANULE: u64 = 256;

/// A free buffer is reused for requests down to this fraction of its size.
const MAX_SLACK: u64 = 2;

/// What a buffer is wanted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Written by a kernel of the recording being built.
    Output,
    /// Written from the CPU by `queue.write_buffer`.
    Upload,
}

#[derive(Debug, Default)]
struct Inner {
    /// Free buffers by size; no entry holds an empty list.
    free: BTreeMap<u64, Vec<wgpu::Buffer>>,
    /// Freed while a recording was open (same layout as `free`).
    pending: BTreeMap<u64, Vec<wgpu::Buffer>>,
    /// Recordings begun and not yet submitted or dropped.
    open: usize,
    /// Bytes of every buffer created (none is destroyed while the pool lives).
    allocated: u64,
    /// Bytes of the largest buffer created.
    largest: u64,
}

/// The smallest buffer of `map` that holds `wanted` bytes without more than `MAX_SLACK` times
/// as many, taken out of `map`.
fn take(map: &mut BTreeMap<u64, Vec<wgpu::Buffer>>, wanted: u64) -> Option<(wgpu::Buffer, u64)> {
    let size = *map
        .range(wanted..=wanted.saturating_mul(MAX_SLACK))
        .next()?
        .0;
    let list = map.get_mut(&size)?;
    let buffer = list.pop()?;
    if list.is_empty() {
        map.remove(&size);
    }
    Some((buffer, size))
}

/// The pool of free storage buffers.
#[derive(Debug, Clone, Default)]
pub struct BufferPool {
    inner: Arc<Mutex<Inner>>,
}

/// A storage buffer that returns to its pool when dropped.
#[derive(Debug)]
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    size: u64,
    pool: Weak<Mutex<Inner>>,
}

impl PooledBuffer {
    /// The wgpu buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("present until drop")
    }

    /// Size in bytes (at least the size asked for, rounded up to the pool's granule).
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let (Some(buffer), Some(pool)) = (self.buffer.take(), self.pool.upgrade()) {
            if let Ok(mut inner) = pool.lock() {
                let list = if inner.open > 0 {
                    &mut inner.pending
                } else {
                    &mut inner.free
                };
                list.entry(self.size).or_default().push(buffer);
            }
        }
    }
}

/// A recording open on a pool: see the module docs. Ends when dropped (after the submit).
#[derive(Debug)]
pub struct OpenRecording {
    pool: BufferPool,
}

impl Drop for OpenRecording {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.pool.inner.lock() {
            inner.open = inner.open.saturating_sub(1);
            if inner.open == 0 {
                let pending = std::mem::take(&mut inner.pending);
                for (size, buffers) in pending {
                    inner.free.entry(size).or_default().extend(buffers);
                }
            }
        }
    }
}

impl BufferPool {
    /// A storage buffer of at least `bytes` bytes (usable as copy source and destination), or
    /// an error naming the limit of `limits` (the device's) it would exceed.
    pub fn get(
        &self,
        device: &wgpu::Device,
        limits: &wgpu::Limits,
        bytes: u64,
        usage: Use,
    ) -> Result<PooledBuffer> {
        let bytes = bytes.max(4).next_multiple_of(4);
        check_buffer_size(limits, bytes, BufferKind::Storage)?;
        let mut wanted = bytes.div_ceil(SIZE_GRANULE) * SIZE_GRANULE;
        // Rounding must not take a buffer that fits over a limit that is not a granule multiple.
        if check_buffer_size(limits, wanted, BufferKind::Storage).is_err() {
            wanted = bytes;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // A pending buffer is taken only while one recording is open: then it was freed by
        // that recording, whose earlier ops run before the op that writes it. With several
        // open, it may belong to another one, submitted after this one, whose uploads (run at
        // the first submit) and reads it would overwrite.
        let reused = match usage {
            Use::Output if inner.open == 1 => {
                take(&mut inner.pending, wanted).or_else(|| take(&mut inner.free, wanted))
            }
            Use::Output | Use::Upload => take(&mut inner.free, wanted),
        };
        let (buffer, size) = reused.unwrap_or_else(|| {
            inner.allocated += wanted;
            inner.largest = inner.largest.max(wanted);
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("websam.storage"),
                size: wanted,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (buffer, wanted)
        });
        Ok(PooledBuffer {
            buffer: Some(buffer),
            size,
            pool: Arc::downgrade(&self.inner),
        })
    }

    /// Marks a recording open until the returned guard drops.
    pub fn open_recording(&self) -> OpenRecording {
        if let Ok(mut inner) = self.inner.lock() {
            inner.open += 1;
        }
        OpenRecording { pool: self.clone() }
    }

    /// Bytes of storage buffers created so far: the weights, embeddings and kept per-image
    /// work, plus what the largest pass needed at once for its intermediates (they are
    /// recycled, not freed), i.e. the engine's peak storage memory.
    pub fn allocated_bytes(&self) -> u64 {
        self.inner.lock().map(|i| i.allocated).unwrap_or(0)
    }

    /// Bytes of the largest storage buffer created so far (the largest tensor, rounded up to
    /// the pool's granule): what `maxStorageBufferBindingSize` must hold.
    pub fn largest_bytes(&self) -> u64 {
        self.inner.lock().map(|i| i.largest).unwrap_or(0)
    }

    /// Number of free buffers held (for tests and diagnostics).
    pub fn free_count(&self) -> usize {
        self.inner
            .lock()
            .map(|i| {
                i.free
                    .values()
                    .chain(i.pending.values())
                    .map(Vec::len)
                    .sum()
            })
            .unwrap_or(0)
    }
}
