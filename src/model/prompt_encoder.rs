//! Follows `segment_anything/modeling/prompt_encoder.py` (PromptEncoder, PositionEmbeddingRandom).

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};
use crate::model::backend::{load, Activation, Backend, ConvOpts, Param};
use crate::model::common::LayerNorm2d;
use crate::model::config::{PromptEncoderConfig, LAYER_NORM_2D_EPS};
use crate::model::weights::WeightPath;

/// Positional encoding using random spatial frequencies.
#[derive(Debug, Clone)]
pub struct PositionEmbeddingRandom {
    /// `positional_encoding_gaussian_matrix`: `[2, num_pos_feats]`.
    gaussian_matrix: Tensor,
}

impl PositionEmbeddingRandom {
    /// Reads the buffer `<vb>.positional_encoding_gaussian_matrix` `[2, num_pos_feats]`.
    pub fn new(vb: &WeightPath, num_pos_feats: usize) -> Result<Self> {
        let gaussian_matrix = vb.get(
            &[/* (x, y) */ 2, num_pos_feats],
            "positional_encoding_gaussian_matrix",
        )?;
        Ok(Self { gaussian_matrix })
    }

    /// Positionally encodes points normalized to [0,1]: `[.., 2]` -> `[.., 2 * num_pos_feats]`.
    fn pe_encoding(&self, coords: &Tensor) -> Result<Tensor> {
        // Assuming coords are in the [0, 1]^2 square and have d_1 x ... x d_n x 2 shape.
        let dims = coords.dims().to_vec();
        let rows = coords.elem_count() / 2;
        let coords = coords.reshape((rows, 2))?.affine(2.0, -1.0)?;
        let coords = coords.matmul(&self.gaussian_matrix)?;
        let coords = coords.affine(2.0 * std::f64::consts::PI, 0.0)?;
        // Outputs d_1 x ... x d_n x C shape.
        let pe = Tensor::cat(&[coords.sin()?, coords.cos()?], D::Minus1)?;
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = pe.dim(1)?;
        Ok(pe.reshape(out_dims)?)
    }

    /// Generates the positional encoding for an `h x w` grid: `[C, h, w]`.
    pub fn forward(&self, h: usize, w: usize) -> Result<Tensor> {
        let device = self.gaussian_matrix.device();
        // Cell centres, (i + 0.5) / size, as `grid.cumsum() - 0.5` in the reference.
        let x_embed = Tensor::arange(0u32, w as u32, device)?
            .to_dtype(DType::F32)?
            .affine(1.0, 0.5)?
            .affine(1.0 / w as f64, 0.0)?
            .reshape((1, w))?
            .broadcast_as((h, w))?;
        let y_embed = Tensor::arange(0u32, h as u32, device)?
            .to_dtype(DType::F32)?
            .affine(1.0, 0.5)?
            .affine(1.0 / h as f64, 0.0)?
            .reshape((h, 1))?
            .broadcast_as((h, w))?;
        let pe = self.pe_encoding(&Tensor::stack(&[x_embed, y_embed], D::Minus1)?)?;
        Ok(pe.permute((2, 0, 1))?) // C x H x W
    }

    /// Positionally encodes points given in pixels of an `image_h x image_w` frame:
    /// `[B, N, 2]` -> `[B, N, C]`.
    pub fn forward_with_coords(
        &self,
        coords: &Tensor,
        image_h: usize,
        image_w: usize,
    ) -> Result<Tensor> {
        // coords[:, :, 0] /= image_w; coords[:, :, 1] /= image_h
        let size = Tensor::new(&[image_w as f32, image_h as f32], coords.device())?;
        self.pe_encoding(&coords.broadcast_div(&size)?)
    }
}

