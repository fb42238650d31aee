//! Follows `segment_anything/modeling/mask_decoder.py` (MaskDecoder, MLP) and, with
//! [`MaskDecoderConfig::sam2`], `sam2/modeling/sam/mask_decoder.py`: the same decoder with an
//! object-score token, a sigmoid IoU head, high-resolution features in the upscaling and the
//! dynamic fallback to multimask ([`MaskDecoder::select_stable`]).

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::backend::{dims3, load, Activation, Backend, Gemm, Param};
use crate::model::common::{LayerNorm2d, Linear};
use crate::model::config::{
    MaskDecoderConfig, Sam2DecoderConfig, EMBEDDING_SIDE, LAYER_NORM_2D_EPS,
};
use crate::model::transformer::{ImageSide, TwoWayTransformer};
use crate::model::weights::WeightPath;

/// A plain MLP: `num_layers` linears with ReLU between them (from MaskFormer). SAM builds
/// every one with `sigmoid_output=False`; SAM 2's IoU head has the sigmoid.
#[derive(Debug, Clone)]
pub struct MLP<B: Backend> {
    layers: Vec<Linear<B>>,
    sigmoid_output: bool,
}

impl<B: Backend> MLP<B> {
    /// Reads `<vb>.layers.{0..num_layers}`.
    pub fn new(
        dev: &B::Device,
        vb: &WeightPath,
        input_dim: usize,
        hidden_dim: usize,
        output_dim: usize,
        num_layers: usize,
    ) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|i| {
                let n = if i == 0 { input_dim } else { hidden_dim };
                let k = if i + 1 == num_layers {
                    output_dim
                } else {
                    hidden_dim
                };
                Linear::new(dev, &vb.pp("layers").pp(i), n, k, true)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            sigmoid_output: false,
        })
    }

    /// The MLP with a sigmoid on its output (`sigmoid_output=True`).
    pub fn with_sigmoid_output(self) -> Self {
        Self {
            sigmoid_output: true,
            ..self
        }
    }

    pub fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let last = self.layers.len() - 1;
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let act = if i < last {
                Activation::Relu
            } else if self.sigmoid_output {
                Activation::Sigmoid
            } else {
                Activation::None
            };
            x = layer.forward(b, &x, act)?;
        }
        Ok(x)
    }
}

/// The hypernetwork MLPs of a run of mask tokens, stacked: layer `l`'s weights of the MLPs of
/// tokens `tokens` as one `[M, out, in]` tensor and its biases `[M, 1, out]`, so that each
/// layer of all the selected MLPs is one batched product (each token through its own MLP).
#[derive(Debug, Clone)]
struct StackedMlps<B: Backend> {
    layers: Vec<(B::Tensor, B::Tensor)>,
}

