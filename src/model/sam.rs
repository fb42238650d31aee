//! The predictor flow of `segment_anything/predictor.py` (`SamPredictor`): embed an image once,
//! then decode prompts given in the original image's pixel coordinates.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, TensorId};

use crate::error::{Error, Result};
use crate::image::{
    postprocess_logits, preprocess, stability_score, threshold, ImageFrame, RgbImage,
};
use crate::model::config::{SamConfig, EMBEDDING_SIDE, EMBED_DIM, LOW_RES_SIDE};
use crate::model::mask_decoder::MaskDecoder;
use crate::model::prompt_encoder::PromptEncoder;
use crate::model::tiny_vit::TinyViT;
use crate::model::transformer::ImageSide;
use crate::model::weights::Weights;

/// Key that only MobileSAM's TinyViT encoder has (its first Conv2d_BN).
const TINY_VIT_PROBE_KEY: &str = "image_encoder.patch_embed.seq.0.c.weight";
/// Key that only SAM's ViT encoders (ViT-B/L/H) have.
const VIT_PROBE_KEY: &str = "image_encoder.pos_embed";

/// Which image encoder a checkpoint carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    /// MobileSAM's TinyViT-5M: supported.
    TinyVit,
    /// SAM's ViT-B/L/H: the decoder runs; encoding an image is not supported yet.
    Vit,
    /// A decoder-only checkpoint (`prompt_encoder.*` and `mask_decoder.*`).
    None,
}

impl EncoderKind {
    /// Tells the encoder from the checkpoint's keys.
    pub fn detect(weights: &Weights) -> Self {
        if weights.contains(TINY_VIT_PROBE_KEY) {
            EncoderKind::TinyVit
        } else if weights.contains(VIT_PROBE_KEY) {
            EncoderKind::Vit
        } else {
            EncoderKind::None
        }
    }
}

/// A point prompt's label, as `SamPredictor` takes them (1, 0) plus the padding label (-1)
/// that the ONNX-style decoder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointLabel {
    /// 1: part of the object.
    Positive,
    /// 0: not part of the object.
    Negative,
    /// -1: an ignored (padding) point.
    NotAPoint,
}

impl PointLabel {
    /// Reads the reference's integer labels.
    pub fn from_i32(label: i32) -> Result<Self> {
        match label {
            1 => Ok(PointLabel::Positive),
            0 => Ok(PointLabel::Negative),
            -1 => Ok(PointLabel::NotAPoint),
            other => Err(Error::invalid(format!(
                "point label {other}: use 1 (positive), 0 (negative) or -1 (ignored)"
            ))),
        }
    }

    /// The label value the prompt encoder expects.
    pub fn value(self) -> f32 {
        match self {
            PointLabel::Positive => 1.0,
            PointLabel::Negative => 0.0,
            PointLabel::NotAPoint => -1.0,
        }
    }
}

/// A click, in the original image's pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub label: PointLabel,
}

/// Everything one decode takes, in the original image's pixel coordinates.
#[derive(Debug, Clone, Default)]
pub struct Prompt {
    pub points: Vec<Point>,
    /// `[x0, y0, x1, y1]`.
    pub bbox: Option<[f64; 4]>,
    /// Low-res logits of a previous prediction (`256 * 256`), fed back to refine it.
    pub mask_input: Option<Vec<f32>>,
    /// Three candidate masks (true) or the single-mask output (false).
    pub multimask: bool,
}

/// The image embedding and the frame of the image it was computed from.
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    /// `[1, 256, 64, 64]`, f32.
    pub features: Tensor,
    pub frame: ImageFrame,
}

impl ImageEmbedding {
    /// Wraps features computed elsewhere (e.g. read from `.npy`), checking their shape.
    /// `[256, 64, 64]` is accepted and given its batch dim.
    pub fn new(features: Tensor, frame: ImageFrame) -> Result<Self> {
        let expected = [1, EMBED_DIM, EMBEDDING_SIDE, EMBEDDING_SIDE];
        let features = if features.dims() == &expected[1..] {
            features.unsqueeze(0)?
        } else {
            features
        };
        if features.dims() != expected {
            return Err(Error::invalid(format!(
                "image embedding has shape {:?}, expected {expected:?}",
                features.dims()
            )));
        }
        let features = features.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        Ok(Self { features, frame })
    }

