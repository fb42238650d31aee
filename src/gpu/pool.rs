//! Storage buffers recycled by byte size. A forward pass allocates the same sizes every time,
//! so after the first run every buffer comes from the pool. A buffer goes back to the pool
//! when the last [`crate::gpu::GpuTensor`] holding it drops; reusing it for a later op of the
//! same recording is safe because WebGPU orders the dispatches of a pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Buffer sizes are rounded up to this many bytes, so near sizes share buffers.
const SIZE_GRANULE: u64 = 256;

type Free = Arc<Mutex<HashMap<u64, Vec<wgpu::Buffer>>>>;

/// The pool of free storage buffers.
#[derive(Debug, Clone, Default)]
pub struct BufferPool {
    free: Free,
}

/// A storage buffer that returns to its pool when dropped.
#[derive(Debug)]
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    size: u64,
    pool: Weak<Mutex<HashMap<u64, Vec<wgpu::Buffer>>>>,
}

impl PooledBuffer {
    /// The wgpu buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("present until drop")
    }

    /// Size in bytes (rounded up to the pool's granule).
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let (Some(buffer), Some(pool)) = (self.buffer.take(), self.pool.upgrade()) {
            if let Ok(mut free) = pool.lock() {
                free.entry(self.size).or_default().push(buffer);
            }
        }
    }
}

impl BufferPool {
    /// A storage buffer of at least `bytes` bytes (usable as copy source and destination).
    pub fn get(&self, device: &wgpu::Device, bytes: u64) -> PooledBuffer {
        let size = bytes.max(4).div_ceil(SIZE_GRANULE) * SIZE_GRANULE;
        let reused = self
            .free
            .lock()
            .ok()
            .and_then(|mut free| free.get_mut(&size).and_then(Vec::pop));
        let buffer = reused.unwrap_or_else(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("websam.storage"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        PooledBuffer {
            buffer: Some(buffer),
            size,
            pool: Arc::downgrade(&self.free),
        }
    }

    /// Number of free buffers held (for tests and diagnostics).
    pub fn free_count(&self) -> usize {
        self.free
            .lock()
            .map(|f| f.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}
