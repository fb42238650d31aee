//! Follows `segment_anything/modeling/mask_decoder.py` (MaskDecoder, MLP).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};

use crate::error::{Error, Result};
use crate::model::config::{MaskDecoderConfig, LAYER_NORM_2D_EPS};
use crate::model::conv::{contiguous_f32, Activation};
use crate::model::ops::{self, Linear};
use crate::model::transformer::{ImageSide, TwoWayTransformer};
use crate::model::weights::WeightPath;
use crate::threads;

/// A plain MLP: `num_layers` linears with ReLU between them (from MaskFormer).
#[derive(Debug, Clone)]
pub struct MLP {
    layers: Vec<Linear>,
    sigmoid_output: bool,
}

impl MLP {
    /// Reads `<vb>.layers.{0..num_layers}`.
    pub fn new(
        vb: &WeightPath,
        input_dim: usize,
        hidden_dim: usize,
        output_dim: usize,
        num_layers: usize,
        sigmoid_output: bool,
    ) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|i| {
                let n = if i == 0 { input_dim } else { hidden_dim };
                let k = if i + 1 == num_layers {
                    output_dim
                } else {
                    hidden_dim
                };
                Linear::new(&vb.pp("layers").pp(i), n, k, true)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            sigmoid_output,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let last = self.layers.len() - 1;
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i < last {
                x = ops::relu(&x)?;
            }
        }
        if self.sigmoid_output {
            x = candle_nn::ops::sigmoid(&x)?;
        }
        Ok(x)
    }
}

/// `nn.ConvTranspose2d` with bias, no padding, stride = kernel size (the 2x2/s2 upscaling),
/// on channel-last images.
///
/// With stride equal to the kernel size the output patches do not overlap: each input pixel
/// writes its own `k x k` patch, `x[:, i, j, :] @ W.reshape(in, out * k * k)`. So the layer is
/// one GEMM plus a pixel shuffle (about 5x faster on the CPU than candle's direct
/// `conv_transpose2d`, which the tests use as the reference). The weight's columns are kept
/// in `(ky, kx, out)` order, so each output pixel's channels are one contiguous run of a GEMM
/// row, and the shuffle runs with what follows the conv (bias, a channel layer norm, GELU)
/// fused into one pass ([`ShuffleEpilogue`]).
#[derive(Debug, Clone)]
struct ConvTranspose2d {
    /// `[in, k * k * out]`: PyTorch's `[in, out, k, k]` permuted to `[in, k, k, out]`.
    weight: Tensor,
    bias: Vec<f32>,
    c_out: usize,
    kernel: usize,
}

impl ConvTranspose2d {
    fn new(vb: &WeightPath, c_in: usize, c_out: usize, kernel: usize) -> Result<Self> {
        let weight = vb.get(&[c_in, c_out, kernel, kernel], "weight")?;
        Ok(Self {
            weight: weight
                .permute((0, 2, 3, 1))?
                .contiguous()?
                .reshape((c_in, kernel * kernel * c_out))?,
            bias: vb.get(&[c_out], "bias")?.to_vec1::<f32>()?,
            c_out,
            kernel,
        })
    }

    /// Channel-last `[B, H, W, in]` -> `[B, H * k, W * k, out]`.
    #[cfg(test)]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_fused(x, None, Activation::Identity)
    }

    /// Channel-last `[B, H, W, in]` -> `act(norm(conv(x)))` `[B, H * k, W * k, out]`.
    fn forward_fused(
        &self,
        x: &Tensor,
        norm: Option<&ChannelNorm>,
        act: Activation,
    ) -> Result<Tensor> {
        let (b, h, w, c_in) = x.dims4()?;
        let y = threads::matmul(&x.reshape((b * h * w, c_in))?, &self.weight)?; // BHW x (k * k * out)
        let epilogue = ShuffleEpilogue {
            conv: self,
            dims: (b, h, w),
            norm,
            act,
        };
        Ok(y.apply_op1_no_bwd(&epilogue)?)
    }
}

/// `LayerNorm2d` of a channel-last image: a layer norm over each pixel's channels.
#[derive(Debug, Clone)]
struct ChannelNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl ChannelNorm {
    fn new(vb: &WeightPath, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(&[channels], "weight")?.to_vec1::<f32>()?,
            bias: vb.get(&[channels], "bias")?.to_vec1::<f32>()?,
            eps: eps as f32,
        })
    }

    /// In place over one pixel's channels, as the reference: `u = mean(x)`,
    /// `s = mean((x - u)^2)`, `(x - u) / sqrt(s + eps) * weight + bias`.
    fn apply(&self, x: &mut [f32]) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + self.eps).sqrt();
        for ((v, w), b) in x.iter_mut().zip(&self.weight).zip(&self.bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// The pixel shuffle of a [`ConvTranspose2d`]'s GEMM output with its bias, an optional
/// channel layer norm and an activation, in one pass: `[B * H * W, k * k * out]` ->
/// `[B, H * k, W * k, out]`.
struct ShuffleEpilogue<'a> {
    conv: &'a ConvTranspose2d,
    dims: (usize, usize, usize),
    norm: Option<&'a ChannelNorm>,
    act: Activation,
}

