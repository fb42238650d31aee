//! Layers every module uses: `nn.Linear`, `nn.LayerNorm`, and from
//! `segment_anything/modeling/common.py` `LayerNorm2d` and `MLPBlock`.

use crate::error::Result;
use crate::model::backend::{load, Activation, Backend, Param};
use crate::model::weights::WeightPath;

/// `nn.Linear` with weights `[out, in]` and optional bias, applied over the last dim.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    weight: B::Tensor,
    bias: Option<B::Tensor>,
}

impl<B: Backend> Linear<B> {
    /// Reads `<vb>.weight` `[out, in]` and, with `bias`, `<vb>.bias` `[out]`.
    pub fn new(
        dev: &B::Device,
        vb: &WeightPath,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            weight: load::<B>(dev, vb, &[out_dim, in_dim], "weight", Param::Linear)?,
            bias: if bias {
                Some(load::<B>(dev, vb, &[out_dim], "bias", Param::Plain)?)
            } else {
                None
            },
        })
    }

    /// A linear layer without bias from a weight already uploaded with [`Param::Linear`].
    pub fn from_weight(weight: B::Tensor) -> Self {
        Self { weight, bias: None }
    }

    /// `act(x @ W^T + b)` over the last dim of `x` (any leading dims).
    pub fn forward(&self, b: &mut B, x: &B::Tensor, act: Activation) -> Result<B::Tensor> {
        b.linear(x, &self.weight, self.bias.as_ref(), act)
    }
}

/// `nn.LayerNorm` over the last dim.
#[derive(Debug, Clone)]
pub struct LayerNorm<B: Backend> {
    weight: B::Tensor,
    bias: B::Tensor,
    eps: f32,
}

impl<B: Backend> LayerNorm<B> {
    /// Reads `<vb>.weight` and `<vb>.bias`, both `[dim]`.
    pub fn new(dev: &B::Device, vb: &WeightPath, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: load::<B>(dev, vb, &[dim], "weight", Param::Plain)?,
            bias: load::<B>(dev, vb, &[dim], "bias", Param::Plain)?,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        b.layer_norm(x, &self.weight, &self.bias, self.eps, Activation::None)
    }

    /// The same normalisation over the channels of channel-last tokens `[.., C]` that a
    /// `LayerNorm2d` with these weights does over NCHW.
    pub fn forward_act(&self, b: &mut B, x: &B::Tensor, act: Activation) -> Result<B::Tensor> {
        b.layer_norm(x, &self.weight, &self.bias, self.eps, act)
    }
}

/// `LayerNorm2d`: normalises over the channels of an NCHW tensor.
#[derive(Debug, Clone)]
pub struct LayerNorm2d<B: Backend> {
    weight: B::Tensor,
    bias: B::Tensor,
    eps: f32,
}

impl<B: Backend> LayerNorm2d<B> {
    /// Reads `<vb>.weight` and `<vb>.bias`, both `[channels]`.
    pub fn new(dev: &B::Device, vb: &WeightPath, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: load::<B>(dev, vb, &[channels], "weight", Param::Plain)?,
            bias: load::<B>(dev, vb, &[channels], "bias", Param::Plain)?,
            eps: eps as f32,
        })
    }

    /// `act(norm(x))`, `x` `[B, C, H, W]` (every use in SAM is followed by a GELU or nothing).
    pub fn forward(&self, b: &mut B, x: &B::Tensor, act: Activation) -> Result<B::Tensor> {
        b.layer_norm_2d(x, &self.weight, &self.bias, self.eps, act)
    }
}

/// `MLPBlock`: `lin2(act(lin1(x)))`. The two-way transformer builds it with ReLU.
#[derive(Debug, Clone)]
pub struct MLPBlock<B: Backend> {
    lin1: Linear<B>,
    lin2: Linear<B>,
    act: Activation,
}

impl<B: Backend> MLPBlock<B> {
    pub fn new(
        dev: &B::Device,
        vb: &WeightPath,
        embedding_dim: usize,
        mlp_dim: usize,
        act: Activation,
    ) -> Result<Self> {
        Ok(Self {
            lin1: Linear::new(dev, &vb.pp("lin1"), embedding_dim, mlp_dim, true)?,
            lin2: Linear::new(dev, &vb.pp("lin2"), mlp_dim, embedding_dim, true)?,
            act,
        })
    }

    pub fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let h = self.lin1.forward(b, x, self.act)?;
        self.lin2.forward(b, &h, Activation::None)
    }
}
