//! candle-transformers' own SAM (MobileSAM: TinyViT-5M + SAM's prompt encoder and mask decoder)
//! as a peer in websam's benchmark: natively (`src/main.rs`) and compiled to wasm (`web`), on the
//! same fixture weights, image and prompts as the other systems.
//!
//! The model is candle-transformers' code, used as its own SAM example uses it: f32 safetensors
//! through `VarBuilder::from_buffered_safetensors`, the image resized to 1024 on its long side
//! with the image crate's CatmullRom filter, normalized and zero-padded to 1024x1024, and the
//! low-res masks upsampled with nearest-neighbour (`Sam::forward`). Two things differ from
//! calling `Sam` directly, both forced by its API and both in this file only:
//!
//! - `Sam` keeps its prompt encoder and mask decoder private and `Sam::forward_for_embeddings`
//!   takes points only, so [`Peer`] assembles the same public parts exactly as `Sam::new_tiny`
//!   does (`tiny_vit_5m`, `PromptEncoder::new`, `MaskDecoder::new`, same arguments) and runs the
//!   same calls. The native binary checks that both give bit-identical results.
//! - candle-transformers 0.11.1's `PromptEncoder::embed_boxes` concatenates the two corner
//!   embeddings along the feature axis: a box comes out as (B, 512) instead of (B, 2, 256), and
//!   `MaskDecoder::forward` then fails on it. The values are right, only the shape is not, so
//!   [`Peer::decode`] reshapes it to (B, 2, 256). With a box and points together the encoder
//!   cannot concatenate them at all; the points are then embedded alone (padded, as without a
//!   box) and the padding token dropped, which gives the unpadded embedding the official code
//!   uses.

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::segment_anything::{
    mask_decoder::MaskDecoder,
    prompt_encoder::PromptEncoder,
    sam::IMAGE_SIZE,
    tiny_vit::{tiny_vit_5m, TinyViT},
};
use image::{imageops::FilterType, DynamicImage, RgbImage};

#[cfg(target_arch = "wasm32")]
mod web;

pub use candle_core::{Error, Result};

/// Constants of `Sam::new_tiny` (private there).
const PROMPT_EMBED_DIM: usize = 256;
const VIT_PATCH_SIZE: usize = 16;
const PIXEL_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
const PIXEL_STD: [f32; 3] = [58.395, 57.12, 57.375];

/// A prompt in the original image's pixel frame.
#[derive(Clone, Debug, Default)]
pub struct Prompt {
    /// (x, y, label): label 1 foreground, 0 background.
    pub points: Vec<(f32, f32, f32)>,
    /// [x0, y0, x1, y1].
    pub bbox: Option<[f32; 4]>,
    /// An optional low-res mask from a previous decode, (1, 1, 256, 256).
    pub mask_input: Option<Tensor>,
    pub multimask: bool,
}

/// One decode: the low-res logits and IoU predictions as the mask decoder gives them, and the
/// best mask (by predicted IoU) at the original image size, thresholded at 0.
pub struct Decoded {
    /// (1, C, 256, 256), C = 3 with multimask, else 1.
    pub low_res: Tensor,
    pub iou: Vec<f32>,
    pub best: usize,
    /// 0/1 per pixel, row-major at the original image size.
    pub mask: Vec<u8>,
}

struct Image {
    /// (1, 256, 64, 64).
    embedding: Tensor,
    original: (usize, usize),
    /// The size after the longest-side resize, (h, w).
    resized: (usize, usize),
}

/// MobileSAM from candle-transformers' modules, assembled as `Sam::new_tiny` assembles it.
pub struct Peer {
    image_encoder: TinyViT,
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    pixel_mean: Tensor,
    pixel_std: Tensor,
    image: Option<Image>,
}

/// The size after resizing the longest side to 1024, as candle's SAM examples compute it.
pub fn resized_size(h: usize, w: usize) -> (usize, usize) {
    if h < w {
        (IMAGE_SIZE * h / w, IMAGE_SIZE)
    } else {
        (IMAGE_SIZE, IMAGE_SIZE * w / h)
    }
}