    /// Reads features saved as `.npy` (f32 or f16, C order): what `websam embed` and the
    /// official web demo's export write.
    pub fn from_npy_bytes(bytes: &[u8], frame: ImageFrame) -> Result<Self> {
        let (shape, data) = read_npy_f32(bytes)?;
        Self::new(Tensor::from_vec(data, shape, &Device::Cpu)?, frame)
    }

    /// Features as a flat `Vec` (C-order `[1, 256, 64, 64]`).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        Ok(self.features.flatten_all()?.to_vec1()?)
    }

    /// The features as `.npy` bytes (float32, C order, shape `[1, 256, 64, 64]`), the file the
    /// official demo reads; [`ImageEmbedding::from_npy_bytes`] reads it back.
    pub fn to_npy_bytes(&self) -> Result<Vec<u8>> {
        use npyz::WriterBuilder;
        let shape: Vec<u64> = self.features.dims().iter().map(|&d| d as u64).collect();
        let data = self.to_vec()?;
        let mut out = Vec::with_capacity(data.len() * 4 + 128);
        let io = |e: std::io::Error| Error::invalid(format!("writing .npy: {e}"));
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut out)
            .begin_nd()
            .map_err(io)?;
        w.extend(data).map_err(io)?;
        w.finish().map_err(io)?;
        Ok(out)
    }
}

/// One output mask at the original image size.
#[derive(Debug, Clone)]
pub struct Mask {
    /// `height * width` values, 1 inside the mask, 0 outside.
    pub data: Vec<u8>,
    pub width: usize,
    pub height: usize,
    /// The predicted IoU.
    pub score: f32,
    /// `calculate_stability_score` with offset 1.0.
    pub stability_score: f32,
}

/// The decoder's output for one prompt.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// `num_masks * 256 * 256` low-res logits.
    pub low_res_logits: Vec<f32>,
    /// Predicted IoU per mask.
    pub iou: Vec<f32>,
    /// The frame the prompt was given in.
    pub frame: ImageFrame,
}

impl Prediction {
    /// Number of masks: 3 for multimask, else 1.
    pub fn num_masks(&self) -> usize {
        self.iou.len()
    }

    /// Index of the mask with the highest predicted IoU.
    pub fn best(&self) -> usize {
        self.iou
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0
    }

    /// Low-res logits of mask `i` (`256 * 256`).
    pub fn low_res(&self, i: usize) -> &[f32] {
        let n = LOW_RES_SIDE * LOW_RES_SIDE;
        &self.low_res_logits[i * n..(i + 1) * n]
    }

    /// Logits of mask `i` at the original image size (`Sam.postprocess_masks`).
    pub fn logits(&self, i: usize) -> Result<Vec<f32>> {
        if i >= self.num_masks() {
            return Err(Error::invalid(format!(
                "mask index {i} out of range ({} masks)",
                self.num_masks()
            )));
        }
        postprocess_logits(self.low_res(i), &self.frame)
    }

    /// Every mask at the original image size, thresholded at 0, with its scores.
    pub fn masks(&self) -> Result<Vec<Mask>> {
        crate::threads::map(self.num_masks(), |i| {
            self.mask_from_logits(i, &self.logits(i)?)
        })
    }

    /// Mask `i` from its logits at the original size (computed here by [`Self::logits`], or
    /// on the GPU).
    pub fn mask_from_logits(&self, i: usize, logits: &[f32]) -> Result<Mask> {
        let (height, width) = self.frame.original;
        if logits.len() != height * width || i >= self.num_masks() {
            return Err(Error::invalid(format!(
                "mask {i}: {} logits for a {width}x{height} image with {} masks",
                logits.len(),
                self.num_masks()
            )));
        }
        Ok(Mask {
            data: threshold(logits),
            width,
            height,
            score: self.iou[i],
            stability_score: stability_score(logits),
        })
    }
}

