//! The GPU context: adapter, device and queue, with the buffer pool and the pipeline cache.
//! The device is opened at WebGPU's default limits (what every WebGPU device offers), checked
//! against what the engine needs ([`minimum_limits`]); buffers are checked against the
//! device's limits before they are created ([`check_buffer_size`]). wgpu's default error
//! handler panics; here validation errors and device loss are recorded and surface as
//! [`Error::Gpu`] from the next operation.

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

/// Declares the limits the engine depends on: [`minimum_limits`] and the check of an adapter
/// against the kernels' needs. Every one is a "maximum" limit (more is better).
macro_rules! engine_needs {
    (
        kernels { $($field:ident ($name:literal): $value:expr,)* }
        buffers { $($b_field:ident: $b_value:expr,)* }
    ) => {
        /// The least the engine works with: WebGPU's defaults with every limit the kernels and
        /// the models depend on set to what they really use. Each is within WebGPU's defaults
        /// today, so [`required_limits`] asks for the defaults; a need beyond them would raise
        /// that limit alone, where the adapter offers it.
        pub fn minimum_limits() -> wgpu::Limits {
            wgpu::Limits {
                $($field: $value,)*
                $($b_field: $b_value,)*
                ..wgpu::Limits::default()
            }
        }

        /// Each kernel need that `limits` lacks, by its WebGPU name. Buffer sizes are not
        /// refused up front: each allocation is checked ([`check_buffer_size`]).
        fn lacking(limits: &wgpu::Limits) -> Vec<String> {
            let mut lacking = Vec::new();
            $(
                if u64::from(limits.$field) < ($value as u64) {
                    lacking.push(format!(
                        "{} {} (offers {})",
                        $name,
                        $value,
                        limits.$field
                    ));
                }
            )*
            lacking
        }
    };
}

engine_needs! {
    kernels {
        // A kernel binds one group: its parameters, then its inputs and outputs.
        max_bind_groups ("maxBindGroups"): 1,
        // The parameters and up to 5 storage buffers (attention: q, k, v, bias, out; conv: x,
        // weights, bias, residual, y).
        max_bindings_per_bind_group ("maxBindingsPerBindGroup"): 6,
        max_storage_buffers_per_shader_stage ("maxStorageBuffersPerShaderStage"): 5,
        // One uniform, at a dynamic offset into the recording's one parameter buffer.
        max_uniform_buffers_per_shader_stage ("maxUniformBuffersPerShaderStage"): 1,
        max_dynamic_uniform_buffers_per_pipeline_layout
            ("maxDynamicUniformBuffersPerPipelineLayout"): 1,
        // The largest parameter struct is the gather's, 144 bytes (`Recorder::dispatch` checks
        // each).
        max_uniform_buffer_binding_size ("maxUniformBufferBindingSize"): 256,
        // Workgroup memory: the thin matmul tile (16 x 128 outputs, f32) holds (4 + 32) x 16
        // vec4s = 9216 bytes; the conv and square matmul tiles 8192, attention at most 8960.
        max_compute_workgroup_storage_size ("maxComputeWorkgroupStorageSize"): 9216,
        // Workgroups of 256 threads (element-wise, conv, norm, softmax; 16 x 16 for
        // transpose, resize and depthwise conv), at most 16 along y and 1 along z.
        max_compute_invocations_per_workgroup ("maxComputeInvocationsPerWorkgroup"): 256,
        max_compute_workgroup_size_x ("maxComputeWorkgroupSizeX"): 256,
        max_compute_workgroup_size_y ("maxComputeWorkgroupSizeY"): 16,
        max_compute_workgroup_size_z ("maxComputeWorkgroupSizeZ"): 1,
        // Grids past this are split over x and y (`GpuContext::grid`); WebGPU's default.
        max_compute_workgroups_per_dimension ("maxComputeWorkgroupsPerDimension"): 65535,
    }
    buffers {
        // Every tensor is one buffer, bound whole. The largest MobileSAM allocates is 64 MiB:
        // TinyViT's first MBConv expansion at 1024 x 1024 (256 x 256 x 256 f32). Decoding from
        // an embedding needs far less (tests/gpu_limits.rs measures both), so an adapter with
        // smaller buffers still opens and each allocation over its limit fails naming it. The
        // postprocessing's full-size logits grow with the photograph: past WebGPU's 128 MiB
        // (3 masks of over 11 megapixels) they fail the same way.
        max_storage_buffer_binding_size: 64 << 20,
        max_buffer_size: 64 << 20,
    }
}

/// What the engine asks of a device on an adapter offering `adapter`: WebGPU's defaults,
/// raised where [`minimum_limits`] needs more, lowered to the adapter's where it offers less
/// than the defaults (a downlevel native adapter) but enough. An error names every limit the
/// adapter lacks.
pub fn required_limits(adapter: &wgpu::Limits) -> Result<wgpu::Limits> {
    let lacking = lacking(adapter);
    if !lacking.is_empty() {
        return Err(Error::gpu(format!(
            "the adapter's limits are too low for this engine; it needs {}",
            lacking.join(", ")
        )));
    }
    Ok(wgpu::Limits::default()
        .or_better_values_from(&minimum_limits())
        .or_worse_values_from(adapter))
}

/// What a buffer is for, as far as the device's limits go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferKind {
    /// Bound whole as a storage buffer (a tensor).
    Storage,
    /// Anything else (parameters, readback).
    Other,
}