/// Safetensors bytes to the `VarBuilder` candle's SAM example builds (f32 on the CPU).
pub fn var_builder(weights: Vec<u8>) -> Result<VarBuilder<'static>> {
    VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
}

impl Peer {
    /// From f32 safetensors under the official MobileSAM key names.
    pub fn new(weights: Vec<u8>) -> Result<Self> {
        Self::from_var_builder(var_builder(weights)?)
    }

    pub fn from_var_builder(vb: VarBuilder) -> Result<Self> {
        let image_embedding_size = IMAGE_SIZE / VIT_PATCH_SIZE;
        let image_encoder = tiny_vit_5m(vb.pp("image_encoder"))?;
        let prompt_encoder = PromptEncoder::new(
            PROMPT_EMBED_DIM,
            (image_embedding_size, image_embedding_size),
            (IMAGE_SIZE, IMAGE_SIZE),
            16,
            vb.pp("prompt_encoder"),
        )?;
        let mask_decoder = MaskDecoder::new(PROMPT_EMBED_DIM, 3, 3, 256, vb.pp("mask_decoder"))?;
        let pixel_mean = Tensor::new(&PIXEL_MEAN, vb.device())?.reshape((3, 1, 1))?;
        let pixel_std = Tensor::new(&PIXEL_STD, vb.device())?.reshape((3, 1, 1))?;
        Ok(Self {
            image_encoder,
            prompt_encoder,
            mask_decoder,
            pixel_mean,
            pixel_std,
            image: None,
        })
    }

    /// `Sam::preprocess` then the image encoder (`Sam::embeddings`), on a (3, h, w) u8 tensor
    /// whose longest side is 1024.
    pub fn embeddings(&self, image: &Tensor) -> Result<Tensor> {
        let (_, h, w) = image.dims3()?;
        let image = image
            .to_dtype(DType::F32)?
            .broadcast_sub(&self.pixel_mean)?
            .broadcast_div(&self.pixel_std)?
            .pad_with_zeros(1, 0, IMAGE_SIZE - h)?
            .pad_with_zeros(2, 0, IMAGE_SIZE - w)?
            .unsqueeze(0)?;
        self.image_encoder.forward(&image)
    }

    /// Encodes an image with candle's example preprocessing: resize to 1024 on the longest side
    /// with the image crate's CatmullRom filter (skipped when the image already has that size),
    /// then [`Peer::embeddings`]. `original` is the size prompts and masks refer to.
    pub fn set_image(&mut self, image: &RgbImage, original: (usize, usize)) -> Result<()> {
        let (h, w) = resized_size(original.0, original.1);
        let resized;
        let image = if (image.height() as usize, image.width() as usize) == (h, w) {
            image
        } else {
            resized = image::imageops::resize(image, w as u32, h as u32, FilterType::CatmullRom);
            &resized
        };
        let pixels = Tensor::from_slice(image.as_raw(), (h, w, 3), &Device::Cpu)?;
        let embedding = self.embeddings(&pixels.permute((2, 0, 1))?)?;
        self.image = Some(Image {
            embedding,
            original,
            resized: (h, w),
        });
        Ok(())
    }

    /// [`Peer::set_image`] on RGBA pixels (a canvas' `getImageData`), alpha ignored.
    pub fn set_image_rgba(&mut self, rgba: Vec<u8>, width: u32, height: u32) -> Result<()> {
        let image = image::RgbaImage::from_raw(width, height, rgba).ok_or_else(|| {
            Error::Msg(format!(
                "{width}x{height} RGBA needs {} bytes",
                width * height * 4
            ))
        })?;
        let rgb = DynamicImage::ImageRgba8(image).to_rgb8();
        self.set_image(&rgb, (height as usize, width as usize))
    }

    /// The current image's embedding, (1, 256, 64, 64).
    pub fn embedding(&self) -> Option<&Tensor> {
        self.image.as_ref().map(|i| &i.embedding)
    }

    /// Replaces the current embedding (e.g. by a reference one), keeping the frame of `original`.
    pub fn set_embedding(&mut self, embedding: Tensor, original: (usize, usize)) {
        self.image = Some(Image {
            embedding,
            original,
            resized: resized_size(original.0, original.1),
        });
    }