/// SAM with MobileSAM's encoder (when the checkpoint has it), prompt encoder and mask decoder.
pub struct Sam {
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    image_encoder: Option<TinyViT>,
    encoder_kind: EncoderKind,
    /// The dense positional encoding, the same for every image.
    image_pe: Tensor,
    /// The decoder's image-only work for the last embedding decoded without a mask input,
    /// keyed by the features' tensor (tensors are immutable: a new embedding has a new id).
    image_side: Mutex<Option<(TensorId, ImageSide)>>,
}

impl Sam {
    /// Builds the model from loaded weights. The prompt encoder and mask decoder are required;
    /// the TinyViT encoder is built when the checkpoint has it.
    pub fn new(weights: &Weights) -> Result<Self> {
        let cfg = SamConfig::mobile_sam();
        if !weights.has_prefix("mask_decoder.") && !weights.has_prefix("prompt_encoder.") {
            return Err(Error::format(
                "no `prompt_encoder.*` or `mask_decoder.*` tensors: not a SAM checkpoint",
            ));
        }
        let prompt_encoder =
            PromptEncoder::new(&cfg.prompt_encoder, &weights.pp("prompt_encoder"))?;
        let mask_decoder = MaskDecoder::new(&cfg.mask_decoder, &weights.pp("mask_decoder"))?;
        let encoder_kind = EncoderKind::detect(weights);
        let image_encoder = match encoder_kind {
            EncoderKind::TinyVit => {
                Some(TinyViT::new(&cfg.tiny_vit, &weights.pp("image_encoder"))?)
            }
            EncoderKind::Vit | EncoderKind::None => None,
        };
        let image_pe = prompt_encoder.get_dense_pe()?;
        Ok(Self {
            prompt_encoder,
            mask_decoder,
            image_encoder,
            encoder_kind,
            image_pe,
            image_side: Mutex::new(None),
        })
    }

    /// Reads a checkpoint file (`.pth`, `.pt`, `.safetensors`) and builds the model.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::new(&Weights::from_file(path)?)
    }

    /// Builds the model from checkpoint bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::new(&Weights::from_bytes(bytes)?)
    }

    /// Which image encoder the checkpoint carries.
    pub fn encoder_kind(&self) -> EncoderKind {
        self.encoder_kind
    }

    /// `SamPredictor.set_image`: the embedding of an RGB image, computed once per image.
    pub fn embed(&self, image: &RgbImage) -> Result<ImageEmbedding> {
        let encoder = self
            .image_encoder
            .as_ref()
            .ok_or_else(|| match self.encoder_kind {
                EncoderKind::Vit => Error::UnsupportedModel(
                    "this checkpoint's image encoder is SAM's ViT, which websam does not run yet; \
                 decode works from an embedding made elsewhere"
                        .into(),
                ),
                _ => Error::UnsupportedModel(
                    "this checkpoint has no image encoder (decoder only); decode from an embedding"
                        .into(),
                ),
            })?;
        let (input, frame) = preprocess(image)?;
        let features = encoder.forward(&input)?;
        ImageEmbedding::new(features, frame)
    }

    /// `SamPredictor.predict`: masks for a prompt given in the original image's coordinates.
    /// The decoder's image-only work for `embedding` with the no-mask `dense` prompt, from the
    /// cache when it holds this embedding.
    fn image_side(&self, embedding: &ImageEmbedding, dense: &Tensor) -> Result<ImageSide> {
        let id = embedding.features.id();
        let mut cache = self.image_side.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, side)) = cache.as_ref() {
            if *cached == id {
                return Ok(side.clone());
            }
        }
        let side = self
            .mask_decoder
            .image_side(&embedding.features, &self.image_pe, dense)?;
        *cache = Some((id, side.clone()));
        Ok(side)
    }

    /// Does the decoder's image-only work for `embedding` now (after `embed`, so that the first
    /// prompt does not wait for it); `decode` takes it from the cache.
    pub fn prepare_decoder(&self, embedding: &ImageEmbedding) -> Result<()> {
        let (_, dense) = self.prompt_encoder.forward(None, None, None)?;
        self.image_side(embedding, &dense).map(|_| ())
    }

    pub fn decode(&self, embedding: &ImageEmbedding, prompt: &Prompt) -> Result<Prediction> {
        let p = PromptTensors::new(prompt, &embedding.frame)?;
        // Embed prompts
        let (sparse, dense) = self.prompt_encoder.forward(
            p.points.as_ref().map(|(c, l)| (c, l)),
            p.boxes.as_ref(),
            p.mask_input.as_ref(),
        )?;
        // The dense prompt is the no-mask embedding without a mask input: then the decoder's
        // image-only work is done once per image.
        let side = match p.mask_input {
            Some(_) => None,
            None => Some(self.image_side(embedding, &dense)?),
        };
        // Predict masks
        let (low_res, iou) = self.mask_decoder.forward(
            &embedding.features,
            &self.image_pe,
            &sparse,
            &dense,
            prompt.multimask,
            side.as_ref(),
        )?;
        Ok(Prediction {
            low_res_logits: low_res.flatten_all()?.to_vec1()?,
            iou: iou.flatten_all()?.to_vec1()?,
            frame: embedding.frame,
        })
    }
}

