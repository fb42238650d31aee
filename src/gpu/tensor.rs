//! A contiguous tensor in a pooled GPU storage buffer: f32, or f16 for the weights of the
//! GEMM kernels when a model is built for f16 (see [`crate::gpu::context::Precision`]).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::pool::{PooledBuffer, Use};

/// The element type of a [`GpuTensor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuDType {
    F32,
    /// IEEE half; only kernels built with `enable f16` read it (the `shader-f16` feature).
    F16,
}

impl GpuDType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            GpuDType::F32 => 4,
            GpuDType::F16 => 2,
        }
    }

    /// The WGSL scalar type.
    pub fn wgsl(self) -> &'static str {
        match self {
            GpuDType::F32 => "f32",
            GpuDType::F16 => "f16",
        }
    }
}

/// A contiguous, row-major tensor on the GPU. Cloning shares the buffer.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    buffer: Arc<PooledBuffer>,
    shape: Vec<usize>,
    dtype: GpuDType,
}

impl GpuTensor {
    /// An uninitialised f32 tensor from the pool (a kernel writes it before anything reads it).
    pub fn empty(ctx: &GpuContext, shape: &[usize]) -> Result<Self> {
        Self::alloc(ctx, shape, GpuDType::F32, Use::Output)
    }

    /// A tensor from the pool for `usage`.
    // Not Send in the browser, where wgpu's buffers are JS objects; see `GpuContext::new`.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    fn alloc(ctx: &GpuContext, shape: &[usize], dtype: GpuDType, usage: Use) -> Result<Self> {
        let bytes = byte_size(shape, dtype)?;
        // Checked before anything is created: wgpu would raise a validation error instead.
        let buffer = ctx
            .pool()
            .get(ctx.device(), ctx.limits(), bytes, usage)
            .map_err(|e| e.context(format!("tensor {shape:?} ({})", dtype.wgsl())))?;
        Ok(Self {
            buffer: Arc::new(buffer),
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// Uploads `data` (row-major, `shape`) as f32.
    pub fn from_slice(ctx: &GpuContext, data: &[f32], shape: &[usize]) -> Result<Self> {
        Self::from_slice_as(ctx, data, shape, GpuDType::F32)
    }

    /// Uploads `data` (row-major, `shape`) as `dtype` (f16: rounded to nearest, even on ties).
    pub fn from_slice_as(
        ctx: &GpuContext,
        data: &[f32],
        shape: &[usize],
        dtype: GpuDType,
    ) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if data.len() != numel {
            return Err(Error::invalid(format!(
                "{} values for a tensor of shape {shape:?} ({numel} values)",
                data.len()
            )));
        }
        if dtype == GpuDType::F16 && !ctx.supports_f16() {
            return Err(Error::gpu(format!(
                "an f16 tensor on {}, which does not offer shader-f16",
                ctx.adapter_name()
            )));
        }
        let t = Self::alloc(ctx, shape, dtype, Use::Upload)?;
        if !data.is_empty() {
            match dtype {
                GpuDType::F32 => {
                    ctx.queue()
                        .write_buffer(t.buffer(), 0, bytemuck::cast_slice(data))
                }
                GpuDType::F16 => {
                    let mut bits: Vec<u16> = data
                        .iter()
                        .map(|&v| half::f16::from_f32(v).to_bits())
                        .collect();
                    // Buffer writes are whole 4-byte words.
                    bits.resize(numel.next_multiple_of(2), 0);
                    ctx.queue()
                        .write_buffer(t.buffer(), 0, bytemuck::cast_slice(&bits));
                }
            }
            ctx.uploaded(t.byte_len())?;
        }
        Ok(t)
    }

    /// Uploads a candle tensor (converted to contiguous f32).
    pub fn from_candle(ctx: &GpuContext, t: &candle_core::Tensor) -> Result<Self> {
        Self::from_candle_as(ctx, t, GpuDType::F32)
    }

    /// Uploads a candle tensor as `dtype`.
    pub fn from_candle_as(
        ctx: &GpuContext,
        t: &candle_core::Tensor,
        dtype: GpuDType,
    ) -> Result<Self> {
        let data: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Self::from_slice_as(ctx, &data, t.dims(), dtype)
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
            dtype: self.dtype,
        })
    }

    pub fn dtype(&self) -> GpuDType {
        self.dtype
    }

    /// Bytes of its elements (the buffer may be larger).
    pub fn byte_len(&self) -> u64 {
        self.numel() as u64 * self.dtype.size()
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

/// Bytes to allocate: whole 4-byte words (buffer copies and writes move words).
fn byte_size(shape: &[usize], dtype: GpuDType) -> Result<u64> {
    shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d as u64))
        .map(|b| b.next_multiple_of(4))
        .ok_or_else(|| Error::gpu(format!("tensor {shape:?} is too large")))
}
