//! Compute pipelines, created once and cached under a key that reads like a name
//! (`binary_add`, `matmul_t16x16`). Layouts are explicit: binding 0 is the op's parameters (a
//! uniform with a dynamic offset into the recording's one parameter buffer), then the inputs
//! (read-only storage), then the outputs (read-write storage).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::context::GpuContext;

/// What a kernel needs to become a pipeline.
#[derive(Debug, Clone, Copy)]
pub struct KernelSpec<'a> {
    /// Cache key; must change whenever the WGSL text would.
    pub key: &'a str,
    /// Entry point in the WGSL.
    pub entry: &'a str,
    /// Read-only storage bindings, at 1..=inputs.
    pub inputs: usize,
    /// Read-write storage bindings, after the inputs.
    pub outputs: usize,
    /// Inputs the WGSL declares as f16 arrays (bit i: input i); the others, and every output,
    /// are f32. [`crate::gpu::Recorder::dispatch`] checks tensors against it.
    pub f16_inputs: u32,
}

/// A pipeline and its bind group layout.
#[derive(Debug)]
pub struct Kernel {
    pub key: String,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub inputs: usize,
    pub outputs: usize,
    pub f16_inputs: u32,
}

/// The cache, one per device.
#[derive(Debug, Default)]
pub struct PipelineCache {
    kernels: Mutex<HashMap<String, Arc<Kernel>>>,
}

impl PipelineCache {
    /// The cached kernel for `spec.key`, or a new one built from the WGSL `source()` returns.
    pub fn get(
        &self,
        ctx: &GpuContext,
        spec: KernelSpec<'_>,
        source: impl FnOnce() -> String,
    ) -> Result<Arc<Kernel>> {
        let mut kernels = self
            .kernels
            .lock()
            .map_err(|_| Error::gpu("pipeline cache poisoned"))?;
        if let Some(k) = kernels.get(spec.key) {
            return Ok(Arc::clone(k));
        }
        let kernel = Arc::new(build(ctx, spec, &source())?);
        kernels.insert(spec.key.to_owned(), Arc::clone(&kernel));
        Ok(kernel)
    }
}

fn build(ctx: &GpuContext, spec: KernelSpec<'_>, source: &str) -> Result<Kernel> {
    let device = ctx.device();
    let storage = |binding: usize, read_only: bool| wgpu::BindGroupLayoutEntry {
        binding: binding as u32,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: None,
        },
        count: None,
    }];
    entries.extend((0..spec.inputs).map(|i| storage(1 + i, true)));
    entries.extend((0..spec.outputs).map(|i| storage(1 + spec.inputs + i, false)));
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(spec.key),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(spec.key),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(spec.key),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(spec.key),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(spec.entry),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    });
    // Natively a shader or layout error reaches the error handler at once; in the browser it
    // arrives later and surfaces when the recording finishes.
    ctx.check()
        .map_err(|e| Error::gpu(format!("kernel `{}`: {e}", spec.key)))?;
    Ok(Kernel {
        key: spec.key.to_owned(),
        pipeline,
        layout,
        inputs: spec.inputs,
        outputs: spec.outputs,
        f16_inputs: spec.f16_inputs,
    })
}