impl<B: Backend> StackedMlps<B> {
    /// `output_hypernetworks_mlps.{i}.layers.{0..num_layers}` for `i` in `tokens`.
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        tokens: std::ops::Range<usize>,
        dims: &[usize],
    ) -> Result<Self> {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(l, d)| {
                let (ws, bs) = tokens
                    .clone()
                    .map(|i| {
                        let vb = vb.pp(i).pp("layers").pp(l);
                        Ok((
                            vb.get(&[d[1], d[0]], "weight")?,
                            vb.get(&[d[1]], "bias")?.reshape((1, d[1]))?,
                        ))
                    })
                    .collect::<Result<(Vec<_>, Vec<_>)>>()?;
                Ok((
                    B::param(dev, &Tensor::stack(&ws, 0)?, Param::Plain)?,
                    B::param(dev, &Tensor::stack(&bs, 0)?, Param::Plain)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Tokens `[B, M, in]` -> `[B, M, out]`, ReLU between the layers.
    fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let (n_b, m, c) = dims3::<B>(x)?;
        let mut x = b.reshape(x, &[n_b, m, 1, c])?;
        let last = self.layers.len() - 1;
        for (l, (w, bias)) in self.layers.iter().enumerate() {
            let act = if l < last {
                Activation::Relu
            } else {
                Activation::None
            };
            x = b.matmul(&x, w, Gemm::default().trans_b().bias(bias).act(act))?;
        }
        let out = B::dims(&x)[3];
        b.reshape(&x, &[n_b, m, out])
    }
}

/// A `nn.ConvTranspose2d(kernel 2, stride 2)` with bias.
#[derive(Debug, Clone)]
struct ConvTranspose2x2<B: Backend> {
    weight: B::Tensor,
    bias: B::Tensor,
}

impl<B: Backend> ConvTranspose2x2<B> {
    fn new(dev: &B::Device, vb: &WeightPath, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            weight: load::<B>(
                dev,
                vb,
                &[c_in, c_out, 2, 2],
                "weight",
                Param::ConvTranspose,
            )?,
            bias: load::<B>(dev, vb, &[c_out], "bias", Param::Plain)?,
        })
    }

    fn forward(&self, b: &mut B, x: &B::Tensor, act: Activation) -> Result<B::Tensor> {
        b.conv_transpose2x2(x, &self.weight, Some(&self.bias), act)
    }
}