/// `bytes` as a person reads it: "300 MiB", "1.5 KiB", "12 bytes".
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            let v = bytes as f64 / unit as f64;
            return if bytes.is_multiple_of(unit) {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{v:.1} {name}")
            };
        }
    }
    format!("{bytes} bytes")
}

/// An error naming the limit when a buffer of `bytes` for `kind` does not fit `limits`:
/// `maxStorageBufferBindingSize` for storage buffers, `maxBufferSize` for every buffer.
pub fn check_buffer_size(limits: &wgpu::Limits, bytes: u64, kind: BufferKind) -> Result<()> {
    let over = |name: &str, max: u64| {
        Error::gpu(format!(
            "a {} buffer exceeds this device's {name} ({})",
            format_bytes(bytes),
            format_bytes(max)
        ))
    };
    if kind == BufferKind::Storage && bytes > limits.max_storage_buffer_binding_size {
        return Err(over(
            "maxStorageBufferBindingSize",
            limits.max_storage_buffer_binding_size,
        ));
    }
    if bytes > limits.max_buffer_size {
        return Err(over("maxBufferSize", limits.max_buffer_size));
    }
    Ok(())
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
    /// The device's limits (what was asked for; in the browser, what the device reports).
    limits: wgpu::Limits,
    /// What the adapter offers.
    adapter_limits: wgpu::Limits,
    pool: BufferPool,
    pipelines: PipelineCache,
    faults: Arc<Mutex<Faults>>,
    /// Optional features the device was opened with.
    features: wgpu::Features,
    /// Bytes written by `queue.write_buffer` since the queue was last flushed.
    unflushed: std::sync::atomic::AtomicU64,
}

/// Uploads staged beyond this are flushed to the device (see [`GpuContext::uploaded`]).
const UPLOAD_FLUSH_BYTES: u64 = 16 << 20;

impl GpuContext {
    /// Finds an adapter and opens a device at [`required_limits`] (WebGPU's defaults, natively
    /// and in the browser alike). Natively the backend comes from `WGPU_BACKEND` when set
    /// (vulkan, metal, dx12, gl), else every backend is tried; in the browser it is WebGPU.
    pub async fn new() -> Result<Self> {
        Self::open(None).await
    }

    /// [`GpuContext::new`] with the device opened at exactly `limits` (to test the engine at
    /// given limits, lower than it needs included); an error names every limit the adapter
    /// does not offer.
    pub async fn with_limits(limits: wgpu::Limits) -> Result<Self> {
        Self::open(Some(limits)).await
    }

    // In the browser wgpu's handles are JS objects, neither Send nor Sync; the Arc is for the
    // native side, where contexts are shared across threads.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    async fn open(limits: Option<wgpu::Limits>) -> Result<Self> {
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
        let adapter_limits = adapter.limits();
        let limits = match limits {
            None => required_limits(&adapter_limits).map_err(|e| e.context(&info.name))?,
            Some(limits) => {
                let mut over = Vec::new();
                limits.check_limits_with_fail_fn(&adapter_limits, false, |name, want, offers| {
                    over.push(format!("{name} {want} (offers {offers})"))
                });
                if !over.is_empty() {
                    return Err(Error::gpu(format!(
                        "{} does not offer the limits asked for: {}",
                        info.name,
                        over.join(", ")
                    )));
                }
                limits
            }
        };
        // f16 in shaders, when offered: only kernels built for f16 weights use it.
        let features = adapter.features() & wgpu::Features::SHADER_F16;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("websam"),
                required_features: features,
                required_limits: limits,
                experimental_features: wgpu::ExperimentalFeatures::default(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::gpu(format!("could not open a device on {}: {e}", info.name)))?;

        // What the device enforces: natively what was asked; a browser may report more.
        let limits = device.limits();

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
                adapter_limits,
                pool: BufferPool::default(),
                pipelines: PipelineCache::default(),
                faults,
                features,
                unflushed: Default::default(),
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

    /// [`GpuContext::with_limits`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_limits_blocking(limits: wgpu::Limits) -> Result<Self> {
        pollster::block_on(Self::with_limits(limits))
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Notes `bytes` just written with `queue.write_buffer`. The queue keeps a staging copy of
    /// every write until a submit; a model's weights are written one after another before any,
    /// so past [`UPLOAD_FLUSH_BYTES`] the writes are submitted and (natively) waited for, and
    /// their staging freed: loading holds the weights once, not twice.
    pub fn uploaded(&self, bytes: u64) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.inner.unflushed.fetch_add(bytes, Relaxed) + bytes < UPLOAD_FLUSH_BYTES {
            return Ok(());
        }
        self.inner.unflushed.store(0, Relaxed);
        self.inner.queue.submit(std::iter::empty());
        // In the browser the implementation frees its staging as the writes reach the GPU.
        #[cfg(not(target_arch = "wasm32"))]
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::gpu(format!("waiting for an upload: {e}")))?;
        Ok(())
    }

    /// The device's limits, which every buffer and dispatch is checked against.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// What the adapter offers (the device may ask for less).
    pub fn adapter_limits(&self) -> &wgpu::Limits {
        &self.inner.adapter_limits
    }

    /// [`check_buffer_size`] against this device's limits.
    pub fn check_buffer_size(&self, bytes: u64, kind: BufferKind) -> Result<()> {
        check_buffer_size(&self.inner.limits, bytes, kind)
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
                "{groups} workgroups exceed the device's grid ({max} x {max}, maxComputeWorkgroupsPerDimension)"
            )));
        }
        Ok([groups.div_ceil(y), y, 1])
    }
}