/// Encodes prompts (points, boxes, masks) for the mask decoder. The sparse prompts (a few
/// 256-wide tokens from sin/cos of the clicks) are computed on the host with candle, for every
/// backend: that is less work than one dispatch. The dense path (`mask_downscaling`, the
/// no-mask embedding, the dense positional encoding) lives on the backend.
#[derive(Debug, Clone)]
pub struct PromptEncoder<B: Backend> {
    embed_dim: usize,
    embedding_side: usize,
    input_image_size: usize,
    pe_layer: PositionEmbeddingRandom,
    /// `point_embeddings.{0..3}.weight`, each `[1, embed_dim]`: negative point, positive point,
    /// box top-left corner, box bottom-right corner.
    point_embeddings: Vec<Tensor>,
    not_a_point_embed: Tensor,
    mask_downscaling: MaskDownscaling<B>,
    /// `no_mask_embed.weight` `[1, embed_dim]`, on the host and on the backend.
    no_mask_embed: Tensor,
    no_mask_embed_b: B::Tensor,
    /// `get_dense_pe()`, computed once at load: it depends only on the weights.
    dense_pe: Tensor,
    /// The same as tokens `[1, 64*64, embed_dim]`, on the backend.
    dense_pe_tokens: B::Tensor,
}

/// `mask_downscaling`: Conv(1->c/4, k2, s2), LN2d, GELU, Conv(c/4->c, k2, s2), LN2d, GELU,
/// Conv(c->embed_dim, k1), with `c = mask_in_chans`.
#[derive(Debug, Clone)]
struct MaskDownscaling<B: Backend> {
    conv0: Conv2d<B>,
    norm1: LayerNorm2d<B>,
    conv3: Conv2d<B>,
    norm4: LayerNorm2d<B>,
    conv6: Conv2d<B>,
}

/// A plain `nn.Conv2d` with bias, no padding, stride = kernel size.
#[derive(Debug, Clone)]
struct Conv2d<B: Backend> {
    weight: B::Tensor,
    bias: B::Tensor,
    stride: usize,
}

impl<B: Backend> Conv2d<B> {
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        c_in: usize,
        c_out: usize,
        kernel: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: load::<B>(
                dev,
                vb,
                &[c_out, c_in, kernel, kernel],
                "weight",
                Param::Conv,
            )?,
            bias: load::<B>(dev, vb, &[c_out], "bias", Param::Plain)?,
            stride: kernel,
        })
    }

    fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<B::Tensor> {
        let opts = ConvOpts::new(self.stride, /* padding */ 0);
        b.conv2d(
            x,
            &self.weight,
            Some(&self.bias),
            opts,
            Activation::None,
            None,
        )
    }
}

impl<B: Backend> MaskDownscaling<B> {
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        mask_in_chans: usize,
        embed_dim: usize,
    ) -> Result<Self> {
        let hidden = mask_in_chans / 4;
        Ok(Self {
            conv0: Conv2d::new(dev, &vb.pp(0), 1, hidden, /* kernel */ 2)?,
            norm1: LayerNorm2d::new(dev, &vb.pp(1), hidden, LAYER_NORM_2D_EPS)?,
            conv3: Conv2d::new(dev, &vb.pp(3), hidden, mask_in_chans, /* kernel */ 2)?,
            norm4: LayerNorm2d::new(dev, &vb.pp(4), mask_in_chans, LAYER_NORM_2D_EPS)?,
            conv6: Conv2d::new(
                dev,
                &vb.pp(6),
                mask_in_chans,
                embed_dim,
                /* kernel */ 1,
            )?,
        })
    }

    fn forward(&self, b: &mut B, masks: &B::Tensor) -> Result<B::Tensor> {
        let x = self.conv0.forward(b, masks)?;
        let x = self.norm1.forward(b, &x, Activation::Gelu)?;
        let x = self.conv3.forward(b, &x)?;
        let x = self.norm4.forward(b, &x, Activation::Gelu)?;
        self.conv6.forward(b, &x)
    }
}

