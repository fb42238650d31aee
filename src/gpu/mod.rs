//! The WebGPU engine: SAM's kernels on wgpu, natively (Vulkan, Metal, DX12, GL) and in the
//! browser (WebGPU).
//!
//! - [`context::GpuContext`]: adapter, device and queue at WebGPU's default limits, the
//!   buffer pool and the pipeline cache; errors and device loss are caught, never panics.
//! - [`pool`]: storage buffers recycled by size, returned when a [`tensor::GpuTensor`] drops.
//! - [`pipeline`]: compute pipelines cached under a readable key (`matmul_t16x16`).
//! - [`recorder::Recorder`]: a whole forward pass in one command encoder, one uniform buffer
//!   with dynamic offsets for every op's parameters, one submit, and readback of only the
//!   outputs asked for.
//! - [`kernels`]: one `.wgsl` file and one launcher per kernel family.
//! - [`backend::Gpu`]: the model's primitives on these kernels (the model itself is written
//!   once, in [`crate::model`]).

pub mod backend;
pub mod context;
pub mod kernels;
pub mod pipeline;
pub mod pool;
pub mod recorder;
pub mod tensor;

pub use context::GpuContext;
pub use recorder::Recorder;
pub use tensor::GpuTensor;

/// SAM on the GPU.
pub type GpuSam = crate::model::sam::Sam<backend::Gpu>;
/// An image prepared for decoding on the GPU.
pub type GpuEmbedding = crate::model::sam::PreparedImage<backend::Gpu>;