/// A prompt checked against its image and transformed to the encoder's 1024 frame, as the
/// tensors the prompt encoder takes (batch 1).
#[derive(Debug, Clone)]
pub struct PromptTensors {
    /// Coordinates `[1, N, 2]` and labels `[1, N]`.
    pub points: Option<(Tensor, Tensor)>,
    /// `[1, 4]`.
    pub boxes: Option<Tensor>,
    /// `[1, 1, 256, 256]`.
    pub mask_input: Option<Tensor>,
}

impl PromptTensors {
    /// Checks `prompt` (points and box on the image, box not empty, mask input 256x256 and
    /// finite) and transforms it (`ResizeLongestSide.apply_coords` / `apply_boxes`).
    pub fn new(prompt: &Prompt, frame: &ImageFrame) -> Result<Self> {
        let (height, width) = frame.original;
        let dev = Device::Cpu;
        let points = if prompt.points.is_empty() {
            None
        } else {
            let mut coords = Vec::with_capacity(prompt.points.len() * 2);
            let mut labels = Vec::with_capacity(prompt.points.len());
            for (i, p) in prompt.points.iter().enumerate() {
                check_inside(p.x, p.y, width, height, &format!("point {i}"))?;
                let (x, y) = frame.apply_coords(p.x, p.y);
                coords.extend([x, y]);
                labels.push(p.label.value());
            }
            let n = labels.len();
            Some((
                Tensor::from_vec(coords, (1, n, 2), &dev)?,
                Tensor::from_vec(labels, (1, n), &dev)?,
            ))
        };
        let boxes = match prompt.bbox {
            None => None,
            Some([x0, y0, x1, y1]) => {
                check_inside(x0, y0, width, height, "box corner (x0, y0)")?;
                check_inside(x1, y1, width, height, "box corner (x1, y1)")?;
                if !(x1 > x0 && y1 > y0) {
                    return Err(Error::invalid(format!(
                        "box [{x0}, {y0}, {x1}, {y1}] is empty: it needs x1 > x0 and y1 > y0"
                    )));
                }
                let (ax, ay) = frame.apply_coords(x0, y0);
                let (bx, by) = frame.apply_coords(x1, y1);
                Some(Tensor::from_vec(vec![ax, ay, bx, by], (1, 4), &dev)?)
            }
        };
        let mask_input = match &prompt.mask_input {
            None => None,
            Some(m) => {
                let n = LOW_RES_SIDE * LOW_RES_SIDE;
                if m.len() != n {
                    return Err(Error::invalid(format!(
                        "mask input must hold {LOW_RES_SIDE}x{LOW_RES_SIDE} = {n} low-res logits, got {}",
                        m.len()
                    )));
                }
                if m.iter().any(|v| !v.is_finite()) {
                    return Err(Error::invalid("mask input holds NaN or infinite values"));
                }
                Some(Tensor::from_slice(
                    m,
                    (1, 1, LOW_RES_SIDE, LOW_RES_SIDE),
                    &dev,
                )?)
            }
        };
        Ok(Self {
            points,
            boxes,
            mask_input,
        })
    }
}

