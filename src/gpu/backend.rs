//! The GPU backend of the model ([`crate::model::backend::Backend`]): a pass is a
//! [`Recorder`], every op one or a few dispatches of the WGSL kernels, run at the pass's one
//! submit. GEMM weights (linear layers, dense and transposed convs) are uploaded in the
//! context's precision (f16 on an f16 context); everything else in f32.

use crate::error::{Error, Result};
use crate::gpu::context::Precision;
use crate::gpu::kernels::attention::{
    attention, attention_rel_pos, attention_tokens, MAX_HEAD_DIM,
};
use crate::gpu::kernels::conv::{conv2d, conv2d_residual, conv_transpose2x2, Conv2dOpts};
use crate::gpu::kernels::elementwise::{binary, unary, Binary, Unary};
use crate::gpu::kernels::layout::{concat, permute, slice, window_partition, window_reverse};
use crate::gpu::kernels::matmul::{linear, matmul, MatmulOpts};
use crate::gpu::kernels::norm::{layer_norm_2d, layer_norm_act};
use crate::gpu::kernels::softmax::softmax_last;
use crate::gpu::tensor::GpuDType;
use crate::gpu::{GpuContext, GpuTensor, Recorder};
use crate::model::backend::{Activation, Backend, ConvOpts, Gemm, Param};

/// The GPU backend: one recording.
pub struct Gpu {
    pub rec: Recorder,
}

impl Gpu {
    /// The recording, to read tensors back and submit it.
    pub fn into_recorder(self) -> Recorder {
        self.rec
    }
}

/// The element type of GEMM weights on `ctx`: f16 when the context's precision is f16.
fn gemm_dtype(ctx: &GpuContext) -> GpuDType {
    match ctx.precision() {
        Precision::F32 => GpuDType::F32,
        Precision::F16 => GpuDType::F16,
    }
}

impl Backend for Gpu {
    type Device = GpuContext;
    type Tensor = GpuTensor;

    fn begin(ctx: &GpuContext) -> Self {
        Self {
            rec: Recorder::new(ctx),
        }
    }

    fn param(ctx: &GpuContext, t: &candle_core::Tensor, use_: Param) -> Result<GpuTensor> {
        match use_ {
            Param::Plain | Param::Depthwise => GpuTensor::from_candle(ctx, t),
            Param::Linear | Param::Conv | Param::ConvTranspose => {
                GpuTensor::from_candle_as(ctx, t, gemm_dtype(ctx))
            }
        }
    }

    fn input(&mut self, t: &candle_core::Tensor) -> Result<GpuTensor> {
        GpuTensor::from_candle(self.rec.ctx(), t)
    }

    fn dims(t: &GpuTensor) -> &[usize] {
        t.shape()
    }

    fn reshape(&mut self, x: &GpuTensor, shape: &[usize]) -> Result<GpuTensor> {
        x.reshape(shape)
    }