/// The image side of a decode: the image tokens plus the dense prompt, or the per-image work
/// done beforehand for the no-mask dense prompt.
pub enum ImageInput<'a, B: Backend> {
    /// `src` = image tokens + dense prompt `[1, HW, C]`, computed for this decode.
    Src(&'a B::Tensor),
    /// The per-image work done beforehand (no mask input).
    Cached(&'a ImageSide<B>),
}

/// Predicts masks given an image and prompt embeddings, using a transformer architecture.
#[derive(Debug, Clone)]
pub struct MaskDecoder<B: Backend> {
    transformer: TwoWayTransformer<B>,
    num_multimask_outputs: usize,
    /// SAM 2's `obj_score_token.weight` `[1, C]`, `iou_token.weight` `[1, C]` and
    /// `mask_tokens.weight` `[num_mask_tokens, C]`, concatenated once at load, on the host
    /// (they join the sparse prompt there).
    output_tokens: Tensor,
    /// Where the IoU token is among them: 1 after SAM 2's object-score token, else 0.
    iou_token_index: usize,
    num_mask_tokens: usize,
    sam2: Option<Sam2DecoderConfig>,
    /// `output_upscaling`: ConvT(C->C/4, k2, s2), LN2d, GELU, ConvT(C/4->C/8, k2, s2), GELU.
    upscaling_0: ConvTranspose2x2<B>,
    upscaling_1: LayerNorm2d<B>,
    upscaling_3: ConvTranspose2x2<B>,
    /// `output_hypernetworks_mlps` of the multimask tokens (1..) and of the single one (0).
    hypernetworks_multi: StackedMlps<B>,
    hypernetworks_single: StackedMlps<B>,
    iou_prediction_head: MLP<B>,
}

impl<B: Backend> MaskDecoder<B> {
    /// `vb` is `weights.pp("mask_decoder")`.
    pub fn new(dev: &B::Device, cfg: &MaskDecoderConfig, vb: &WeightPath) -> Result<Self> {
        let dim = cfg.transformer_dim;
        let num_mask_tokens = cfg.num_mask_tokens();
        let transformer = TwoWayTransformer::new(dev, &cfg.transformer, &vb.pp("transformer"))?;
        let iou_token = vb.pp("iou_token").get(&[1, dim], "weight")?;
        let mask_tokens = vb
            .pp("mask_tokens")
            .get(&[num_mask_tokens, dim], "weight")?;
        let mut output_tokens = vec![iou_token, mask_tokens];
        if cfg.sam2.is_some() {
            // `pred_obj_scores`: the object-score token first. Its head
            // (`pred_obj_score_head`) scores objects for video; the image predictor drops it.
            output_tokens.insert(0, vb.pp("obj_score_token").get(&[1, dim], "weight")?);
        }
        let iou_token_index = output_tokens.len() - 2;
        let output_tokens = Tensor::cat(&output_tokens, 0)?;
        let up = vb.pp("output_upscaling");
        let (c4, c8) = (dim / 4, dim / 8);
        let hyper = vb.pp("output_hypernetworks_mlps");
        let hyper_dims = [dim, dim, dim, c8];
        let hypernetworks_multi = StackedMlps::new(dev, &hyper, 1..num_mask_tokens, &hyper_dims)?;
        let hypernetworks_single = StackedMlps::new(dev, &hyper, 0..1, &hyper_dims)?;
        let mut iou_prediction_head = MLP::new(
            dev,
            &vb.pp("iou_prediction_head"),
            dim,
            cfg.iou_head_hidden_dim,
            num_mask_tokens,
            cfg.iou_head_depth,
        )?;
        if cfg.sam2.is_some() {
            iou_prediction_head = iou_prediction_head.with_sigmoid_output();
        }
        Ok(Self {
            transformer,
            num_multimask_outputs: cfg.num_multimask_outputs,
            output_tokens,
            iou_token_index,
            num_mask_tokens,
            sam2: cfg.sam2.clone(),
            upscaling_0: ConvTranspose2x2::new(dev, &up.pp(0), dim, c4)?,
            upscaling_1: LayerNorm2d::new(dev, &up.pp(1), c4, LAYER_NORM_2D_EPS)?,
            upscaling_3: ConvTranspose2x2::new(dev, &up.pp(3), c4, c8)?,
            hypernetworks_multi,
            hypernetworks_single,
            iou_prediction_head,
        })
    }

    /// The output tokens followed by the sparse prompt embeddings `[B, N, C]`, on the host:
    /// the decoder's token input `[B, T + N, C]`, `T` the output tokens (SAM: the IoU token and
    /// the mask tokens; SAM 2: the object-score token first).
    pub fn tokens(&self, sparse: &Tensor) -> Result<Tensor> {
        let (b, _, dim) = sparse.dims3()?;
        let t = self.output_tokens.dim(0)?;
        let output_tokens = self.output_tokens.unsqueeze(0)?.broadcast_as((b, t, dim))?;
        Ok(Tensor::cat(&[&output_tokens, sparse], 1)?)
    }

    /// The transformer's image-only work for `src` (image tokens plus the no-mask dense
    /// prompt, `[1, HW, C]`) and `image_pe` (tokens), done once per image and passed to
    /// `forward`.
    pub fn image_side(
        &self,
        b: &mut B,
        src: &B::Tensor,
        image_pe: &B::Tensor,
    ) -> Result<ImageSide<B>> {
        self.transformer.image_side(b, src, image_pe)
    }

    /// Predicts masks given image and prompt embeddings.
    ///
    /// `image`: the image tokens plus dense prompt (or the per-image work), `[1, HW, C]` for
    /// the 64x64 grid of the embedding; `image_pe` tokens `[1, HW, C]`; `tokens` from
    /// [`Self::tokens`]
    /// `[B, T, C]`; SAM 2's `high_res` features `(feat_s0 [1, C/8, 4h, 4w], feat_s1
    /// [1, C/4, 2h, 2w])`. Returns the low-res mask logits `[B, M, 4h, 4w]` and the IoU
    /// predictions `[B, M]`, with `M = 3` when `multimask_output`, else 1; SAM 2's single-mask
    /// request gives all four (`M = 4`), of which [`Self::select_stable`] keeps one once
    /// they are read.
    pub fn forward(
        &self,
        b: &mut B,
        image: ImageInput<'_, B>,
        image_pe: &B::Tensor,
        tokens: &B::Tensor,
        multimask_output: bool,
        high_res: Option<(&B::Tensor, &B::Tensor)>,
    ) -> Result<(B::Tensor, B::Tensor)> {
        let (h, w) = (EMBEDDING_SIDE, EMBEDDING_SIDE);
        // Select the correct mask or masks for output. Only the selected mask tokens go
        // through their hypernetwork and the final product: each mask depends on its own
        // token alone, so this equals slicing the masks afterwards, without the unused work.
        let mask_slice = if multimask_output {
            1..self.num_mask_tokens
        } else if self.sam2.is_some() {
            0..self.num_mask_tokens
        } else {
            0..1
        };
        if self.sam2.is_some() != high_res.is_some() {
            return Err(Error::invalid(
                "SAM 2's mask decoder takes the high-resolution features, SAM's none",
            ));
        }
        let (src, side) = match image {
            ImageInput::Src(src) => (src, None),
            ImageInput::Cached(side) => (side.keys(), Some(side)),
        };
        let (n_b, _, _) = dims3::<B>(tokens)?;
        let (img_b, hw, c) = dims3::<B>(src)?;
        if img_b != 1 || hw != h * w || B::dims(image_pe) != [1, hw, c] {
            return Err(Error::invalid(format!(
                "the mask decoder takes one image as tokens [1, {h}*{w}, C] and its positional \
                 encoding of the same shape, got {:?} and {:?}",
                B::dims(src),
                B::dims(image_pe)
            )));
        }
        // Expand per-image data in batch direction to be per-mask: the one image's tokens are
        // broadcast by the ops that read them (the cache holds batch-1 work: used at batch 1).
        let side = side.filter(|_| n_b == 1);
        let src = if n_b == 1 {
            src.clone()
        } else {
            let per_mask = vec![src; n_b];
            b.concat(&per_mask, 0)?
        };

        // Run the transformer
        let (hs, src) = self.transformer.forward(b, &src, image_pe, tokens, side)?;
        let s = self.iou_token_index;
        let iou_token_out = b.slice(&hs, 1, s, 1)?;

        // Upscale mask embeddings and predict masks using the mask tokens
        let src = b.reshape(&src, &[n_b, h, w, c])?;
        let src = b.permute(&src, &[0, 3, 1, 2])?; // B x C x h x w
        let upscaled = match high_res {
            None => {
                let x = self.upscaling_0.forward(b, &src, Activation::None)?;
                let x = self.upscaling_1.forward(b, &x, Activation::Gelu)?;
                self.upscaling_3.forward(b, &x, Activation::Gelu)?
            }
            // act1(ln1(dc1(src) + feat_s1)), then act2(dc2(.) + feat_s0): each feature map is
            // one image's, broadcast over the batch.
            Some((feat_s0, feat_s1)) => {
                let x = self.upscaling_0.forward(b, &src, Activation::None)?;
                let x = b.add(&x, feat_s1)?;
                let x = self.upscaling_1.forward(b, &x, Activation::Gelu)?;
                let x = self.upscaling_3.forward(b, &x, Activation::None)?;
                let x = b.add(&x, feat_s0)?;
                b.activation(&x, Activation::Gelu)?
            }
        };
        let &[_, uc, uh, uw] = B::dims(&upscaled) else {
            return Err(Error::invalid("output_upscaling did not return NCHW"));
        };
        let mask_tokens = b.slice(&hs, 1, s + 1 + mask_slice.start, mask_slice.len())?;
        let hyper_in = if mask_slice.start == 1 {
            self.hypernetworks_multi.forward(b, &mask_tokens)?
        } else if mask_slice.len() == 1 {
            self.hypernetworks_single.forward(b, &mask_tokens)?
        } else {
            let single = b.slice(&mask_tokens, 1, 0, 1)?;
            let multi = b.slice(&mask_tokens, 1, 1, mask_slice.len() - 1)?;
            let single = self.hypernetworks_single.forward(b, &single)?;
            let multi = self.hypernetworks_multi.forward(b, &multi)?;
            b.concat(&[&single, &multi], 1)?
        }; // B x M x C/8
        let upscaled = b.reshape(&upscaled, &[n_b, uc, uh * uw])?;
        let masks = b.matmul(&hyper_in, &upscaled, Gemm::default())?;
        let masks = b.reshape(&masks, &[n_b, mask_slice.len(), uh, uw])?;

        // Generate mask quality predictions
        let iou_pred = self.iou_prediction_head.forward(b, &iou_token_out)?;
        let iou_pred = b.reshape(&iou_pred, &[n_b, self.num_mask_tokens])?;
        let iou_pred = b.slice(&iou_pred, 1, mask_slice.start, mask_slice.len())?;

        Ok((masks, iou_pred))
    }

    /// Number of candidate masks in multimask mode.
    pub fn num_multimask_outputs(&self) -> usize {
        self.num_multimask_outputs
    }

    /// Whether this is SAM 2's decoder.
    pub fn is_sam2(&self) -> bool {
        self.sam2.is_some()
    }

    /// SAM 2's `_dynamic_multimask_via_stability` on the read-back output of a single-mask
    /// [`Self::forward`]: per prompt, the single mask (token 0) and its IoU when its
    /// stability score (the area above `delta` over the area above `-delta`, 1 when that is
    /// empty) is at least `thresh`, else the multimask candidate of the highest predicted IoU
    /// (the first of equals). `logits` `[B, 4, H, W]` and `iou` `[B, 4]`, flat; returns
    /// `[B, 1, H, W]` and `[B, 1]`. Multimask outputs, and SAM's, pass through.
    pub fn select_stable(
        &self,
        logits: Vec<f32>,
        iou: Vec<f32>,
        multimask_output: bool,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let Some(picks) = self.stable_picks(&logits, &iou, multimask_output)? else {
            return Ok((logits, iou));
        };
        let m = self.num_mask_tokens;
        let plane = logits.len() / iou.len();
        let mut out_logits = Vec::with_capacity(picks.len() * plane);
        for (p, &pick) in picks.iter().enumerate() {
            let mask = p * m + pick;
            out_logits.extend_from_slice(&logits[mask * plane..(mask + 1) * plane]);
        }
        let out_iou = picks
            .iter()
            .enumerate()
            .map(|(p, &k)| iou[p * m + k])
            .collect();
        Ok((out_logits, out_iou))
    }

    /// The mask [`Self::select_stable`] keeps of each prompt's four (an index into them), or
    /// `None` where every output is kept.
    pub fn stable_picks(
        &self,
        logits: &[f32],
        iou: &[f32],
        multimask_output: bool,
    ) -> Result<Option<Vec<usize>>> {
        let Some(cfg) = self.sam2.as_ref().filter(|_| !multimask_output) else {
            return Ok(None);
        };
        let m = self.num_mask_tokens;
        if iou.is_empty() || !iou.len().is_multiple_of(m) || !logits.len().is_multiple_of(iou.len())
        {
            return Err(Error::invalid(format!(
                "dynamic multimask: {} logits and {} IoU values are not {m} masks a prompt",
                logits.len(),
                iou.len()
            )));
        }
        let plane = logits.len() / iou.len();
        let picks = logits
            .chunks_exact(m * plane)
            .zip(iou.chunks_exact(m))
            .map(|(masks, scores)| {
                let single = &masks[..plane];
                let above = single.iter().filter(|&&v| v > cfg.stability_delta).count();
                let union = single.iter().filter(|&&v| v > -cfg.stability_delta).count();
                let stability = if union > 0 {
                    above as f32 / union as f32
                } else {
                    1.0
                };
                if stability >= cfg.stability_thresh {
                    return 0;
                }
                // torch.argmax: the first of equal maxima.
                let mut best = 1;
                for i in 2..m {
                    if scores[i] > scores[best] {
                        best = i;
                    }
                }
                best
            })
            .collect();
        Ok(Some(picks))
    }
}