impl<B: Backend> PromptEncoder<B> {
    /// `vb` is `weights.pp("prompt_encoder")`.
    pub fn new(dev: &B::Device, cfg: &PromptEncoderConfig, vb: &WeightPath) -> Result<Self> {
        let embed_dim = cfg.embed_dim;
        let pe_layer = PositionEmbeddingRandom::new(&vb.pp("pe_layer"), embed_dim / 2)?;
        let point_embeddings = (0..cfg.num_point_embeddings)
            .map(|i| {
                vb.pp("point_embeddings")
                    .pp(i)
                    .get(&[1, embed_dim], "weight")
            })
            .collect::<Result<Vec<_>>>()?;
        let not_a_point_embed = vb.pp("not_a_point_embed").get(&[1, embed_dim], "weight")?;
        let mask_downscaling = MaskDownscaling::new(
            dev,
            &vb.pp("mask_downscaling"),
            cfg.mask_in_chans,
            embed_dim,
        )?;
        let no_mask_embed = vb.pp("no_mask_embed").get(&[1, embed_dim], "weight")?;
        let dense_pe = pe_layer
            .forward(cfg.embedding_side, cfg.embedding_side)?
            .unsqueeze(0)?
            .contiguous()?;
        // [1, C, H, W] -> [1, HW, C]
        let dense_pe_tokens = dense_pe.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        Ok(Self {
            embed_dim,
            embedding_side: cfg.embedding_side,
            input_image_size: cfg.input_image_size,
            pe_layer,
            point_embeddings,
            not_a_point_embed,
            mask_downscaling,
            no_mask_embed_b: B::param(dev, &no_mask_embed, Param::Plain)?,
            no_mask_embed,
            dense_pe,
            dense_pe_tokens: B::param(dev, &dense_pe_tokens, Param::Plain)?,
        })
    }

    /// The positional encoding of the image embedding grid: `[1, embed_dim, 64, 64]`.
    pub fn get_dense_pe(&self) -> Result<Tensor> {
        Ok(self.dense_pe.clone())
    }

    /// Embeds point prompts: coords `[B, N, 2]`, labels `[B, N]` -> `[B, N (+1 if pad), C]`.
    fn embed_points(&self, points: &Tensor, labels: &Tensor, pad: bool) -> Result<Tensor> {
        let points = points.affine(1.0, 0.5)?; // Shift to center of pixel
        let (points, labels) = if pad {
            let b = points.dim(0)?;
            let padding_point = Tensor::zeros((b, 1, 2), DType::F32, points.device())?;
            let padding_label = Tensor::full(-1f32, (labels.dim(0)?, 1), labels.device())?;
            (
                Tensor::cat(&[&points, &padding_point], 1)?,
                Tensor::cat(&[labels, &padding_label], 1)?,
            )
        } else {
            (points, labels.clone())
        };
        let pe = self.pe_layer.forward_with_coords(
            &points,
            self.input_image_size,
            self.input_image_size,
        )?;
        // Per-label masks `[B, N, 1]`: 1.0 where the label matches.
        let is = |label: f64| -> Result<Tensor> {
            Ok(labels
                .eq(label)?
                .to_dtype(DType::F32)?
                .unsqueeze(D::Minus1)?)
        };
        let (pad_mask, neg_mask, pos_mask) = (is(-1.0)?, is(0.0)?, is(1.0)?);
        // SAM 2's labels 2 and 3: a box's corners given as points (the image predictor puts
        // them first), which SAM's labels never are.
        let (tl_mask, br_mask) = (is(2.0)?, is(3.0)?);
        // point_embedding[labels == -1] = 0.0
        let point_embedding = pe.broadcast_mul(&pad_mask.affine(-1.0, 1.0)?)?;
        // point_embedding[labels == -1] += not_a_point_embed
        let point_embedding =
            point_embedding.broadcast_add(&pad_mask.broadcast_mul(&self.not_a_point_embed)?)?;
        // point_embedding[labels == 0] += point_embeddings[0]
        let point_embedding =
            point_embedding.broadcast_add(&neg_mask.broadcast_mul(&self.point_embeddings[0])?)?;
        // point_embedding[labels == 1] += point_embeddings[1]
        let point_embedding =
            point_embedding.broadcast_add(&pos_mask.broadcast_mul(&self.point_embeddings[1])?)?;
        // point_embedding[labels == 2] += point_embeddings[2], [labels == 3] likewise
        let point_embedding =
            point_embedding.broadcast_add(&tl_mask.broadcast_mul(&self.point_embeddings[2])?)?;
        let point_embedding =
            point_embedding.broadcast_add(&br_mask.broadcast_mul(&self.point_embeddings[3])?)?;
        Ok(point_embedding)
    }

