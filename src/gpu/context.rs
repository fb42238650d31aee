//! The GPU context: adapter, device and queue, asked for the adapter's real limits, with the
//! buffer pool and the pipeline cache. wgpu's default error handler panics; here validation
//! errors and device loss are recorded and surface as [`Error::Gpu`] from the next operation.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::pipeline::PipelineCache;
use crate::gpu::pool::BufferPool;

/// What went wrong on the device since the last check.
#[derive(Debug, Default)]
struct Faults {
    /// First uncaptured error (validation, out of memory, internal).
    error: Option<String>,
    /// Set when the device is lost.
    lost: Option<String>,
}

/// The precision of the GEMMs (matmul, linear and dense convs) of a model built on a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 weights and arithmetic: the reference's results (within 2.4e-5 on the low-res logits).
    #[default]
    F32,
    /// Weights stored as f16 (half the memory) and products summed in f16 within each 2-long
    /// slice of the reduction, the slices summed in f32 (`shader-f16`). Activations stay f32
    /// in memory. Its tolerance is stated and tested in `tests/gpu_f16.rs`.
    F16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

/// A WebGPU device ready for compute, shared by every tensor and recording made from it.
#[derive(Debug, Clone)]
pub struct GpuContext {
    inner: Arc<Inner>,
    /// How models built on this handle store their GEMM weights.
    precision: Precision,
}

#[derive(Debug)]
struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pool: BufferPool,
    pipelines: PipelineCache,
    faults: Arc<Mutex<Faults>>,
    /// Optional features the device was opened with.
    features: wgpu::Features,
}

impl GpuContext {
    /// Finds an adapter and opens a device. Natively the backend comes from `WGPU_BACKEND` when
    /// set (vulkan, metal, dx12, gl), else every backend is tried; in the browser it is WebGPU.
    // In the browser wgpu's handles are JS objects, neither Send nor Sync; the Arc is for the
    // native side, where contexts are shared across threads.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub async fn new() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                Error::gpu(format!(
                    "no GPU adapter found ({e}); natively install a Vulkan driver (Mesa's lavapipe runs on the CPU), in a browser enable WebGPU"
                ))
            })?;
        let info = adapter.get_info();
        // Ask for what the adapter really offers: storage buffer sizes and workgroup limits
        // well beyond the defaults matter for the encoder's activations.
        let limits = adapter.limits();
        // f16 in shaders, when offered: only kernels built for f16 weights use it.
        let features = adapter.features() & wgpu::Features::SHADER_F16;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("websam"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::default(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::gpu(format!("could not open a device on {}: {e}", info.name)))?;

        let faults = Arc::new(Mutex::new(Faults::default()));
        {
            let faults = Arc::clone(&faults);
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut f) = faults.lock() {
                    f.error.get_or_insert_with(|| e.to_string());
                }
            }));
        }
        {
            let faults = Arc::clone(&faults);
            device.set_device_lost_callback(move |reason, msg| {
                if let Ok(mut f) = faults.lock() {
                    f.lost.get_or_insert_with(|| format!("{reason:?}: {msg}"));
                }
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                device,
                queue,
                info,
                limits,
                pool: BufferPool::default(),
                pipelines: PipelineCache::default(),
                faults,
                features,
            }),
            precision: Precision::F32,
        })
    }

    /// The same device for models whose GEMM weights are kept in `precision`; f16 needs the
    /// adapter's `shader-f16`.
    pub fn with_precision(&self, precision: Precision) -> Result<Self> {
        if precision == Precision::F16 && !self.supports_f16() {
            return Err(Error::gpu(format!(
                "f16 needs the shader-f16 feature, which {} does not offer",
                self.adapter_name()
            )));
        }
        Ok(Self {
            inner: Arc::clone(&self.inner),
            precision,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether kernels may use f16 (the device has `shader-f16`).
    pub fn supports_f16(&self) -> bool {
        self.inner.features.contains(wgpu::Features::SHADER_F16)
    }

    /// [`GpuContext::new`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    pub fn pool(&self) -> &BufferPool {
        &self.inner.pool
    }

    pub fn pipelines(&self) -> &PipelineCache {
        &self.inner.pipelines
    }

    /// The adapter, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu)". Browsers do not
    /// tell the adapter's name; there it reads "WebGPU adapter (BrowserWebGpu, Cpu)".
    pub fn adapter_name(&self) -> String {
        let i = &self.inner.info;
        let name = if i.name.is_empty() {
            "WebGPU adapter"
        } else {
            i.name.as_str()
        };
        format!("{name} ({:?}, {:?})", i.backend, i.device_type)
    }

    /// Whether the adapter is a software rasterizer on the CPU (lavapipe, SwiftShader, WARP):
    /// correct, but slower than the CPU backend.
    pub fn is_software(&self) -> bool {
        self.inner.info.device_type == wgpu::DeviceType::Cpu
    }

    /// An error if the device was lost or an uncaptured error happened since the last check.
    pub fn check(&self) -> Result<()> {
        let mut f = self
            .inner
            .faults
            .lock()
            .map_err(|_| Error::gpu("fault record poisoned"))?;
        if let Some(lost) = &f.lost {
            return Err(Error::gpu(format!("the GPU device was lost ({lost})")));
        }
        match f.error.take() {
            Some(e) => Err(Error::gpu(e)),
            None => Ok(()),
        }
    }

    /// Whether the device was lost (a new context is needed).
    pub fn is_lost(&self) -> bool {
        self.inner
            .faults
            .lock()
            .map(|f| f.lost.is_some())
            .unwrap_or(true)
    }

    /// Workgroup counts for `groups` workgroups, split over x and y when x would exceed the
    /// device's per-dimension limit. Shaders rebuild the linear index as `x + y * num_x`.
    pub fn grid(&self, groups: u32) -> Result<[u32; 3]> {
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        if groups <= max {
            return Ok([groups.max(1), 1, 1]);
        }
        let y = groups.div_ceil(max);
        if y > max {
            return Err(Error::gpu(format!(
                "{groups} workgroups exceed the device's grid"
            )));
        }
        Ok([groups.div_ceil(y), y, 1])
    }
}