    fn permute(&mut self, x: &GpuTensor, perm: &[usize]) -> Result<GpuTensor> {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x.clone());
        }
        permute(&mut self.rec, x, perm)
    }

    fn slice(&mut self, x: &GpuTensor, dim: usize, start: usize, len: usize) -> Result<GpuTensor> {
        if start == 0 && x.shape().get(dim) == Some(&len) {
            return Ok(x.clone());
        }
        slice(&mut self.rec, x, dim, start, len)
    }

    fn concat(&mut self, xs: &[&GpuTensor], dim: usize) -> Result<GpuTensor> {
        concat(&mut self.rec, xs, dim)
    }

    fn window_partition(
        &mut self,
        x: &GpuTensor,
        hw: (usize, usize),
        ws: usize,
    ) -> Result<GpuTensor> {
        window_partition(&mut self.rec, x, hw, ws)
    }

    fn window_reverse(
        &mut self,
        windows: &GpuTensor,
        hw: (usize, usize),
        ws: usize,
        residual: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        window_reverse(&mut self.rec, windows, hw, ws, residual)
    }

    fn add(&mut self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        binary(&mut self.rec, a, b, Binary::Add)
    }

    fn maximum(&mut self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        binary(&mut self.rec, a, b, Binary::Max)
    }

    fn activation(&mut self, x: &GpuTensor, a: Activation) -> Result<GpuTensor> {
        match a {
            Activation::None => Ok(x.clone()),
            Activation::Gelu => unary(&mut self.rec, x, Unary::Gelu),
            Activation::Relu => unary(&mut self.rec, x, Unary::Relu),
            Activation::Sigmoid => unary(&mut self.rec, x, Unary::Sigmoid),
        }
    }

    fn linear(
        &mut self,
        x: &GpuTensor,
        weight: &GpuTensor,
        bias: Option<&GpuTensor>,
        a: Activation,
    ) -> Result<GpuTensor> {
        linear(&mut self.rec, x, weight, bias, a)
    }

    fn matmul(
        &mut self,
        a: &GpuTensor,
        b: &GpuTensor,
        opts: Gemm<'_, GpuTensor>,
    ) -> Result<GpuTensor> {
        let opts = MatmulOpts {
            trans_b: opts.trans_b,
            alpha: opts.alpha,
            bias: opts.bias,
            act: opts.act,
        };
        matmul(&mut self.rec, a, b, &opts)
    }

    fn softmax(&mut self, x: &GpuTensor) -> Result<GpuTensor> {
        softmax_last(&mut self.rec, x)
    }

    fn attention(
        &mut self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        bias: Option<&GpuTensor>,
        scale: f32,
    ) -> Result<GpuTensor> {
        let d = q.shape().last().copied().unwrap_or(0);
        if d <= MAX_HEAD_DIM {
            return attention(&mut self.rec, q, k, v, bias, scale);
        }
        // Heads wider than the fused kernel holds in registers (the decoder's absorbed
        // attention over the image's 256 channels): logits, softmax, product.
        let logits = self.matmul(q, k, Gemm::default().trans_b().alpha(scale))?;
        let logits = match bias {
            Some(b) => self.add(&logits, b)?,
            None => logits,
        };
        let attn = self.softmax(&logits)?;
        self.matmul(&attn, v, Gemm::default())
    }

    fn attention_rel_pos(
        &mut self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        rel: &GpuTensor,
        key_grid: (usize, usize),
        scale: f32,
    ) -> Result<GpuTensor> {
        attention_rel_pos(&mut self.rec, q, k, v, rel, key_grid, scale)
    }

    fn multi_head_attention(
        &mut self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        heads: usize,
        scale: f32,
    ) -> Result<GpuTensor> {
        attention_tokens(&mut self.rec, q, k, v, heads, scale)
    }

    fn layer_norm(
        &mut self,
        x: &GpuTensor,
        weight: &GpuTensor,
        bias: &GpuTensor,
        eps: f32,
        a: Activation,
    ) -> Result<GpuTensor> {
        layer_norm_act(&mut self.rec, x, weight, bias, eps, a)
    }

    fn layer_norm_2d(
        &mut self,
        x: &GpuTensor,
        weight: &GpuTensor,
        bias: &GpuTensor,
        eps: f32,
        a: Activation,
    ) -> Result<GpuTensor> {
        layer_norm_2d(&mut self.rec, x, weight, bias, eps, a)
    }

    fn conv2d(
        &mut self,
        x: &GpuTensor,
        weight: &GpuTensor,
        bias: Option<&GpuTensor>,
        opts: ConvOpts,
        a: Activation,
        residual: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        let opts = Conv2dOpts {
            stride: opts.stride,
            padding: opts.padding,
            groups: opts.groups,
        };
        match residual {
            Some(r) => conv2d_residual(&mut self.rec, x, weight, bias, r, &opts, a),
            None => conv2d(&mut self.rec, x, weight, bias, &opts, a),
        }
    }

    fn conv_transpose2x2(
        &mut self,
        x: &GpuTensor,
        weight: &GpuTensor,
        bias: Option<&GpuTensor>,
        a: Activation,
    ) -> Result<GpuTensor> {
        conv_transpose2x2(&mut self.rec, x, weight, bias, a)
    }
}

/// Errors unless a recording read back as many tensors as it was asked for.
pub(crate) fn expect_outputs(out: &[Vec<f32>], n: usize, what: &str) -> Result<()> {
    if out.len() == n {
        Ok(())
    } else {
        Err(Error::gpu(format!(
            "{what} read back {} tensors, {n} recorded",
            out.len()
        )))
    }
}
