//! A recording: every op of a forward pass in one command encoder and one compute pass, every
//! op's parameters in one uniform buffer (dynamic offsets), one submit, and readback of only
//! the tensors asked for.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::context::{format_bytes, BufferKind, GpuContext};
use crate::gpu::pipeline::Kernel;
use crate::gpu::pool::OpenRecording;
use crate::gpu::tensor::{GpuDType, GpuTensor};

/// One dispatch, kept until the recording is submitted (bind groups need the final
/// parameter buffer).
struct Op {
    kernel: Arc<Kernel>,
    /// The buffers themselves, not their tensors: a tensor dropped while the recording is
    /// built gives its buffer back to the pool for the ops after it (see `gpu::pool`).
    buffers: Vec<wgpu::Buffer>,
    param_offset: u32,
    param_size: u64,
    grid: [u32; 3],
}

/// Records ops; [`Recorder::finish`] submits them once.
pub struct Recorder {
    ctx: GpuContext,
    /// Open until the recording is submitted or dropped.
    open: OpenRecording,
    params: Vec<u8>,
    ops: Vec<Op>,
    reads: Vec<GpuTensor>,
    align: usize,
    /// A row of ones, uploaded once per recording (the sum of a split reduction).
    ones: Option<GpuTensor>,
}

impl Recorder {
    pub fn new(ctx: &GpuContext) -> Self {
        Self {
            ctx: ctx.clone(),
            open: ctx.pool().open_recording(),
            params: Vec::new(),
            ops: Vec::new(),
            reads: Vec::new(),
            align: ctx.limits().min_uniform_buffer_offset_alignment as usize,
            ones: None,
        }
    }

    /// `[1, n]` ones, uploaded at most once per recording for each length asked.
    pub fn ones(&mut self, n: usize) -> Result<GpuTensor> {
        match &self.ones {
            Some(t) if t.numel() == n => Ok(t.clone()),
            _ => {
                let t = GpuTensor::from_slice(&self.ctx, &vec![1.0; n], &[1, n])?;
                self.ones = Some(t.clone());
                Ok(t)
            }
        }
    }

    pub fn ctx(&self) -> &GpuContext {
        &self.ctx
    }

    /// Dispatches recorded so far.
    pub fn dispatch_count(&self) -> usize {
        self.ops.len()
    }

