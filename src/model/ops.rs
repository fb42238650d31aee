//! The neural-network primitives the model is written against, on candle (CPU).

use candle_core::{Module, Tensor};

use crate::error::Result;
use crate::model::conv::{Activation, Epilogue};
use crate::model::weights::WeightPath;
use crate::threads;

/// `nn.Linear` with weights `[out, in]` and optional bias, applied over the last dim.
#[derive(Debug, Clone)]
pub struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Reads `<vb>.weight` `[out, in]` and, with `bias`, `<vb>.bias` `[out]`.
    pub fn new(vb: &WeightPath, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get(&[out_dim, in_dim], "weight")?;
        let bias = if bias {
            Some(vb.get(&[out_dim], "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// `x @ W^T + b` over the last dim of `x` (any leading dims).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let y = threads::matmul(&x.reshape((rows, in_dim))?, &self.weight_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.weight_t.dim(1)?;
        Ok(y.reshape(out_dims)?)
    }
}

/// `nn.LayerNorm` over the last dim.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
}

impl LayerNorm {
    /// Reads `<vb>.weight` and `<vb>.bias`, both `[dim]`.
    pub fn new(vb: &WeightPath, dim: usize, eps: f64) -> Result<Self> {
        let w = vb.get(&[dim], "weight")?;
        let b = vb.get(&[dim], "bias")?;
        Ok(Self {
            inner: candle_nn::LayerNorm::new(w, b, eps),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.inner.forward(x)?)
    }
}

/// SAM's `LayerNorm2d`: normalises over channels of an NCHW tensor.
#[derive(Debug, Clone)]
pub struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm2d {
    /// Reads `<vb>.weight` and `<vb>.bias`, both `[channels]`.
    pub fn new(vb: &WeightPath, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(&[channels], "weight")?.reshape((channels, 1, 1))?,
            bias: vb.get(&[channels], "bias")?.reshape((channels, 1, 1))?,
            eps,
        })
    }

    /// `x`: `[B, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // u = x.mean(1); s = (x - u)^2.mean(1); x = (x - u) / sqrt(s + eps); w * x + b
        let u = x.mean_keepdim(1)?;
        let xc = x.broadcast_sub(&u)?;
        let s = xc.sqr()?.mean_keepdim(1)?;
        let x = xc.broadcast_div(&(s + self.eps)?.sqrt()?)?;
        Ok(x.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// GELU, exact erf form (PyTorch's `nn.GELU()` default), through the vectorizable
/// [`crate::model::conv::erf`] on a copy of `x`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    let epilogue = Epilogue {
        bias: None,
        act: Activation::Gelu,
    };
    epilogue.apply(x.copy()?)
}

/// ReLU.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(x.relu()?)
}

/// Softmax over the last dim.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(x)?)
}
