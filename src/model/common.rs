//! Layers every module uses: `nn.Linear`, `nn.LayerNorm`, from
//! `segment_anything/modeling/common.py` `LayerNorm2d` and `MLPBlock`, and the neck both image
//! encoders end with.

use crate::error::{Error, Result};
use crate::model::backend::{load, Activation, Backend, ConvOpts, Param};
use crate::model::config::LAYER_NORM_2D_EPS;
use crate::model::weights::WeightPath;

/// `NCHW [B, C, H, W]` -> tokens `[B, H*W, C]`.
pub fn to_tokens<B: Backend>(b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
    let &[n, c, h, w] = B::dims(x) else {
        return Err(Error::invalid(format!(
            "expected NCHW, got {:?}",
            B::dims(x)
        )));
    };
    let x = b.reshape(x, &[n, c, h * w])?;
    b.permute(&x, &[0, 2, 1])
}

/// Tokens `[B, h*w, C]` -> `NCHW [B, C, h, w]`.
pub fn to_nchw<B: Backend>(b: &mut B, x: &B::Tensor, (h, w): (usize, usize)) -> Result<B::Tensor> {
    let &[n, l, c] = B::dims(x) else {
        return Err(Error::invalid(format!(
            "expected tokens, got {:?}",
            B::dims(x)
        )));
    };
    if l != h * w {
        return Err(Error::invalid(format!("{l} tokens for a {h}x{w} grid")));
    }
    let x = b.reshape(x, &[n, h, w, c])?;
    b.permute(&x, &[0, 3, 1, 2])
}

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

    /// A linear layer from a weight uploaded with [`Param::Linear`] and a bias with
    /// [`Param::Plain`] (a 1x1 conv's, reshaped).
    pub fn from_weight_and_bias(weight: B::Tensor, bias: Option<B::Tensor>) -> Self {
        Self { weight, bias }
    }

    /// `act(x @ W^T + b)` over the last dim of `x` (any leading dims).
    pub fn forward(&self, b: &mut B, x: &B::Tensor, act: Activation) -> Result<B::Tensor> {
        b.linear(x, &self.weight, self.bias.as_ref(), act)
    }
}

/// `PatchEmbed` (SAM's ViT and SAM 2's Hiera alike): a `Conv2d(in, C, kernel, stride,
/// padding)` with bias under `<vb>.proj`, the image NCHW -> tokens `[B, h*w, C]`.
#[derive(Debug, Clone)]
pub struct PatchEmbed<B: Backend> {
    weight: B::Tensor,
    bias: B::Tensor,
    opts: ConvOpts,
}

impl<B: Backend> PatchEmbed<B> {
    /// Reads `<vb>.proj.weight` `[out, in, kernel, kernel]` and `<vb>.proj.bias`.
    pub fn new(
        dev: &B::Device,
        vb: &WeightPath,
        (in_chans, out_chans): (usize, usize),
        kernel: usize,
        opts: ConvOpts,
    ) -> Result<Self> {
        let proj = vb.pp("proj");
        Ok(Self {
            weight: load::<B>(
                dev,
                &proj,
                &[out_chans, in_chans, kernel, kernel],
                "weight",
                Param::Conv,
            )?,
            bias: load::<B>(dev, &proj, &[out_chans], "bias", Param::Plain)?,
            opts,
        })
    }