    /// Records one dispatch of `kernel` with `params` (a `#[repr(C)]` struct matching the
    /// WGSL uniform, a multiple of 16 bytes), reading `inputs` and writing `outputs`.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        inputs: &[&GpuTensor],
        outputs: &[&GpuTensor],
        grid: [u32; 3],
    ) -> Result<()> {
        if inputs.len() != kernel.inputs || outputs.len() != kernel.outputs {
            return Err(Error::gpu(format!(
                "kernel `{}` takes {} inputs and {} outputs, given {} and {}",
                kernel.key,
                kernel.inputs,
                kernel.outputs,
                inputs.len(),
                outputs.len()
            )));
        }
        // A tensor bound as another element type would be read as garbage.
        for (i, t) in inputs.iter().chain(outputs).enumerate() {
            let wanted = if i < kernel.inputs && kernel.f16_inputs & (1 << i) != 0 {
                GpuDType::F16
            } else {
                GpuDType::F32
            };
            if t.dtype() != wanted {
                let (side, at) = if i < kernel.inputs {
                    ("input", i)
                } else {
                    ("output", i - kernel.inputs)
                };
                return Err(Error::gpu(format!(
                    "kernel `{}` binds {side} {at} as {}, given a {} tensor {:?}",
                    kernel.key,
                    wanted.wgsl(),
                    t.dtype().wgsl(),
                    t.shape()
                )));
            }
        }
        let bytes = bytemuck::bytes_of(params);
        debug_assert_eq!(bytes.len() % 16, 0, "uniform structs are 16-byte multiples");
        let max = self.ctx.limits().max_uniform_buffer_binding_size;
        if bytes.len() as u64 > max {
            return Err(Error::gpu(format!(
                "kernel `{}`: its {} of parameters exceed this device's maxUniformBufferBindingSize ({})",
                kernel.key,
                format_bytes(bytes.len() as u64),
                format_bytes(max)
            )));
        }
        let offset = self.params.len().div_ceil(self.align) * self.align;
        self.params.resize(offset, 0);
        self.params.extend_from_slice(bytes);
        if grid.contains(&0) {
            // Nothing to compute (an empty tensor).
            return Ok(());
        }
        self.ops.push(Op {
            kernel: Arc::clone(kernel),
            buffers: inputs
                .iter()
                .chain(outputs)
                .map(|t| t.buffer().clone())
                .collect(),
            param_offset: offset as u32,
            param_size: bytes.len() as u64,
            grid,
        });
        Ok(())
    }

    /// Asks for `t` to be read back; its values come out of [`Recorder::finish`] at the
    /// returned index.
    pub fn read(&mut self, t: &GpuTensor) -> usize {
        self.reads.push(t.clone());
        self.reads.len() - 1
    }

    /// Submits everything recorded, once, and returns the tensors asked for by [`Self::read`].
    pub async fn finish(self) -> Result<Vec<Vec<f32>>> {
        let ctx = self.ctx;
        ctx.check()?;
        let device = ctx.device();
        let param_bytes = self.params.len().max(16) as u64;
        ctx.check_buffer_size(param_bytes, BufferKind::Other)
            .map_err(|e| e.context(format!("the parameters of {} dispatches", self.ops.len())))?;
        // Readback buffers hold whole 4-byte words.
        for t in &self.reads {
            ctx.check_buffer_size(t.byte_len().next_multiple_of(4).max(4), BufferKind::Other)
                .map_err(|e| e.context(format!("reading back tensor {:?}", t.shape())))?;
        }
        let param_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("websam.params"),
            size: param_bytes,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if !self.params.is_empty() {
            ctx.queue().write_buffer(&param_buffer, 0, &self.params);
        }
        let bind_groups: Vec<wgpu::BindGroup> =
            self.ops
                .iter()
                .map(|op| {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &param_buffer,
                            offset: 0,
                            size: wgpu::BufferSize::new(op.param_size),
                        }),
                    }];
                    entries.extend(op.buffers.iter().enumerate().map(|(i, b)| {
                        wgpu::BindGroupEntry {
                            binding: 1 + i as u32,
                            resource: b.as_entire_binding(),
                        }
                    }));
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(&op.kernel.key),
                        layout: &op.kernel.layout,
                        entries: &entries,
                    })
                })
                .collect();

        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("websam.forward"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("websam.forward"),
                timestamp_writes: None,
            });
            for (op, bg) in self.ops.iter().zip(&bind_groups) {
                pass.set_pipeline(&op.kernel.pipeline);
                pass.set_bind_group(0, bg, &[op.param_offset]);
                pass.dispatch_workgroups(op.grid[0], op.grid[1], op.grid[2]);
            }
        }
        let staging: Vec<(wgpu::Buffer, &GpuTensor)> = self
            .reads
            .iter()
            .map(|t| {
                let bytes = t.byte_len().next_multiple_of(4);
                let buf = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("websam.readback"),
                    size: bytes.max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                if bytes > 0 {
                    encoder.copy_buffer_to_buffer(t.buffer(), 0, &buf, 0, bytes);
                }
                (buf, t)
            })
            .collect();
        ctx.queue().submit([encoder.finish()]);
        // Submitted: uploads may now take the buffers freed while recording.
        drop(self.open);

        let mut receivers = Vec::with_capacity(staging.len());
        for (buf, _) in &staging {
            let (tx, rx) = futures_channel::oneshot::channel();
            buf.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            receivers.push(rx);
        }
        // Natively the callbacks run during a poll; in the browser the event loop runs them
        // while we await (a blocking wait is impossible there).
        #[cfg(not(target_arch = "wasm32"))]
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::gpu(format!("waiting for the GPU: {e}")))?;
        let mut out = Vec::with_capacity(staging.len());
        for ((buf, t), rx) in staging.iter().zip(receivers) {
            rx.await
                .map_err(|_| Error::gpu("readback cancelled (device lost?)"))?
                .map_err(|e| Error::gpu(format!("mapping a readback buffer: {e}")))?;
            let data = {
                let view = buf
                    .get_mapped_range(..)
                    .map_err(|e| Error::gpu(format!("reading back: {e}")))?;
                match t.dtype() {
                    GpuDType::F32 => bytemuck::cast_slice::<u8, f32>(&view)[..t.numel()].to_vec(),
                    GpuDType::F16 => bytemuck::cast_slice::<u8, u16>(&view)[..t.numel()]
                        .iter()
                        .map(|&h| half::f16::from_bits(h).to_f32())
                        .collect(),
                }
            };
            buf.unmap();
            out.push(data);
        }
        ctx.check()?;
        Ok(out)
    }

    /// [`Recorder::finish`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish_blocking(self) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.finish())
    }
}
