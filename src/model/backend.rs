//! The neural-network primitives SAM's modules are written against, and the backends that
//! implement them: [`Cpu`] (candle tensors and the crate's own CPU kernels, in
//! [`crate::model::cpu`]) and `Gpu` (the WebGPU engine's recorder and WGSL kernels, in
//! [`crate::gpu::backend`]).
//!
//! A backend value is one pass: on the CPU ops run as they are called, on the GPU they are
//! recorded into one command encoder and run at its submit. The model's structs are generic over
//! the backend (`Linear<B>`, `TinyViT<B>`, `Sam<B>`), their weights uploaded once at load as the
//! backend wants them ([`Param`]), so every module, and every algebraic rewrite of one, is
//! written once.

use std::fmt::Debug;

use crate::error::Result;
use crate::model::weights::WeightPath;

pub use crate::model::cpu::Cpu;

/// An activation fused into an op's output (the engine's enum: one list for both backends).
pub use crate::gpu::kernels::Activation;

/// How a weight is used, so that each backend keeps it in the layout and precision its kernels
/// read: the model never looks inside a weight after load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// Used as it is (biases, norms, embeddings, attention bias tables, the right-hand side of a
    /// [`Backend::matmul`]), in f32.
    Plain,
    /// A `nn.Linear` weight `[out, in]`, for [`Backend::linear`].
    Linear,
    /// A dense conv weight `[out, in, k, k]`, for [`Backend::conv2d`] with groups 1.
    Conv,
    /// A depthwise conv weight `[c, 1, k, k]`, for [`Backend::conv2d`] with groups = c.
    Depthwise,
    /// A `nn.ConvTranspose2d` weight `[in, out, 2, 2]`, for [`Backend::conv_transpose2x2`].
    ConvTranspose,
}

/// A conv's stride, padding and groups (dilation 1, as every conv of SAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOpts {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl ConvOpts {
    /// Stride `stride`, padding `padding`, groups 1.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride,
            padding,
            groups: 1,
        }
    }

    pub fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }
}

/// What [`Backend::matmul`] does besides `a @ b`.
#[derive(Debug)]
pub struct Gemm<'a, T> {
    /// `b` is `[.., N, K]`.
    pub trans_b: bool,
    /// Scales `a @ b`, before the bias.
    pub alpha: f32,
    pub bias: Option<&'a T>,
    pub act: Activation,
}

impl<T> Clone for Gemm<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Gemm<'_, T> {}

impl<T> Default for Gemm<'_, T> {
    fn default() -> Self {
        Self {
            trans_b: false,
            alpha: 1.0,
            bias: None,
            act: Activation::None,
        }
    }
}

impl<'a, T> Gemm<'a, T> {
    /// `b` transposed (`[.., N, K]`).
    pub fn trans_b(self) -> Self {
        Self {
            trans_b: true,
            ..self
        }
    }

    pub fn alpha(self, alpha: f32) -> Self {
        Self { alpha, ..self }
    }

    pub fn bias(self, bias: &'a T) -> Self {
        Self {
            bias: Some(bias),
            ..self
        }
    }

    pub fn act(self, act: Activation) -> Self {
        Self { act, ..self }
    }
}

/// One pass of ops on a backend. Tensors are row-major with numpy-style shapes; every op
/// returns a new tensor (a CPU op may return a strided view, which the next op reads as is).
pub trait Backend: Sized {
    /// Where weights live: nothing on the CPU, the GPU context on the GPU.
    type Device: Clone;
    type Tensor: Clone + Debug;

    /// A new pass on `device`.
    fn begin(device: &Self::Device) -> Self;

    /// Uploads a weight for `use_` (checked against its shape by the caller's
    /// [`WeightPath::get`]).
    fn param(device: &Self::Device, t: &candle_core::Tensor, use_: Param) -> Result<Self::Tensor>;

    /// Uploads data computed on the CPU (an image, prompt tokens, a mask input) for this pass.
    fn input(&mut self, t: &candle_core::Tensor) -> Result<Self::Tensor>;

    /// The shape of `t`.
    fn dims(t: &Self::Tensor) -> &[usize];

    // Layout.

