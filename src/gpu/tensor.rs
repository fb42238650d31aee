//! A contiguous f32 tensor in a pooled GPU storage buffer.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::pool::{PooledBuffer, Use};

/// A contiguous, row-major f32 tensor on the GPU. Cloning shares the buffer.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    buffer: Arc<PooledBuffer>,
    shape: Vec<usize>,
}

impl GpuTensor {
    /// An uninitialised tensor from the pool (a kernel writes it before anything reads it).
    pub fn empty(ctx: &GpuContext, shape: &[usize]) -> Result<Self> {
        Self::alloc(ctx, shape, Use::Output)
    }

    /// A tensor from the pool for `usage`.
    // Not Send in the browser, where wgpu's buffers are JS objects; see `GpuContext::new`.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    fn alloc(ctx: &GpuContext, shape: &[usize], usage: Use) -> Result<Self> {
        let bytes = byte_size(shape)?;
        let max = ctx.limits().max_storage_buffer_binding_size;
        if bytes > max {
            return Err(Error::gpu(format!(
                "tensor {shape:?} needs {bytes} bytes, over the device's storage binding limit of {max}"
            )));
        }
        Ok(Self {
            buffer: Arc::new(ctx.pool().get(ctx.device(), bytes, usage)),
            shape: shape.to_vec(),
        })
    }

    /// Uploads `data` (row-major, `shape`).
    pub fn from_slice(ctx: &GpuContext, data: &[f32], shape: &[usize]) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if data.len() != numel {
            return Err(Error::invalid(format!(
                "{} values for a tensor of shape {shape:?} ({numel} values)",
                data.len()
            )));
        }
        let t = Self::alloc(ctx, shape, Use::Upload)?;
        if !data.is_empty() {
            ctx.queue()
                .write_buffer(t.buffer(), 0, bytemuck::cast_slice(data));
        }
        Ok(t)
    }

    /// Uploads a candle tensor (converted to contiguous f32).
    pub fn from_candle(ctx: &GpuContext, t: &candle_core::Tensor) -> Result<Self> {
        let data: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Self::from_slice(ctx, &data, t.dims())
    }

    /// The same data under another shape with as many elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::invalid(format!(
                "cannot reshape {:?} ({} values) to {shape:?} ({n} values)",
                self.shape,
                self.numel()
            )));
        }
        Ok(Self {
            buffer: Arc::clone(&self.buffer),
            shape: shape.to_vec(),
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Size of dimension `i`.
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.buffer()
    }
}

fn byte_size(shape: &[usize]) -> Result<u64> {
    shape
        .iter()
        .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| Error::gpu(format!("tensor {shape:?} is too large")))
}
