//! Layers shared by the GPU ports of the decoder and of TinyViT: weights uploaded once at load.

use crate::error::Result;
use crate::gpu::context::Precision;
use crate::gpu::kernels::matmul::linear;
use crate::gpu::kernels::norm::layer_norm;
use crate::gpu::kernels::Activation;
use crate::gpu::tensor::GpuDType;
use crate::gpu::{GpuContext, GpuTensor, Recorder};
use crate::model::weights::WeightPath;

/// Uploads `<vb>.<name>` checked against `shape`.
pub(crate) fn upload(
    ctx: &GpuContext,
    vb: &WeightPath,
    shape: &[usize],
    name: &str,
) -> Result<GpuTensor> {
    GpuTensor::from_candle(ctx, &vb.get(shape, name)?)
}

/// The element type of GEMM weights (linear layers, dense and transposed convs) of models built
/// on `ctx`: f16 when the context's precision is f16.
pub(crate) fn gemm_dtype(ctx: &GpuContext) -> GpuDType {
    match ctx.precision() {
        Precision::F32 => GpuDType::F32,
        Precision::F16 => GpuDType::F16,
    }
}

/// Uploads a GEMM weight in the context's precision (see [`gemm_dtype`]).
pub(crate) fn upload_gemm(ctx: &GpuContext, t: &candle_core::Tensor) -> Result<GpuTensor> {
    GpuTensor::from_candle_as(ctx, t, gemm_dtype(ctx))
}

/// `nn.Linear`, weight `[out, in]` as stored (f16 on an f16 context).
pub(crate) struct Linear {
    pub(crate) weight: GpuTensor,
    pub(crate) bias: GpuTensor,
}

impl Linear {
    pub(crate) fn new(
        ctx: &GpuContext,
        vb: &WeightPath,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: upload_gemm(ctx, &vb.get(&[out_dim, in_dim], "weight")?)?,
            bias: upload(ctx, vb, &[out_dim], "bias")?,
        })
    }

    pub(crate) fn forward(
        &self,
        rec: &mut Recorder,
        x: &GpuTensor,
        act: Activation,
    ) -> Result<GpuTensor> {
        linear(rec, x, &self.weight, Some(&self.bias), act)
    }
}

/// `nn.LayerNorm` over the last dim.
pub(crate) struct LayerNorm {
    weight: GpuTensor,
    bias: GpuTensor,
    eps: f32,
}

impl LayerNorm {
    pub(crate) fn new(ctx: &GpuContext, vb: &WeightPath, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: upload(ctx, vb, &[dim], "weight")?,
            bias: upload(ctx, vb, &[dim], "bias")?,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, rec: &mut Recorder, x: &GpuTensor) -> Result<GpuTensor> {
        layer_norm(rec, x, &self.weight, &self.bias, self.eps)
    }
}