    /// The same values under another shape with as many elements.
    fn reshape(&mut self, x: &Self::Tensor, shape: &[usize]) -> Result<Self::Tensor>;
    /// Output dim `i` is input dim `perm[i]`.
    fn permute(&mut self, x: &Self::Tensor, perm: &[usize]) -> Result<Self::Tensor>;
    /// `x.narrow(dim, start, len)`.
    fn slice(
        &mut self,
        x: &Self::Tensor,
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Tensor>;
    /// Concatenation along `dim`.
    fn concat(&mut self, xs: &[&Self::Tensor], dim: usize) -> Result<Self::Tensor>;
    /// TinyViT's window partition: tokens `[B, h*w, C]` -> `[B * nH * nW, ws * ws, C]`, the
    /// grid zero-padded at the bottom and right to multiples of `ws` first.
    fn window_partition(
        &mut self,
        x: &Self::Tensor,
        hw: (usize, usize),
        ws: usize,
    ) -> Result<Self::Tensor>;
    /// The reverse: windows -> tokens `[B, h*w, C]`, the padding cropped, plus `residual`.
    fn window_reverse(
        &mut self,
        windows: &Self::Tensor,
        hw: (usize, usize),
        ws: usize,
        residual: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;

    // Compute.

    /// `a + b`, broadcasting as numpy does.
    fn add(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `max(a, b)` elementwise, broadcasting as numpy does.
    fn maximum(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `act(x)`.
    fn activation(&mut self, x: &Self::Tensor, act: Activation) -> Result<Self::Tensor>;
    /// `nn.Linear`: `act(x @ weight^T + bias)` over the last dim, `weight` from
    /// [`Param::Linear`].
    fn linear(
        &mut self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        act: Activation,
    ) -> Result<Self::Tensor>;
    /// `act(alpha * a @ b + bias)` (`b` transposed in its last two dims with `trans_b`), batch
    /// dims broadcast as numpy does; `bias` is `[N]` or `[..batch, 1, N]` (a row per matrix).
    fn matmul(
        &mut self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        opts: Gemm<'_, Self::Tensor>,
    ) -> Result<Self::Tensor>;
    /// `softmax(x)` over the last dim.
    fn softmax(&mut self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// `softmax(scale * q @ k^T + bias) @ v`: q `[B, H, Nq, D]`, k and v `[B, H, Nk, D]`, bias
    /// `[H, Nq, Nk]` shared over B -> `[B, H, Nq, D]`.
    fn attention(
        &mut self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        scale: f32,
    ) -> Result<Self::Tensor>;
    /// SAM ViT's attention with decomposed relative positions:
    /// `softmax(scale * q @ k^T + rel_h[.., k / kw] + rel_w[.., k % kw]) @ v` for q, k and v
    /// `[B, H, N, D]` over a `kh x kw` grid of keys (`Nk = kh * kw`, row-major), `rel`
    /// `[B, H, Nq, kh + kw]`: each query's height terms, then its width terms. The
    /// `[Nq, Nk]` scores are never held whole (the GPU keeps them in registers, the CPU takes
    /// a block of queries at a time): global attention over 4096 tokens would need 64 MiB a
    /// head.
    fn attention_rel_pos(
        &mut self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        rel: &Self::Tensor,
        key_grid: (usize, usize),
        scale: f32,
    ) -> Result<Self::Tensor>;
    /// Multi-head attention of tokens as linear layers give them: q `[B, Nq, H * D]`, k and v
    /// `[B, Nk, H * D]` (or split into heads beforehand, `[B, H, Nk, D]`), head `h` in channels
    /// `h * D .. (h + 1) * D`; the result `[B, Nq, H * D]` holds each head's
    /// `softmax(scale * q_h @ k_h^T) @ v_h` in its channels.
    fn multi_head_attention(
        &mut self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: usize,
        scale: f32,
    ) -> Result<Self::Tensor>;
    /// `nn.LayerNorm` over the last dim, then `act`.
    fn layer_norm(
        &mut self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        eps: f32,
        act: Activation,
    ) -> Result<Self::Tensor>;
    /// SAM's `LayerNorm2d` over the channels of NCHW `x`, then `act`.
    fn layer_norm_2d(
        &mut self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        eps: f32,
        act: Activation,
    ) -> Result<Self::Tensor>;
    /// `act(conv2d(x, weight) + bias + residual)` over NCHW, `weight` from [`Param::Conv`]
    /// (groups 1) or [`Param::Depthwise`] (groups = channels).
    fn conv2d(
        &mut self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        opts: ConvOpts,
        act: Activation,
        residual: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;
    /// `act(conv_transpose2d(x, weight) + bias)`, kernel 2, stride 2, over NCHW; `weight` from
    /// [`Param::ConvTranspose`].
    fn conv_transpose2x2(
        &mut self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        act: Activation,
    ) -> Result<Self::Tensor>;
}

/// Reads `<vb>.<name>` checked against `shape` and uploads it for `use_`.
pub fn load<B: Backend>(
    dev: &B::Device,
    vb: &WeightPath,
    shape: &[usize],
    name: &str,
    use_: Param,
) -> Result<B::Tensor> {
    B::param(dev, &vb.get(shape, name)?, use_)
}

/// The dims of a rank-3 tensor.
pub fn dims3<B: Backend>(t: &B::Tensor) -> Result<(usize, usize, usize)> {
    match B::dims(t) {
        &[a, b, c] => Ok((a, b, c)),
        other => Err(crate::Error::invalid(format!(
            "expected a rank-3 tensor, got shape {other:?}"
        ))),
    }
}

/// The dims of a rank-4 tensor.
pub fn dims4<B: Backend>(t: &B::Tensor) -> Result<(usize, usize, usize, usize)> {
    match B::dims(t) {
        &[a, b, c, d] => Ok((a, b, c, d)),
        other => Err(crate::Error::invalid(format!(
            "expected a rank-4 tensor, got shape {other:?}"
        ))),
    }
}