/// Reads an `.npy` array held in memory as f32 (f32 or f16 stored, C order).
pub fn read_npy_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    let bad = |e: std::io::Error| Error::invalid(format!("not a readable .npy array: {e}"));
    let npy = npyz::NpyFile::new(bytes).map_err(bad)?;
    if npy.order() != npyz::Order::C {
        return Err(Error::invalid(
            ".npy array is in Fortran order; save it in C order",
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let data: Vec<f32> = match npy.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 4 => {
            npy.into_vec::<f32>().map_err(bad)?
        }
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 2 => {
            npy.into_vec::<half::f16>()
                .map_err(bad)?
                .into_iter()
                .map(f32::from)
                .collect()
        }
        other => {
            return Err(Error::invalid(format!(
                ".npy array has dtype {}; expected float32 or float16",
                other.descr()
            )))
        }
    };
    Ok((shape, data))
}

/// Errors unless `(x, y)` lies on the image (edges included).
fn check_inside(x: f64, y: f64, width: usize, height: usize, what: &str) -> Result<()> {
    let inside = x.is_finite()
        && y.is_finite()
        && (0.0..=width as f64).contains(&x)
        && (0.0..=height as f64).contains(&y);
    if inside {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} ({x}, {y}) is outside the {width}x{height} image"
        )))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// The decoder's per-image work, done once and reused, gives what the full forward gives
    /// (to f32 rounding), for single and multimask prompts and a second image.
    #[test]
    fn image_side_cache_equals_the_full_decoder() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let sam = Sam::from_file(dir.join("sam_decoder.safetensors")).unwrap();
        let npy = std::fs::read(dir.join("embedding.npy")).unwrap();
        let frame = ImageFrame::new(480, 640).unwrap();
        let first = ImageEmbedding::from_npy_bytes(&npy, frame).unwrap();
        let second = ImageEmbedding::new((&first.features * 0.5).unwrap(), frame).unwrap();
        let click = |x, y, multimask| Prompt {
            points: vec![Point {
                x,
                y,
                label: PointLabel::Positive,
            }],
            multimask,
            ..Prompt::default()
        };
        for (embedding, prompt) in [
            (&first, click(161.0, 150.0, true)),
            (&first, click(470.0, 360.0, false)),
            (&second, click(300.0, 200.0, true)),
            (&first, click(100.0, 400.0, true)),
        ] {
            let cached = sam.decode(embedding, &prompt).unwrap();
            let p = PromptTensors::new(&prompt, &embedding.frame).unwrap();
            let (sparse, dense) = sam
                .prompt_encoder
                .forward(p.points.as_ref().map(|(c, l)| (c, l)), None, None)
                .unwrap();
            let (low_res, iou) = sam
                .mask_decoder
                .forward(
                    &embedding.features,
                    &sam.image_pe,
                    &sparse,
                    &dense,
                    prompt.multimask,
                    None,
                )
                .unwrap();
            let full: Vec<f32> = low_res.flatten_all().unwrap().to_vec1().unwrap();
            let iou: Vec<f32> = iou.flatten_all().unwrap().to_vec1().unwrap();
            let max_diff = |a: &[f32], b: &[f32]| {
                assert_eq!(a.len(), b.len());
                a.iter()
                    .zip(b)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
            };
            // Not bit for bit: with the cache the first block's token-to-image attention
            // projects the image keys (once), without it the projection is absorbed into the
            // tokens' side; the same sums in another order.
            let d = max_diff(&cached.low_res_logits, &full);
            assert!(d <= 1e-4, "low-res logits differ by {d}");
            let d = max_diff(&cached.iou, &iou);
            assert!(d <= 1e-5, "iou differs by {d}");
        }
    }
}