    /// The image `[B, in, H, W]` -> tokens `[B, h*w, C]` and their grid `(h, w)`.
    pub fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<(B::Tensor, (usize, usize))> {
        let y = b.conv2d(
            x,
            &self.weight,
            Some(&self.bias),
            self.opts,
            Activation::None,
            None,
        )?;
        let grid = match B::dims(&y) {
            &[_, _, h, w] => (h, w),
            other => return Err(Error::invalid(format!("patch embedding gave {other:?}"))),
        };
        Ok((to_tokens(b, &y)?, grid))
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

/// `MLPBlock`: `lin2(act(lin1(x)))`. The two-way transformer builds it with ReLU. SAM 2's
/// two-layer `MLP` is the same computation under the keys `layers.0`, `layers.1`.
#[derive(Debug, Clone)]
pub struct MLPBlock<B: Backend> {
    lin1: Linear<B>,
    lin2: Linear<B>,
    act: Activation,
}

impl<B: Backend> MLPBlock<B> {
    /// Reads `<vb>.lin1` and `<vb>.lin2`.
    pub fn new(
        dev: &B::Device,
        vb: &WeightPath,
        embedding_dim: usize,
        mlp_dim: usize,
        act: Activation,
    ) -> Result<Self> {
        Self::with_keys(dev, vb, ["lin1", "lin2"], embedding_dim, mlp_dim, act)
    }

    /// Reads the two layers under `<vb>.<keys[0]>` and `<vb>.<keys[1]>`.
    pub fn with_keys(
        dev: &B::Device,
        vb: &WeightPath,
        keys: [&str; 2],
        embedding_dim: usize,
        mlp_dim: usize,
        act: Activation,
    ) -> Result<Self> {
        Ok(Self {
            lin1: Linear::new(dev, &vb.pp(keys[0]), embedding_dim, mlp_dim, true)?,
            lin2: Linear::new(dev, &vb.pp(keys[1]), mlp_dim, embedding_dim, true)?,
            act,
        })
    }

    pub fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let h = self.lin1.forward(b, x, self.act)?;
        self.lin2.forward(b, &h, Activation::None)
    }
}

/// The neck's second conv: 3x3, padding 1.
const NECK_KERNEL: usize = 3;

/// The image encoders' neck (TinyViT's and SAM ViT's alike): `Conv2d(C, out, 1, bias=False)`,
/// `LayerNorm2d`, `Conv2d(out, out, 3, padding=1, bias=False)`, `LayerNorm2d`, keys `0` to
/// `3`. The 1x1 conv runs as a linear layer on the tokens and the first `LayerNorm2d` as a
/// `LayerNorm` over their channels (the same normalisation), so only one transpose to NCHW is
/// needed, before the 3x3 conv.
#[derive(Debug, Clone)]
pub struct Neck<B: Backend> {
    /// `0` as a linear weight `[out_chans, in_chans]`.
    conv_1x1: Linear<B>,
    /// `1`, over the channels of the tokens.
    norm_1: LayerNorm<B>,
    /// `2`: `[out_chans, out_chans, 3, 3]`.
    conv_3x3: B::Tensor,
    norm_2: LayerNorm2d<B>,
}

impl<B: Backend> Neck<B> {
    /// `vb`: the weights under `image_encoder.neck`.
    pub fn new(
        dev: &B::Device,
        vb: &WeightPath,
        in_chans: usize,
        out_chans: usize,
    ) -> Result<Self> {
        let conv_1x1 = vb
            .pp(0)
            .get(&[out_chans, in_chans, 1, 1], "weight")?
            .reshape((out_chans, in_chans))?;
        Ok(Self {
            conv_1x1: Linear::from_weight(B::param(dev, &conv_1x1, Param::Linear)?),
            norm_1: LayerNorm::new(dev, &vb.pp(1), out_chans, LAYER_NORM_2D_EPS)?,
            conv_3x3: load::<B>(
                dev,
                &vb.pp(2),
                &[out_chans, out_chans, NECK_KERNEL, NECK_KERNEL],
                "weight",
                Param::Conv,
            )?,
            norm_2: LayerNorm2d::new(dev, &vb.pp(3), out_chans, LAYER_NORM_2D_EPS)?,
        })
    }

    /// Tokens `[B, h*w, C]` -> NCHW `[B, out_chans, h, w]`.
    pub fn forward(&self, b: &mut B, x: &B::Tensor, grid: (usize, usize)) -> Result<B::Tensor> {
        let x = self.conv_1x1.forward(b, x, Activation::None)?;
        let x = self.norm_1.forward(b, &x)?;
        let x = to_nchw(b, &x, grid)?;
        let opts = ConvOpts::new(1, NECK_KERNEL / 2);
        let x = b.conv2d(&x, &self.conv_3x3, None, opts, Activation::None, None)?;
        self.norm_2.forward(b, &x, Activation::None)
    }
}