    /// Embeds box prompts: `[B, 4]` -> `[B, 2, C]`.
    fn embed_boxes(&self, boxes: &Tensor) -> Result<Tensor> {
        let boxes = boxes.affine(1.0, 0.5)?; // Shift to center of pixel
        let coords = boxes.reshape(((), 2, 2))?;
        let corner_embedding = self.pe_layer.forward_with_coords(
            &coords,
            self.input_image_size,
            self.input_image_size,
        )?;
        // corner_embedding[:, 0, :] += point_embeddings[2]; [:, 1, :] += point_embeddings[3]
        let corners = Tensor::cat(&[&self.point_embeddings[2], &self.point_embeddings[3]], 0)?;
        Ok(corner_embedding.broadcast_add(&corners)?)
    }

    /// The dense positional encoding as tokens `[1, 64*64, C]`, on the backend.
    pub fn dense_pe_tokens(&self) -> &B::Tensor {
        &self.dense_pe_tokens
    }

    /// `no_mask_embed.weight` `[1, C]`, on the backend: the dense prompt without a mask input.
    pub fn no_mask_embed(&self) -> &B::Tensor {
        &self.no_mask_embed_b
    }

    /// Embeds mask inputs: `[B, 1, 256, 256]` -> `[B, C, 64, 64]`.
    pub fn embed_masks(&self, b: &mut B, masks: &B::Tensor) -> Result<B::Tensor> {
        self.mask_downscaling.forward(b, masks)
    }

    /// The batch size of the output given the batch size of the input prompts.
    fn get_batch_size(
        points: Option<(&Tensor, &Tensor)>,
        boxes: Option<&Tensor>,
        masks: Option<&Tensor>,
    ) -> Result<usize> {
        Ok(if let Some((coords, _)) = points {
            coords.dim(0)?
        } else if let Some(boxes) = boxes {
            boxes.dim(0)?
        } else if let Some(masks) = masks {
            masks.dim(0)?
        } else {
            1
        })
    }

    /// Checks the prompt shapes, so that a wrong one is named rather than failing deep inside.
    fn check_inputs(
        &self,
        points: Option<(&Tensor, &Tensor)>,
        boxes: Option<&Tensor>,
        masks: Option<&Tensor>,
    ) -> Result<()> {
        if let Some((coords, labels)) = points {
            let (b, n, two) = coords.dims3().map_err(|_| {
                Error::invalid(format!(
                    "point coords must be [B, N, 2], got {:?}",
                    coords.dims()
                ))
            })?;
            if two != 2 || labels.dims() != [b, n] {
                return Err(Error::invalid(format!(
                    "point coords [B, N, 2] and labels [B, N] expected, got {:?} and {:?}",
                    coords.dims(),
                    labels.dims()
                )));
            }
        }
        if let Some(boxes) = boxes {
            if boxes.rank() != 2 || boxes.dim(1)? != 4 {
                return Err(Error::invalid(format!(
                    "boxes must be [B, 4] (x0, y0, x1, y1), got {:?}",
                    boxes.dims()
                )));
            }
        }
        if let Some(masks) = masks {
            let side = 4 * self.embedding_side;
            if masks.rank() != 4 || masks.dims()[1..] != [1, side, side] {
                return Err(Error::invalid(format!(
                    "mask input must be [B, 1, {side}, {side}], got {:?}",
                    masks.dims()
                )));
            }
        }
        Ok(())
    }