impl CustomOp1 for ShuffleEpilogue<'_> {
    fn name(&self) -> &'static str {
        "conv-transpose-shuffle"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(storage, layout, self.name())?;
        let (b, h, w) = self.dims;
        let (k, c) = (self.conv.kernel, self.conv.c_out);
        let row = k * k * c;
        if layout.shape().dims() != [b * h * w, row] {
            candle_core::bail!(
                "{}: GEMM output {:?} for a {b}x{h}x{w} input and {row} columns",
                self.name(),
                layout.shape()
            );
        }
        let (out_h, out_w) = (h * k, w * k);
        let mut out = vec![0f32; b * out_h * out_w * c];
        // One output row (of `out_w` pixels) at a time: input row `i` fills rows `i * k + ky`.
        threads::for_chunks(&mut out, out_w * c, |r, dst_row| {
            let (bi, oy) = (r / out_h, r % out_h);
            let (i, ky) = (oy / k, oy % k);
            let src_row = &y[(bi * h + i) * w * row..][..w * row];
            for (ox, dst) in dst_row.chunks_exact_mut(c).enumerate() {
                let (j, kx) = (ox / k, ox % k);
                let src = &src_row[j * row + (ky * k + kx) * c..][..c];
                for ((d, s), bias) in dst.iter_mut().zip(src).zip(&self.conv.bias) {
                    *d = s + bias;
                }
                if let Some(norm) = self.norm {
                    norm.apply(dst);
                }
                self.act.apply_slice(dst);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, out_h, out_w, c))))
    }
}

/// `output_upscaling`: ConvT(C->C/4, k2, s2), LN2d, GELU, ConvT(C/4->C/8, k2, s2), GELU.
///
/// Runs channel-last: the transformer hands the image back as `[B, HW, C]`, and there
/// `LayerNorm2d` (a norm over channels) is a layer norm over each pixel's channels, with the
/// same weights and eps. Each conv's shuffle, bias, norm and GELU are one pass.
#[derive(Debug, Clone)]
struct OutputUpscaling {
    conv0: ConvTranspose2d,
    norm1: ChannelNorm,
    conv3: ConvTranspose2d,
}

impl OutputUpscaling {
    fn new(vb: &WeightPath, transformer_dim: usize) -> Result<Self> {
        let (c4, c8) = (transformer_dim / 4, transformer_dim / 8);
        Ok(Self {
            conv0: ConvTranspose2d::new(&vb.pp(0), transformer_dim, c4, /* kernel */ 2)?,
            norm1: ChannelNorm::new(&vb.pp(1), c4, LAYER_NORM_2D_EPS)?,
            conv3: ConvTranspose2d::new(&vb.pp(3), c4, c8, /* kernel */ 2)?,
        })
    }

    /// Channel-last `[B, H, W, C]` -> `[B, 4H, 4W, C/8]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self
            .conv0
            .forward_fused(x, Some(&self.norm1), Activation::Gelu)?;
        self.conv3.forward_fused(&x, None, Activation::Gelu)
    }
}

/// Predicts masks given an image and prompt embeddings, using a transformer architecture.
#[derive(Debug, Clone)]
pub struct MaskDecoder {
    transformer: TwoWayTransformer,
    num_multimask_outputs: usize,
    /// `iou_token.weight` `[1, C]` and `mask_tokens.weight` `[num_mask_tokens, C]`,
    /// concatenated once at load.
    output_tokens: Tensor,
    num_mask_tokens: usize,
    output_upscaling: OutputUpscaling,
    output_hypernetworks_mlps: Vec<MLP>,
    iou_prediction_head: MLP,
}