    /// Prompt encoder and mask decoder on the current embedding, as
    /// `Sam::forward_for_embeddings` runs them (dense positional encoding computed per call),
    /// then the masks at the original image size as `Sam::forward` makes them (nearest-neighbour
    /// upsampling of the low-res logits; here straight from the valid low-res region to the
    /// original size, which picks the same cells as 256 -> 1024, crop, -> original: checked for
    /// 640x480), thresholded at 0.
    pub fn decode(&self, prompt: &Prompt) -> Result<Decoded> {
        let image = self
            .image
            .as_ref()
            .ok_or_else(|| Error::Msg("no image set".into()))?;
        let dev = image.embedding.device();
        let (oh, ow) = image.original;
        let (rh, rw) = image.resized;
        // The original frame to the resized one, computed as `Sam::forward_for_embeddings` does
        // (coordinates in [0, 1] times the resized size).
        let x = |x: f32| (x as f64 / ow as f64) as f32 * rw as f32;
        let y = |y: f32| (y as f64 / oh as f64) as f32 * rh as f32;

        let points = if prompt.points.is_empty() {
            None
        } else {
            let n = prompt.points.len();
            let xy: Vec<f32> = prompt
                .points
                .iter()
                .flat_map(|&(px, py, _)| [x(px), y(py)])
                .collect();
            let labels: Vec<f32> = prompt.points.iter().map(|p| p.2).collect();
            Some((
                Tensor::from_vec(xy, (1, n, 2), dev)?,
                Tensor::from_vec(labels, (1, n), dev)?,
            ))
        };
        let boxes = match prompt.bbox {
            Some([x0, y0, x1, y1]) => Some(Tensor::from_vec(
                vec![x(x0), y(y0), x(x1), y(y1)],
                (1, 4),
                dev,
            )?),
            None => None,
        };
        let mask_input = prompt.mask_input.as_ref();
        let (sparse, dense) = match (&points, &boxes) {
            (Some((xy, labels)), Some(boxes)) => {
                // See the crate docs: the points alone (padded), padding dropped, then the box.
                let (points, dense) =
                    self.prompt_encoder
                        .forward(Some((xy, labels)), None, mask_input)?;
                let points = points.narrow(1, 0, labels.dim(1)?)?;
                let (boxes, _) = self.prompt_encoder.forward(None, Some(boxes), None)?;
                (Tensor::cat(&[&points, &box_tokens(&boxes)?], 1)?, dense)
            }
            (None, Some(boxes)) => {
                let (boxes, dense) = self.prompt_encoder.forward(None, Some(boxes), mask_input)?;
                (box_tokens(&boxes)?, dense)
            }
            (points, None) => {
                let points = points.as_ref().map(|(xy, labels)| (xy, labels));
                self.prompt_encoder.forward(points, None, mask_input)?
            }
        };
        let image_pe = self.prompt_encoder.get_dense_pe()?;
        let (low_res, iou) = self.mask_decoder.forward(
            &image.embedding,
            &image_pe,
            &sparse,
            &dense,
            prompt.multimask,
        )?;
        let iou = iou.flatten_all()?.to_vec1::<f32>()?;
        let best = (0..iou.len()).fold(0, |b, i| if iou[i] > iou[b] { i } else { b });
        let (vh, vw) = (rh * 256 / IMAGE_SIZE, rw * 256 / IMAGE_SIZE);
        let masks = low_res
            .i((.., .., ..vh, ..vw))?
            .contiguous()?
            .upsample_nearest2d(oh, ow)?
            .ge(0f32)?;
        let mask = masks.i((0, best))?.flatten_all()?.to_vec1::<u8>()?;
        Ok(Decoded {
            low_res,
            iou,
            best,
            mask,
        })
    }
}

/// candle-transformers 0.11.1 returns a box's two corner tokens side by side, (B, 512): back to
/// (B, 2, 256) (see the crate docs).
fn box_tokens(boxes: &Tensor) -> Result<Tensor> {
    match boxes.dims() {
        [b, d] if *d == 2 * PROMPT_EMBED_DIM => boxes.reshape((*b, 2, PROMPT_EMBED_DIM)),
        _ => Ok(boxes.clone()),
    }
}