    /// The sparse prompt embeddings `[B, n_tokens, C]`, on the host.
    ///
    /// `points`: coords `[B, N, 2]` in the input frame (not yet shifted by 0.5) and labels
    /// `[B, N]` (1 positive, 0 negative, -1 padding; SAM 2's 2 and 3: a box's corners). `boxes`: `[B, 4]` (x0, y0, x1, y1) in the
    /// input frame. `masks`, when given, only sets the batch size and is checked. As in the
    /// reference, a padding point (0, 0) with label -1 is appended to the points when no box
    /// is given.
    pub fn sparse(
        &self,
        points: Option<(&Tensor, &Tensor)>,
        boxes: Option<&Tensor>,
        masks: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.check_inputs(points, boxes, masks)?;
        let bs = Self::get_batch_size(points, boxes, masks)?;
        let device = self.no_mask_embed.device();
        let mut sparse: Vec<Tensor> = Vec::with_capacity(2);
        if let Some((coords, labels)) = points {
            sparse.push(self.embed_points(coords, labels, boxes.is_none())?);
        }
        if let Some(boxes) = boxes {
            sparse.push(self.embed_boxes(boxes)?);
        }
        Ok(match sparse.len() {
            0 => Tensor::zeros((bs, 0, self.embed_dim), DType::F32, device)?,
            1 => sparse.pop().expect("one"),
            _ => Tensor::cat(&sparse, 1)?,
        })
    }