impl MaskDecoder {
    /// `vb` is `weights.pp("mask_decoder")`.
    pub fn new(cfg: &MaskDecoderConfig, vb: &WeightPath) -> Result<Self> {
        let dim = cfg.transformer_dim;
        let num_mask_tokens = cfg.num_mask_tokens();
        let transformer = TwoWayTransformer::new(&cfg.transformer, &vb.pp("transformer"))?;
        let iou_token = vb.pp("iou_token").get(&[1, dim], "weight")?;
        let mask_tokens = vb
            .pp("mask_tokens")
            .get(&[num_mask_tokens, dim], "weight")?;
        let output_tokens = Tensor::cat(&[iou_token, mask_tokens], 0)?;
        let output_upscaling = OutputUpscaling::new(&vb.pp("output_upscaling"), dim)?;
        let output_hypernetworks_mlps = (0..num_mask_tokens)
            .map(|i| {
                MLP::new(
                    &vb.pp("output_hypernetworks_mlps").pp(i),
                    dim,
                    dim,
                    dim / 8,
                    /* num_layers */ 3,
                    /* sigmoid_output */ false,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let iou_prediction_head = MLP::new(
            &vb.pp("iou_prediction_head"),
            dim,
            cfg.iou_head_hidden_dim,
            num_mask_tokens,
            cfg.iou_head_depth,
            /* sigmoid_output */ false,
        )?;
        Ok(Self {
            transformer,
            num_multimask_outputs: cfg.num_multimask_outputs,
            output_tokens,
            num_mask_tokens,
            output_upscaling,
            output_hypernetworks_mlps,
            iou_prediction_head,
        })
    }

    /// Predicts masks given image and prompt embeddings.
    ///
    /// `image_embeddings` `[1, C, 64, 64]`, `image_pe` `[1, C, 64, 64]`, `sparse` `[B, N, C]`,
    /// `dense` `[B or 1, C, 64, 64]`. Returns the low-res mask logits `[B, M, 256, 256]` and
    /// the IoU predictions `[B, M]`, with `M = 3` when `multimask_output`, else 1.
    ///
    /// `side`, from `image_side` for this image embedding and `dense`, skips the transformer's
    /// image-only work.
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask_output: bool,
        side: Option<&ImageSide>,
    ) -> Result<(Tensor, Tensor)> {
        // Select the correct mask or masks for output. Only the selected mask tokens go
        // through their hypernetwork and the final product: each mask depends on its own
        // token alone, so this equals slicing the masks afterwards, without the unused work.
        let mask_slice = if multimask_output {
            1..self.num_mask_tokens
        } else {
            0..1
        };
        self.predict_masks(image_embeddings, image_pe, sparse, dense, mask_slice, side)
    }

    /// The transformer's image-only work for `image_embeddings` `[1, C, h, w]` with the dense
    /// prompt `dense` `[1, C, h, w]` (the no-mask embedding: the same for every prompt without
    /// a mask input), done once per image and passed to `forward`.
    pub fn image_side(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        dense: &Tensor,
    ) -> Result<ImageSide> {
        let src = image_embeddings.broadcast_add(dense)?;
        self.transformer.image_side(&src, image_pe)
    }

    /// Predicts the masks of the mask tokens in `mask_slice`, and their IoU. See `forward`.
    fn predict_masks(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse_prompt_embeddings: &Tensor,
        dense_prompt_embeddings: &Tensor,
        mask_slice: std::ops::Range<usize>,
        side: Option<&ImageSide>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, _, dim) = sparse_prompt_embeddings.dims3()?;
        let (img_b, c, h, w) = image_embeddings.dims4()?;
        if img_b != 1 || image_pe.dims4()? != (1, c, h, w) {
            return Err(Error::invalid(format!(
                "the mask decoder takes one image embedding [1, C, H, W] and its positional \
                 encoding of the same shape, got {:?} and {:?}",
                image_embeddings.dims(),
                image_pe.dims()
            )));
        }

        // Concatenate output tokens
        let output_tokens =
            self.output_tokens
                .unsqueeze(0)?
                .broadcast_as((b, 1 + self.num_mask_tokens, dim))?;
        let tokens = Tensor::cat(&[&output_tokens, sparse_prompt_embeddings], 1)?;

        // Expand per-image data in batch direction to be per-mask
        // (`repeat_interleave` of the one image embedding is a broadcast; the positional
        // encoding stays at batch 1 and is broadcast inside the transformer).
        let side = side.filter(|_| b == 1);
        let src = match side {
            // The image side already holds src's tokens.
            Some(_) => image_embeddings.clone(),
            None => image_embeddings
                .broadcast_add(dense_prompt_embeddings)?
                .broadcast_as((b, c, h, w))?,
        };
        let pos_src = image_pe;

        // Run the transformer
        let (hs, src) = self.transformer.forward(&src, pos_src, &tokens, side)?;
        let iou_token_out = hs.narrow(1, 0, 1)?.squeeze(1)?;
        let mask_tokens_out = hs.narrow(1, 1, self.num_mask_tokens)?;

        // Upscale mask embeddings and predict masks using the mask tokens
        // `src` stays channel-last, [B, HW, C] -> [B, H, W, C], where the reference
        // transposes it back to [B, C, H, W].
        let src = src.reshape((b, h, w, c))?;
        let upscaled_embedding = self.output_upscaling.forward(&src)?; // B x 4H x 4W x C/8
        let hyper_in_list = mask_slice
            .clone()
            .map(|i| self.output_hypernetworks_mlps[i].forward(&mask_tokens_out.narrow(1, i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let hyper_in = Tensor::cat(&hyper_in_list, 1)?; // B x M x C/8
        let (b, h, w, c) = upscaled_embedding.dims4()?;
        // hyper_in @ upscaled_embedding.view(b, c, h * w), the transpose read by the GEMM.
        let masks = threads::matmul(&hyper_in, &upscaled_embedding.reshape((b, h * w, c))?.t()?)?
            .reshape((b, (), h, w))?;

        // Generate mask quality predictions
        let iou_pred = self.iou_prediction_head.forward(&iou_token_out)?;
        let iou_pred = iou_pred
            .narrow(D::Minus1, mask_slice.start, mask_slice.len())?
            .contiguous()?;

        Ok((masks, iou_pred))
    }

    /// Number of candidate masks in multimask mode.
    pub fn num_multimask_outputs(&self) -> usize {
        self.num_multimask_outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::max_abs_diff;
    use crate::model::weights::Weights;
    use candle_core::Device;

    /// The fused upscaling (GEMM, shuffle, bias, channel norm, GELU in one pass) equals the
    /// reference's sequence of separate ops, run with candle's own kernels on NCHW.
    #[test]
    fn fused_upscaling_matches_separate_ops() {
        let dev = Device::Cpu;
        let (c, h, w) = (16, 5, 3);
        let (c4, c8) = (c / 4, c / 8);
        let randn = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let tensors = [
            ("0.weight", randn(&[c, c4, 2, 2])),
            ("0.bias", randn(&[c4])),
            ("1.weight", randn(&[c4])),
            ("1.bias", randn(&[c4])),
            ("3.weight", randn(&[c4, c8, 2, 2])),
            ("3.bias", randn(&[c8])),
        ];
        let weights =
            Weights::from_tensors(tensors.iter().map(|(k, t)| ((*k).to_owned(), t.clone())))
                .unwrap();
        let up = OutputUpscaling::new(&weights.pp(""), c).unwrap();
        let x = randn(&[2, c, h, w]);
        let got = up
            .forward(&x.permute((0, 2, 3, 1)).unwrap())
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap();
        let conv = |x: &Tensor, i: usize, c_out: usize| {
            x.conv_transpose2d(&tensors[i].1, 0, 0, 2, 1)
                .unwrap()
                .broadcast_add(&tensors[i + 1].1.reshape((1, c_out, 1, 1)).unwrap())
                .unwrap()
        };
        let norm = ops::LayerNorm2d::new(&weights.pp("1"), c4, LAYER_NORM_2D_EPS).unwrap();
        let y = norm.forward(&conv(&x, 0, c4)).unwrap().gelu_erf().unwrap();
        let expected = conv(&y, 4, c8).gelu_erf().unwrap();
        assert_eq!(got.dims(), [2, c8, 4 * h, 4 * w]);
        let diff = max_abs_diff(&got, &expected);
        assert!(diff < 1e-5, "{diff}");
    }

    /// The GEMM + pixel-shuffle form equals candle's direct transposed convolution.
    #[test]
    fn conv_transpose_matches_candle() {
        let dev = Device::Cpu;
        for (b, c_in, c_out, k, h, w) in
            [(1, 8, 4, 2, 5, 7), (2, 3, 5, 2, 4, 3), (1, 4, 2, 3, 3, 2)]
        {
            let weight = Tensor::randn(0f32, 1.0, (c_in, c_out, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, c_out, &dev).unwrap();
            let weights = Weights::from_tensors([
                ("t.weight".to_owned(), weight.clone()),
                ("t.bias".to_owned(), bias.clone()),
            ])
            .unwrap();
            let conv = ConvTranspose2d::new(&weights.pp("t"), c_in, c_out, k).unwrap();
            let x = Tensor::randn(0f32, 1.0, (b, c_in, h, w), &dev).unwrap();
            let ours = conv
                .forward(&x.permute((0, 2, 3, 1)).unwrap())
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            let reference = x
                .conv_transpose2d(&weight, 0, 0, k, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), reference.dims());
            let diff = max_abs_diff(&ours, &reference);
            assert!(diff < 1e-5, "b={b} c_in={c_in} c_out={c_out} k={k}: {diff}");
        }
    }
}