    /// Embeds the prompts, returning sparse embeddings `[B, n_tokens, C]` (on the host) and
    /// dense embeddings `[B, C, 64, 64]` (on the backend), as the reference's `forward`.
    pub fn forward(
        &self,
        b: &mut B,
        points: Option<(&Tensor, &Tensor)>,
        boxes: Option<&Tensor>,
        masks: Option<&Tensor>,
    ) -> Result<(Tensor, B::Tensor)> {
        let sparse_embeddings = self.sparse(points, boxes, masks)?;
        let bs = sparse_embeddings.dim(0)?;
        let dense_embeddings = match masks {
            Some(masks) => {
                let masks = b.input(masks)?;
                self.embed_masks(b, &masks)?
            }
            None => b.input(
                &self
                    .no_mask_embed
                    .reshape((1, self.embed_dim, 1, 1))?
                    .broadcast_as((bs, self.embed_dim, self.embedding_side, self.embedding_side))?
                    .contiguous()?,
            )?,
        };
        Ok((sparse_embeddings, dense_embeddings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::Cpu;
    use crate::model::config::SamConfig;
    use crate::model::weights::Weights;
    use candle_core::Device;

    /// A prompt encoder with random weights under the official keys.
    fn random_prompt_encoder() -> (PromptEncoder<Cpu>, PromptEncoderConfig) {
        let cfg = SamConfig::mobile_sam().prompt_encoder;
        let (d, m) = (cfg.embed_dim, cfg.mask_in_chans);
        let shapes: Vec<(String, Vec<usize>)> = vec![
            (
                "pe_layer.positional_encoding_gaussian_matrix".into(),
                vec![2, d / 2],
            ),
            ("point_embeddings.0.weight".into(), vec![1, d]),
            ("point_embeddings.1.weight".into(), vec![1, d]),
            ("point_embeddings.2.weight".into(), vec![1, d]),
            ("point_embeddings.3.weight".into(), vec![1, d]),
            ("not_a_point_embed.weight".into(), vec![1, d]),
            ("no_mask_embed.weight".into(), vec![1, d]),
            ("mask_downscaling.0.weight".into(), vec![m / 4, 1, 2, 2]),
            ("mask_downscaling.0.bias".into(), vec![m / 4]),
            ("mask_downscaling.1.weight".into(), vec![m / 4]),
            ("mask_downscaling.1.bias".into(), vec![m / 4]),
            ("mask_downscaling.3.weight".into(), vec![m, m / 4, 2, 2]),
            ("mask_downscaling.3.bias".into(), vec![m]),
            ("mask_downscaling.4.weight".into(), vec![m]),
            ("mask_downscaling.4.bias".into(), vec![m]),
            ("mask_downscaling.6.weight".into(), vec![d, m, 1, 1]),
            ("mask_downscaling.6.bias".into(), vec![d]),
        ];
        let weights = Weights::from_tensors(shapes.into_iter().map(|(k, s)| {
            let t = Tensor::randn(0f32, 1.0, s, &Device::Cpu).expect("randn");
            (format!("prompt_encoder.{k}"), t)
        }))
        .expect("weights");
        let pe =
            PromptEncoder::new(&(), &cfg, &weights.pp("prompt_encoder")).expect("prompt encoder");
        (pe, cfg)
    }

    #[test]
    fn padding_point_only_without_box() {
        let (pe, cfg) = random_prompt_encoder();
        let dev = Device::Cpu;
        let coords = Tensor::new(&[[[10f32, 20.0], [30.0, 40.0]]], &dev).unwrap();
        let labels = Tensor::new(&[[1f32, 0.0]], &dev).unwrap();
        let boxes = Tensor::new(&[[1f32, 2.0, 300.0, 400.0]], &dev).unwrap();
        let side = cfg.embedding_side;

        let (sparse, dense) = pe
            .forward(&mut Cpu, Some((&coords, &labels)), None, None)
            .unwrap();
        assert_eq!(sparse.dims(), [1, 3, cfg.embed_dim]); // 2 points + padding point
        assert_eq!(dense.dims(), [1, cfg.embed_dim, side, side]);
        // The padding token is exactly `not_a_point_embed`.
        let pad = sparse.narrow(1, 2, 1).unwrap().squeeze(1).unwrap();
        let diff = (pad - &pe.not_a_point_embed).unwrap().abs().unwrap();
        assert_eq!(diff.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);

        let (sparse, _) = pe
            .forward(&mut Cpu, Some((&coords, &labels)), Some(&boxes), None)
            .unwrap();
        assert_eq!(sparse.dims(), [1, 4, cfg.embed_dim]); // 2 points + 2 box corners
        let (sparse, _) = pe.forward(&mut Cpu, None, Some(&boxes), None).unwrap();
        assert_eq!(sparse.dims(), [1, 2, cfg.embed_dim]);
        let (sparse, dense) = pe.forward(&mut Cpu, None, None, None).unwrap();
        assert_eq!(sparse.dims(), [1, 0, cfg.embed_dim]);
        assert_eq!(dense.dims(), [1, cfg.embed_dim, side, side]);
        assert_eq!(
            pe.get_dense_pe().unwrap().dims(),
            [1, cfg.embed_dim, side, side]
        );
    }

    #[test]
    fn wrong_prompt_shapes_are_named() {
        let (pe, _) = random_prompt_encoder();
        let dev = Device::Cpu;
        let coords = Tensor::zeros((1, 2, 3), DType::F32, &dev).unwrap();
        let labels = Tensor::zeros((1, 2), DType::F32, &dev).unwrap();
        let err = pe
            .forward(&mut Cpu, Some((&coords, &labels)), None, None)
            .unwrap_err();
        assert!(err.to_string().contains("[1, 2, 3]"), "{err}");
        let mask = Tensor::zeros((1, 1, 64, 64), DType::F32, &dev).unwrap();
        let err = pe.forward(&mut Cpu, None, None, Some(&mask)).unwrap_err();
        assert!(err.to_string().contains("[1, 1, 64, 64]"), "{err}");
    }
}
