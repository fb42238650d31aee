//! The predictor flow of `segment_anything/predictor.py` (`SamPredictor`): embed an image once,
//! then decode prompts given in the original image's pixel coordinates.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, TensorId};

use crate::error::{Error, Result};
use crate::gpu::backend::{expect_outputs, Gpu};
use crate::gpu::kernels::resize::resize_bilinear;
use crate::gpu::{GpuContext, GpuTensor, Recorder};
use crate::image::{
    postprocess_logits, preprocess, preprocess_sam2, stability_score, threshold, Fit, ImageFrame,
    MaskCleanup, RgbImage,
};
use crate::model::backend::{dims4, Backend, Cpu};
use crate::model::config::{
    MaskDecoderConfig, SamConfig, EMBEDDING_SIDE, EMBED_DIM, IMAGE_SIZE, LOW_RES_SIDE,
};
use crate::model::hiera::{HieraConfig, Sam2ImageEncoder};
use crate::model::mask_decoder::{ImageInput, MaskDecoder};
use crate::model::prompt_encoder::PromptEncoder;
use crate::model::tiny_vit::TinyViT;
use crate::model::transformer::ImageSide;
use crate::model::vit::{ImageEncoderViT, VitConfig};
use crate::model::weights::Weights;

/// Key that only MobileSAM's TinyViT encoder has (its first Conv2d_BN).
const TINY_VIT_PROBE_KEY: &str = "image_encoder.patch_embed.seq.0.c.weight";
/// Key that only SAM's ViT encoders (ViT-B/L/H) have.
const VIT_PROBE_KEY: &str = "image_encoder.pos_embed";
/// Key that only SAM 2's Hiera trunk has.
const HIERA_PROBE_KEY: &str = "image_encoder.trunk.patch_embed.proj.weight";
/// SAM 2's prompt encoder and mask decoder (SAM's are `prompt_encoder`, `mask_decoder`).
const SAM2_PROMPT_ENCODER: &str = "sam_prompt_encoder";
const SAM2_MASK_DECODER: &str = "sam_mask_decoder";
/// SAM 2's predictor returns its low-res logits clamped to this (`_predict`), after the masks
/// at the image's size are made from them unclamped.
pub const SAM2_LOW_RES_CLAMP: f32 = 32.0;

/// Whether `weights` are SAM 2's (its prompt encoder and mask decoder are `sam_*`).
pub fn is_sam2(weights: &Weights) -> bool {
    weights.has_prefix(&format!("{SAM2_MASK_DECODER}."))
}

/// Which image encoder a checkpoint carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    /// MobileSAM's TinyViT-5M.
    TinyVit,
    /// SAM's ViT-B/L/H (or any encoder of their structure).
    Vit,
    /// SAM 2's Hiera trunk and FPN neck.
    Hiera,
    /// A decoder-only checkpoint (`prompt_encoder.*` and `mask_decoder.*`).
    None,
}

impl EncoderKind {
    /// Tells the encoder from the checkpoint's keys.
    pub fn detect(weights: &Weights) -> Self {
        if weights.contains(TINY_VIT_PROBE_KEY) {
            EncoderKind::TinyVit
        } else if weights.contains(HIERA_PROBE_KEY) {
            EncoderKind::Hiera
        } else if weights.contains(VIT_PROBE_KEY) {
            EncoderKind::Vit
        } else {
            EncoderKind::None
        }
    }
}

/// The CPU backend's working memory for one encode, beyond the model's weights: measured in
/// Chromium on ViT-B (342 MB with 2 threads, docs/PERFORMANCE.md), it scales with the tokens'
/// width (the 64x64 tokens times `embed_dim`, about 27 such tensors at the peak; 32 counted);
/// TinyViT's 200 MB, 256 counted; SAM 2's Hiera as tensors of its first stage (256x256 tokens
/// of `embed_dim`): measured in Chromium on Hiera-L (2 threads), 358 MB above the loaded model,
/// about 9.5 such tensors; 16 counted. Used to refuse a model that cannot fit before building it.
pub fn cpu_encode_working_bytes(weights: &Weights) -> u64 {
    const TOKENS: u64 = 64 * 64;
    match EncoderKind::detect(weights) {
        EncoderKind::Vit => {
            let dim = VitConfig::detect(&|k: &str| weights.shape_of(&format!("image_encoder.{k}")))
                .map_or(1280, |c| c.embed_dim) as u64;
            32 * TOKENS * dim * 4
        }
        // Hiera's first stage holds 256x256 tokens of its width; a block's intermediates
        // (qkv, the MLP's 4x hidden, the q-pool's doubled width) stay under 16 of them.
        EncoderKind::Hiera => {
            let dim = HieraConfig::of(weights).map_or(144, |c| c.embed_dim) as u64;
            16 * 16 * TOKENS * dim * 4
        }
        EncoderKind::TinyVit => 256 << 20,
        EncoderKind::None => 0,
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

impl Prompt {
    /// Builds a prompt from flat arrays, as JS passes them: `points` `[x, y, label, ...]`,
    /// `bbox` `[x0, y0, x1, y1]`, `mask_input` 256x256 low-res logits; lengths and labels checked
    /// here, positions against the image by [`PromptTensors::new`].
    pub fn from_flat(
        points: Option<Vec<f32>>,
        bbox: Option<Vec<f32>>,
        mask_input: Option<Vec<f32>>,
        multimask: bool,
    ) -> Result<Prompt> {
        let points = match points {
            None => Vec::new(),
            Some(flat) => {
                if flat.len() % 3 != 0 {
                    return Err(Error::invalid(format!(
                        "points: {} numbers; give [x, y, label] triples",
                        flat.len()
                    )));
                }
                flat.chunks_exact(3)
                    .map(|c| {
                        if c[2].fract() != 0.0 {
                            return Err(Error::invalid(format!("point label {}", c[2])));
                        }
                        Ok(Point {
                            x: c[0] as f64,
                            y: c[1] as f64,
                            label: PointLabel::from_i32(c[2] as i32)?,
                        })
                    })
                    .collect::<Result<_>>()?
            }
        };
        let bbox = match bbox {
            None => None,
            Some(b) if b.len() == 4 => Some([b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64]),
            Some(b) => {
                return Err(Error::invalid(format!(
                    "box: {} numbers; give [x0, y0, x1, y1]",
                    b.len()
                )))
            }
        };
        Ok(Prompt {
            points,
            bbox,
            mask_input,
            multimask,
        })
    }
}

/// The image embedding and the frame of the image it was computed from.
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    /// `[1, 256, 64, 64]`, f32.
    pub features: Tensor,
    /// SAM 2's high-resolution features (`high_res_feats`, after `conv_s0` and `conv_s1`):
    /// `[1, 32, 256, 256]` and `[1, 64, 128, 128]`, f32.
    pub high_res: Option<[Tensor; 2]>,
    pub frame: ImageFrame,
}

impl ImageEmbedding {
    /// Wraps features computed elsewhere (e.g. read from `.npy`), checking their shape and
    /// that every value is finite.
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
        Ok(Self {
            features: finite_f32(features, "image embedding")?,
            high_res: None,
            frame,
        })
    }

    /// SAM 2's embedding: `image_embed` `[1, 256, 64, 64]` and the high-resolution features
    /// `[1, 32, 256, 256]`, `[1, 64, 128, 128]` (batch dims optional), checked as
    /// [`Self::new`] checks.
    pub fn sam2(features: Tensor, high_res: [Tensor; 2], frame: ImageFrame) -> Result<Self> {
        let mut e = Self::new(features, frame)?;
        let shapes = [
            [1, EMBED_DIM / 8, 4 * EMBEDDING_SIDE, 4 * EMBEDDING_SIDE],
            [1, EMBED_DIM / 4, 2 * EMBEDDING_SIDE, 2 * EMBEDDING_SIDE],
        ];
        let mut checked = Vec::with_capacity(2);
        for (i, (t, shape)) in high_res.into_iter().zip(shapes).enumerate() {
            let t = if t.dims() == &shape[1..] {
                t.unsqueeze(0)?
            } else {
                t
            };
            if t.dims() != shape {
                return Err(Error::invalid(format!(
                    "high_res_feats_{i} has shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            checked.push(finite_f32(t, &format!("high_res_feats_{i}"))?);
        }
        let [h0, h1]: [Tensor; 2] = checked.try_into().map_err(|_| Error::invalid("two maps"))?;
        e.high_res = Some([h0, h1]);
        Ok(e)
    }

    /// Reads features saved as `.npy` (f32 or f16, C order): what `websam embed` and the
    /// official web demo's export write.
    pub fn from_npy_bytes(bytes: &[u8], frame: ImageFrame) -> Result<Self> {
        let (shape, data) = read_npy_f32(bytes)?;
        Self::new(Tensor::from_vec(data, shape, &Device::Cpu)?, frame)
    }

    /// Reads SAM 2's embedding saved as `.npz` (what `websam embed` writes for SAM 2): the
    /// arrays `image_embed` `[1, 256, 64, 64]`, `high_res_feats_0` `[1, 32, 256, 256]` and
    /// `high_res_feats_1` `[1, 64, 128, 128]`, f32 or f16, stored as `np.savez` stores them
    /// (`np.savez_compressed`'s deflated entries are refused, with the reason).
    pub fn from_npz_bytes(bytes: &[u8], frame: ImageFrame) -> Result<Self> {
        use std::io::Read;
        let bad = |why: String| Error::invalid(format!("not a SAM 2 embedding .npz: {why}"));
        let mut zip =
            zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| bad(format!("{e}")))?;
        let mut read = |name: &str, values: usize| -> Result<Tensor> {
            let mut entry = zip.by_name(&format!("{name}.npy")).map_err(|e| match e {
                zip::result::ZipError::FileNotFound => bad(format!("no {name}.npy in it")),
                e => bad(format!(
                    "{name}.npy: {e} (save it with np.savez, not compressed)"
                )),
            })?;
            // Its header and values, checked before anything is inflated.
            let most = values as u64 * 4 + 4096;
            if entry.size() > most {
                return Err(bad(format!("{name}.npy holds {} bytes", entry.size())));
            }
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry
                .by_ref()
                .take(most)
                .read_to_end(&mut data)
                .map_err(|e| bad(format!("{name}.npy: {e}")))?;
            let (shape, values) = read_npy_f32(&data).map_err(|e| e.context(name))?;
            Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
        };
        let side = EMBEDDING_SIDE;
        let embed = read("image_embed", EMBED_DIM * side * side)?;
        let s0 = read("high_res_feats_0", EMBED_DIM / 8 * 16 * side * side)?;
        let s1 = read("high_res_feats_1", EMBED_DIM / 4 * 4 * side * side)?;
        Self::sam2(embed, [s0, s1], frame)
    }

    /// Reads an embedding file: `.npy` (SAM's) or `.npz` (SAM 2's), told by its first bytes.
    pub fn from_file_bytes(bytes: &[u8], frame: ImageFrame) -> Result<Self> {
        if bytes.starts_with(b"PK") {
            Self::from_npz_bytes(bytes, frame)
        } else {
            Self::from_npy_bytes(bytes, frame)
        }
    }

    /// SAM 2's embedding as `.npz` (as `np.savez` writes it: stored `.npy` entries
    /// `image_embed`, `high_res_feats_0`, `high_res_feats_1`, f32).
    pub fn to_npz_bytes(&self) -> Result<Vec<u8>> {
        use std::io::Write;
        let Some([s0, s1]) = &self.high_res else {
            return Err(Error::invalid(
                "a SAM embedding has one array: save it as .npy (to_npy_bytes)",
            ));
        };
        let zerr = |e: zip::result::ZipError| Error::invalid(format!("writing .npz: {e}"));
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(false);
        for (name, t) in [
            ("image_embed", &self.features),
            ("high_res_feats_0", s0),
            ("high_res_feats_1", s1),
        ] {
            zip.start_file(format!("{name}.npy"), opts).map_err(zerr)?;
            zip.write_all(&npy_bytes(t)?)
                .map_err(|e| Error::invalid(format!("writing .npz: {e}")))?;
        }
        Ok(zip.finish().map_err(zerr)?.into_inner())
    }

    /// Features as a flat `Vec` (C-order `[1, 256, 64, 64]`).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        Ok(self.features.flatten_all()?.to_vec1()?)
    }

    /// The features as `.npy` bytes (float32, C order, shape `[1, 256, 64, 64]`), the file the
    /// official demo reads; [`ImageEmbedding::from_npy_bytes`] reads it back.
    pub fn to_npy_bytes(&self) -> Result<Vec<u8>> {
        if self.high_res.is_some() {
            return Err(Error::invalid(
                "a SAM 2 embedding has three arrays: save it as .npz (to_npz_bytes)",
            ));
        }
        npy_bytes(&self.features)
    }
}

/// A tensor as `.npy` bytes (float32, C order).
fn npy_bytes(t: &Tensor) -> Result<Vec<u8>> {
    use npyz::WriterBuilder;
    let shape: Vec<u64> = t.dims().iter().map(|&d| d as u64).collect();
    let data = t.flatten_all()?.to_vec1::<f32>()?;
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

/// `t` on the CPU in f32, every value finite (`what` names it in the error).
fn finite_f32(t: Tensor, what: &str) -> Result<Tensor> {
    let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "{what} holds {} (element {i}): an embedding must be finite",
            values[i]
        )));
    }
    Ok(t)
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
    /// `num_masks * 256 * 256` low-res logits (SAM 2's clamped to +-32, as its `predict`
    /// returns them: what a refinement feeds back).
    pub low_res_logits: Vec<f32>,
    /// SAM 2: the low-res logits before that clamp, which its masks at the image's size are
    /// made from.
    pub unclamped: Option<Vec<f32>>,
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

    /// Logits of mask `i` at the original image size (`Sam.postprocess_masks`; SAM 2's from
    /// the unclamped low-res logits).
    pub fn logits(&self, i: usize) -> Result<Vec<f32>> {
        self.logits_with(i, &MaskCleanup::default())
    }

    /// [`Self::logits`] after `cleanup` (SAM2ImagePredictor's holes and sprinkles) on the
    /// low-res logits.
    pub fn logits_with(&self, i: usize, cleanup: &MaskCleanup) -> Result<Vec<f32>> {
        if i >= self.num_masks() {
            return Err(Error::invalid(format!(
                "mask index {i} out of range ({} masks)",
                self.num_masks()
            )));
        }
        let n = LOW_RES_SIDE * LOW_RES_SIDE;
        let low_res = match &self.unclamped {
            Some(u) => &u[i * n..(i + 1) * n],
            None => self.low_res(i),
        };
        if cleanup.is_off() {
            postprocess_logits(low_res, &self.frame)
        } else {
            postprocess_logits(&cleanup.apply(low_res), &self.frame)
        }
    }

    /// Every mask at the original image size, thresholded at 0, with its scores.
    pub fn masks(&self) -> Result<Vec<Mask>> {
        self.masks_with(&MaskCleanup::default())
    }

    /// [`Self::masks`] after `cleanup` on the low-res logits.
    pub fn masks_with(&self, cleanup: &MaskCleanup) -> Result<Vec<Mask>> {
        crate::threads::map(self.num_masks(), |i| {
            self.mask_from_logits(i, &self.logits_with(i, cleanup)?)
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

/// An image prepared for decoding on a backend: its embedding as the decoder's tokens and the
/// decoder's image-only work without a mask input, done once per image.
#[derive(Debug, Clone)]
pub struct PreparedImage<B: Backend> {
    /// The image embedding as tokens `[1, 64*64, 256]`.
    tokens: B::Tensor,
    side: ImageSide<B>,
    /// SAM 2's high-resolution features (feat_s0, feat_s1), NCHW.
    high_res: Option<(B::Tensor, B::Tensor)>,
    pub frame: ImageFrame,
}

/// The image encoder a checkpoint carries.
#[derive(Debug, Clone)]
pub enum ImageEncoder<B: Backend> {
    TinyVit(TinyViT<B>),
    Vit(ImageEncoderViT<B>),
    /// SAM 2's: three outputs ([`Sam2ImageEncoder::forward`]), one step.
    Hiera(Sam2ImageEncoder<B>),
}

impl<B: Backend> ImageEncoder<B> {
    /// The steps an encode reports its progress by: ViT's blocks; TinyViT's whole encode is one
    /// (it takes a fraction of the time of a ViT block).
    pub fn steps(&self) -> usize {
        match self {
            ImageEncoder::TinyVit(_) | ImageEncoder::Hiera(_) => 1,
            ImageEncoder::Vit(e) => e.config().depth,
        }
    }

    /// Step `i` of [`Self::steps`] on `x`: the image for the first step (which also embeds the
    /// patches), the previous step's output after it; the last step ends with the neck, so its
    /// output is the features. The steps in order are the encoder's forward: the preprocessed
    /// image `[1, 3, 1024, 1024]` -> the features `[1, 256, 64, 64]`.
    pub fn record_step(&self, b: &mut B, x: &B::Tensor, i: usize) -> Result<B::Tensor> {
        let last = i + 1 == self.steps();
        match self {
            ImageEncoder::TinyVit(e) => e.forward(b, x),
            ImageEncoder::Hiera(_) => Err(Error::invalid(
                "SAM 2's encoder gives three feature maps: encode with Sam::embed",
            )),
            ImageEncoder::Vit(e) => {
                let x = if i == 0 {
                    e.patch_embed(b, x)?
                } else {
                    x.clone()
                };
                let x = e.block(b, &x, i)?;
                if last {
                    e.neck(b, &x)
                } else {
                    Ok(x)
                }
            }
        }
    }
}

/// SAM with its image encoder (when the checkpoint has it), prompt encoder and mask decoder,
/// on one backend: [`Cpu`] (the default) or the GPU ([`crate::gpu::GpuSam`]).
pub struct Sam<B: Backend = Cpu> {
    device: B::Device,
    prompt_encoder: PromptEncoder<B>,
    mask_decoder: MaskDecoder<B>,
    image_encoder: Option<ImageEncoder<B>>,
    encoder_kind: EncoderKind,
    /// The last embedding the CPU's `decode` prepared, keyed by its features' tensor (tensors
    /// are immutable: a new embedding has a new id). The GPU's `decode` takes the
    /// [`PreparedImage`] from the caller instead (it lives on the device), so this stays empty
    /// there.
    prepared: Mutex<Option<(TensorId, PreparedImage<B>)>>,
}

impl<B: Backend> Sam<B> {
    /// Builds the model on `device` from loaded weights. The prompt encoder and mask decoder
    /// are required; the image encoder (TinyViT or ViT, its configuration read from the
    /// checkpoint) is built when the checkpoint has it.
    pub fn on(device: &B::Device, weights: &Weights) -> Result<Self> {
        Self::with_hiera(device, weights, None)
    }

    /// [`Sam::on`], a SAM 2 checkpoint's Hiera trunk built as `hiera` says rather than as
    /// detected ([`HieraConfig::detect`] knows SAM 2.1's four; a checkpoint does not hold its
    /// trunk's heads, windows or global blocks).
    pub fn with_hiera(
        device: &B::Device,
        weights: &Weights,
        hiera: Option<&HieraConfig>,
    ) -> Result<Self> {
        let cfg = SamConfig::mobile_sam();
        let sam2 = is_sam2(weights);
        let (pe_key, md_key, md_cfg) = if sam2 {
            (
                SAM2_PROMPT_ENCODER,
                SAM2_MASK_DECODER,
                MaskDecoderConfig::sam2(),
            )
        } else {
            ("prompt_encoder", "mask_decoder", cfg.mask_decoder.clone())
        };
        if !weights.has_prefix(&format!("{md_key}.")) && !weights.has_prefix(&format!("{pe_key}."))
        {
            return Err(Error::format(
                "no `prompt_encoder.*` or `mask_decoder.*` tensors (SAM 2: `sam_prompt_encoder.*`, \
                 `sam_mask_decoder.*`): not a SAM checkpoint",
            ));
        }
        let prompt_encoder = PromptEncoder::new(device, &cfg.prompt_encoder, &weights.pp(pe_key))?;
        let mask_decoder = MaskDecoder::new(device, &md_cfg, &weights.pp(md_key))?;
        let encoder_kind = EncoderKind::detect(weights);
        // A decoder-only checkpoint of either is fine; an encoder must be its generation's.
        if encoder_kind != EncoderKind::None && sam2 != (encoder_kind == EncoderKind::Hiera) {
            return Err(Error::UnsupportedModel(format!(
                "a checkpoint with {} and a {encoder_kind:?} image encoder",
                if sam2 {
                    "SAM 2's prompt encoder and mask decoder"
                } else {
                    "SAM's prompt encoder and mask decoder"
                }
            )));
        }
        let image_encoder = match encoder_kind {
            EncoderKind::TinyVit => Some(ImageEncoder::TinyVit(TinyViT::new(
                device,
                &cfg.tiny_vit,
                &weights.pp("image_encoder"),
            )?)),
            EncoderKind::Vit => {
                let vit =
                    VitConfig::detect(&|k: &str| weights.shape_of(&format!("image_encoder.{k}")))?;
                Some(ImageEncoder::Vit(ImageEncoderViT::new(
                    device,
                    &vit,
                    &weights.pp("image_encoder"),
                )?))
            }
            EncoderKind::Hiera => {
                let detected;
                let hiera = match hiera {
                    Some(h) => h,
                    None => {
                        detected = HieraConfig::of(weights)?;
                        &detected
                    }
                };
                Some(ImageEncoder::Hiera(Sam2ImageEncoder::new(
                    device,
                    hiera,
                    &weights.pp(""),
                )?))
            }
            EncoderKind::None => None,
        };
        Ok(Self {
            device: device.clone(),
            prompt_encoder,
            mask_decoder,
            image_encoder,
            encoder_kind,
            prepared: Mutex::new(None),
        })
    }

    /// Whether this is SAM 2.
    pub fn is_sam2(&self) -> bool {
        self.mask_decoder.is_sam2()
    }

    /// Where the model lives.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Which image encoder the checkpoint carries.
    pub fn encoder_kind(&self) -> EncoderKind {
        self.encoder_kind
    }

    /// Whether the checkpoint has an image encoder.
    pub fn has_encoder(&self) -> bool {
        self.image_encoder.is_some()
    }

    /// The image encoder, if the checkpoint has one.
    pub fn image_encoder(&self) -> Option<&ImageEncoder<B>> {
        self.image_encoder.as_ref()
    }

    fn encoder(&self) -> Result<&ImageEncoder<B>> {
        self.image_encoder.as_ref().ok_or_else(|| {
            Error::UnsupportedModel(
                "this checkpoint has no image encoder (decoder only); decode from an embedding"
                    .into(),
            )
        })
    }

    /// Records the per-image work of the decoder on `features` `[1, 256, 64, 64]`: the tokens
    /// and the image side of a decode without mask input.
    pub fn record_prepare(
        &self,
        b: &mut B,
        features: &B::Tensor,
        frame: ImageFrame,
    ) -> Result<PreparedImage<B>> {
        self.record_prepare_with(b, features, None, frame)
    }

    /// [`Self::record_prepare`] with SAM 2's high-resolution features (feat_s0, feat_s1),
    /// which its decoder takes.
    pub fn record_prepare_with(
        &self,
        b: &mut B,
        features: &B::Tensor,
        high_res: Option<(B::Tensor, B::Tensor)>,
        frame: ImageFrame,
    ) -> Result<PreparedImage<B>> {
        if high_res.is_some() != self.is_sam2() {
            return Err(Error::invalid(if self.is_sam2() {
                "SAM 2 decodes from its high-resolution features too: this embedding has none"
            } else {
                "an embedding with high-resolution features is SAM 2's, not this model's"
            }));
        }
        let (n, c, h, w) = dims4::<B>(features)?;
        if (n, c, h, w) != (1, EMBED_DIM, EMBEDDING_SIDE, EMBEDDING_SIDE) {
            return Err(Error::invalid(format!(
                "image embedding has shape {:?}, expected [1, {EMBED_DIM}, {EMBEDDING_SIDE}, {EMBEDDING_SIDE}]",
                B::dims(features)
            )));
        }
        let tokens = b.reshape(features, &[1, c, h * w])?;
        let tokens = b.permute(&tokens, &[0, 2, 1])?;
        // src = image embedding + the dense prompt without a mask (no_mask_embed)
        let src = b.add(&tokens, self.prompt_encoder.no_mask_embed())?;
        let side = self
            .mask_decoder
            .image_side(b, &src, self.prompt_encoder.dense_pe_tokens())?;
        Ok(PreparedImage {
            tokens,
            side,
            high_res,
            frame,
        })
    }

    /// Records `SamPredictor.predict` for a prompt given in the original image's coordinates:
    /// the low-res logits `[1, M, 256, 256]` and the IoU predictions `[1, M]`.
    pub fn record_decode(
        &self,
        b: &mut B,
        image: &PreparedImage<B>,
        prompt: &Prompt,
    ) -> Result<(B::Tensor, B::Tensor)> {
        let mut p = PromptTensors::new(prompt, &image.frame)?;
        if self.is_sam2() {
            p = p.box_as_points()?;
        }
        // Embed prompts: the sparse ones on the host, joined to the output tokens.
        let sparse = self.prompt_encoder.sparse(
            p.points.as_ref().map(|(c, l)| (c, l)),
            p.boxes.as_ref(),
            p.mask_input.as_ref(),
        )?;
        let tokens = b.input(&self.mask_decoder.tokens(&sparse)?)?;
        // src = image embedding + dense prompt; without a mask input, the per-image work.
        let src = match &p.mask_input {
            None => None,
            Some(mask) => {
                let mask = b.input(mask)?;
                let dense = self.prompt_encoder.embed_masks(b, &mask)?;
                let hw = EMBEDDING_SIDE * EMBEDDING_SIDE;
                let dense = b.reshape(&dense, &[1, EMBED_DIM, hw])?;
                let dense = b.permute(&dense, &[0, 2, 1])?;
                Some(b.add(&image.tokens, &dense)?)
            }
        };
        let input = match &src {
            Some(src) => ImageInput::Src(src),
            None => ImageInput::Cached(&image.side),
        };
        // Predict masks
        self.mask_decoder.forward(
            b,
            input,
            self.prompt_encoder.dense_pe_tokens(),
            &tokens,
            prompt.multimask,
            image.high_res.as_ref().map(|(s0, s1)| (s0, s1)),
        )
    }

    /// The read-back output of [`Self::record_decode`] as the prediction: SAM 2's single-mask
    /// request keeps its stable mask ([`MaskDecoder::select_stable`]).
    pub fn prediction(
        &self,
        prompt: &Prompt,
        low_res_logits: Vec<f32>,
        iou: Vec<f32>,
        frame: ImageFrame,
    ) -> Result<Prediction> {
        let (low_res_logits, iou) =
            self.mask_decoder
                .select_stable(low_res_logits, iou, prompt.multimask)?;
        if !self.is_sam2() {
            return Ok(Prediction {
                low_res_logits,
                iou,
                unclamped: None,
                frame,
            });
        }
        let c = SAM2_LOW_RES_CLAMP;
        Ok(Prediction {
            low_res_logits: low_res_logits.iter().map(|v| v.clamp(-c, c)).collect(),
            iou,
            unclamped: Some(low_res_logits),
            frame,
        })
    }
}

impl Sam<Cpu> {
    /// Builds the model on the CPU (see [`Sam::on`]).
    pub fn new(weights: &Weights) -> Result<Self> {
        Self::on(&(), weights)
    }

    /// Reads a checkpoint file (`.pth`, `.pt`, `.safetensors`) and builds the model.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::new(&Weights::from_file(path)?)
    }

    /// Builds the model from checkpoint bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::new(&Weights::from_bytes(bytes)?)
    }

    /// `SamPredictor.set_image`: the embedding of an RGB image, computed once per image.
    pub fn embed(&self, image: &RgbImage) -> Result<ImageEmbedding> {
        self.embed_with_progress(image, &mut |_, _| {})
    }

    /// [`Sam::embed`], calling `progress(done, steps)` after each of the encoder's steps (its
    /// blocks: [`ImageEncoder::steps`]).
    pub fn embed_with_progress(
        &self,
        image: &RgbImage,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<ImageEmbedding> {
        let encoder = self.encoder()?;
        if let ImageEncoder::Hiera(e) = encoder {
            let (input, frame) = preprocess_sam2(image)?;
            let f = e.forward(&mut Cpu, &Cpu.input(&input)?)?;
            progress(1, 1);
            return ImageEmbedding::sam2(f.image_embed, [f.high_res_0, f.high_res_1], frame);
        }
        let (input, frame) = preprocess(image)?;
        let steps = encoder.steps();
        let mut x = Cpu.input(&input)?;
        for i in 0..steps {
            x = encoder.record_step(&mut Cpu, &x, i)?;
            progress(i + 1, steps);
        }
        ImageEmbedding::new(x, frame)
    }

    /// `embedding` prepared for decoding, from the cache when it holds this embedding.
    fn prepared(&self, embedding: &ImageEmbedding) -> Result<PreparedImage<Cpu>> {
        let id = embedding.features.id();
        let mut cache = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, image)) = cache.as_ref() {
            if *cached == id {
                return Ok(image.clone());
            }
        }
        let high_res = embedding
            .high_res
            .as_ref()
            .map(|[s0, s1]| (s0.clone(), s1.clone()));
        let image =
            self.record_prepare_with(&mut Cpu, &embedding.features, high_res, embedding.frame)?;
        *cache = Some((id, image.clone()));
        Ok(image)
    }

    /// Does the decoder's image-only work for `embedding` now (after `embed`, so that the first
    /// prompt does not wait for it); `decode` takes it from the cache.
    pub fn prepare_decoder(&self, embedding: &ImageEmbedding) -> Result<()> {
        self.prepared(embedding).map(|_| ())
    }

    /// `SamPredictor.predict`: masks for a prompt given in the original image's coordinates.
    pub fn decode(&self, embedding: &ImageEmbedding, prompt: &Prompt) -> Result<Prediction> {
        let image = self.prepared(embedding)?;
        let (low_res, iou) = self.record_decode(&mut Cpu, &image, prompt)?;
        self.prediction(
            prompt,
            low_res.flatten_all()?.to_vec1()?,
            iou.flatten_all()?.to_vec1()?,
            embedding.frame,
        )
    }
}

impl Sam<Gpu> {
    /// Builds the model on the GPU, its weights uploaded once; upload errors (out of memory, a
    /// lost device) surface here rather than at the first decode.
    pub async fn upload(ctx: &GpuContext, weights: &Weights) -> Result<Self> {
        Self::upload_with_hiera(ctx, weights, None).await
    }

    /// [`Sam::upload`] with a SAM 2 trunk's configuration given ([`Sam::with_hiera`]).
    pub async fn upload_with_hiera(
        ctx: &GpuContext,
        weights: &Weights,
        hiera: Option<&HieraConfig>,
    ) -> Result<Self> {
        let sam = Self::with_hiera(ctx, weights, hiera)?;
        Recorder::new(ctx).finish().await?;
        Ok(sam)
    }

    pub fn ctx(&self) -> &GpuContext {
        &self.device
    }

    /// `SamPredictor.set_image` on the GPU: preprocesses on the CPU, encodes and prepares the
    /// decoder's per-image work (one submit per encoder step: [`ImageEncoder::steps`], so one for
    /// TinyViT), and reads the features back once for the [`ImageEmbedding`].
    pub async fn embed(&self, image: &RgbImage) -> Result<(ImageEmbedding, PreparedImage<Gpu>)> {
        let (embedding, prepared, _) = self.embed_counted(image, &mut |_, _| {}).await?;
        Ok((embedding, prepared))
    }

    /// [`Sam::embed`], calling `progress(done, steps)` as each step's submit completes, and
    /// returning the number of kernel dispatches it recorded.
    pub async fn embed_counted(
        &self,
        image: &RgbImage,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(ImageEmbedding, PreparedImage<Gpu>, usize)> {
        let encoder = self.encoder()?;
        if let ImageEncoder::Hiera(e) = encoder {
            // SAM 2: one submit, the three maps read back.
            let (input, frame) = preprocess_sam2(image)?;
            let mut g = Gpu::begin(&self.device);
            let x = g.input(&input)?;
            let f = e.forward(&mut g, &x)?;
            let high_res = (f.high_res_0.clone(), f.high_res_1.clone());
            let prepared =
                self.record_prepare_with(&mut g, &f.image_embed, Some(high_res), frame)?;
            let mut rec = g.into_recorder();
            let dispatches = rec.dispatch_count();
            for t in [&f.image_embed, &f.high_res_0, &f.high_res_1] {
                rec.read(t);
            }
            let out = rec.finish().await?;
            progress(1, 1);
            expect_outputs(&out, 3, "embed")?;
            let [embed, s0, s1]: [Vec<f32>; 3] = out
                .try_into()
                .map_err(|_| Error::invalid("embed: three maps expected"))?;
            let t = |v: Vec<f32>, like: &GpuTensor| Tensor::from_vec(v, like.shape(), &Device::Cpu);
            let embedding = ImageEmbedding::sam2(
                t(embed, &f.image_embed)?,
                [t(s0, &f.high_res_0)?, t(s1, &f.high_res_1)?],
                frame,
            )?;
            return Ok((embedding, prepared, dispatches));
        }
        let (input, frame) = preprocess(image)?;
        let steps = encoder.steps();
        let mut dispatches = 0;
        let mut g = Gpu::begin(&self.device);
        let mut features = g.input(&input)?;
        for i in 0..steps {
            features = encoder.record_step(&mut g, &features, i)?;
            if i + 1 < steps {
                // The step's submit, waited for: the progress a page shows is work done.
                let rec = g.into_recorder();
                dispatches += rec.dispatch_count();
                rec.finish().await?;
                progress(i + 1, steps);
                g = Gpu::begin(&self.device);
            }
        }
        let prepared = self.record_prepare(&mut g, &features, frame)?;
        let mut rec = g.into_recorder();
        dispatches += rec.dispatch_count();
        rec.read(&features);
        let out = rec.finish().await?;
        progress(steps, steps);
        expect_outputs(&out, 1, "embed")?;
        let features = Tensor::from_vec(
            out.into_iter().next().unwrap_or_default(),
            (1, EMBED_DIM, EMBEDDING_SIDE, EMBEDDING_SIDE),
            &Device::Cpu,
        )?;
        Ok((ImageEmbedding::new(features, frame)?, prepared, dispatches))
    }

    /// Uploads an image embedding once per image and prepares it for decoding.
    pub async fn upload_embedding(&self, embedding: &ImageEmbedding) -> Result<PreparedImage<Gpu>> {
        let mut g = Gpu::begin(&self.device);
        let features = g.input(&embedding.features)?;
        let high_res = match &embedding.high_res {
            Some([s0, s1]) => Some((g.input(s0)?, g.input(s1)?)),
            None => None,
        };
        let prepared = self.record_prepare_with(&mut g, &features, high_res, embedding.frame)?;
        g.into_recorder().finish().await?;
        Ok(prepared)
    }

    /// `SamPredictor.predict` on the GPU: one recording, one submit, and a readback of only the
    /// low-res logits and the IoU predictions.
    pub async fn decode(&self, image: &PreparedImage<Gpu>, prompt: &Prompt) -> Result<Prediction> {
        let (prediction, _) = self.decode_counted(image, prompt).await?;
        Ok(prediction)
    }

    /// [`Sam::decode`] for each prompt, recorded together: one submit and one readback for
    /// the batch. Each decode's intermediates go back to the pool as soon as the next one is
    /// recorded, so the batch needs the memory of one decode plus its outputs.
    pub async fn decode_batch(
        &self,
        image: &PreparedImage<Gpu>,
        prompts: &[Prompt],
    ) -> Result<Vec<Prediction>> {
        let mut g = Gpu::begin(&self.device);
        let mut outputs = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            outputs.push(self.record_decode(&mut g, image, prompt)?);
        }
        let mut rec = g.into_recorder();
        for (masks, iou) in &outputs {
            rec.read(masks);
            rec.read(iou);
        }
        drop(outputs);
        let out = rec.finish().await?;
        expect_outputs(&out, 2 * prompts.len(), "decode")?;
        let mut out = out.into_iter();
        let mut predictions = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let (Some(low_res_logits), Some(iou)) = (out.next(), out.next()) else {
                return Err(Error::invalid("decode: an output missing"));
            };
            predictions.push(self.prediction(prompt, low_res_logits, iou, image.frame)?);
        }
        Ok(predictions)
    }

    /// [`Sam::decode`], also returning the number of kernel dispatches it recorded.
    pub async fn decode_counted(
        &self,
        image: &PreparedImage<Gpu>,
        prompt: &Prompt,
    ) -> Result<(Prediction, usize)> {
        let (prediction, _, dispatches) = self.decode_inner(image, prompt, false).await?;
        Ok((prediction, dispatches))
    }

    /// [`Sam::decode`] plus the masks' logits at the original image size
    /// (`Sam.postprocess_masks`: upsample to 1024, crop, resize), computed on the GPU in the
    /// same submit. Returns one `height * width` plane per mask.
    pub async fn decode_with_logits(
        &self,
        image: &PreparedImage<Gpu>,
        prompt: &Prompt,
    ) -> Result<(Prediction, Vec<Vec<f32>>)> {
        let (prediction, logits, _) = self.decode_inner(image, prompt, true).await?;
        let (h, w) = image.frame.original;
        let planes = logits
            .unwrap_or_default()
            .chunks_exact(h * w)
            .map(<[f32]>::to_vec)
            .collect();
        Ok((prediction, planes))
    }

    async fn decode_inner(
        &self,
        image: &PreparedImage<Gpu>,
        prompt: &Prompt,
        upsample: bool,
    ) -> Result<(Prediction, Option<Vec<f32>>, usize)> {
        let mut g = Gpu::begin(&self.device);
        let (masks, iou) = self.record_decode(&mut g, image, prompt)?;
        let mut rec = g.into_recorder();
        // Postprocess: low-res logits to the original image size. The masks at full size go
        // in one buffer where it fits the device's limits, else one buffer per mask (a 12 MP
        // photograph's three masks are 144 MB: more than WebGPU's default 128 MiB binding).
        let mut full = Vec::new();
        if upsample {
            let frame = image.frame;
            let (in_h, in_w) = frame.input;
            let (h, w) = frame.original;
            // SAM 2 resizes the low-res logits straight to the image's size.
            let up = if frame.fit == Fit::Stretch {
                masks.clone()
            } else {
                resize_bilinear(&mut rec, &masks, IMAGE_SIZE, IMAGE_SIZE, in_h, in_w)?
            };
            let (in_h, in_w) = if frame.fit == Fit::Stretch {
                (LOW_RES_SIDE, LOW_RES_SIDE)
            } else {
                (in_h, in_w)
            };
            let channels = up.shape()[1];
            let limits = self.device.limits();
            let fits = limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size);
            if (h, w) == (in_h, in_w) {
                full.push(up);
            } else if (channels * h * w * 4) as u64 <= fits || channels == 1 {
                full.push(resize_bilinear(&mut rec, &up, h, w, h, w)?);
            } else {
                for c in 0..channels {
                    let one = crate::gpu::kernels::layout::slice(&mut rec, &up, 1, c, 1)?;
                    full.push(resize_bilinear(&mut rec, &one, h, w, h, w)?);
                }
            }
        }
        let dispatches = rec.dispatch_count();
        rec.read(&masks);
        rec.read(&iou);
        for f in &full {
            rec.read(f);
        }
        let out = rec.finish().await?;
        expect_outputs(&out, 2 + full.len(), "decode")?;
        let mut out = out.into_iter();
        let low_res_logits = out.next().unwrap_or_default();
        let iou = out.next().unwrap_or_default();
        let mut full = match full.len() {
            0 => None,
            1 => out.next(),
            _ => Some(out.flatten().collect()),
        };
        debug_assert_eq!(
            low_res_logits.len(),
            iou.len() * LOW_RES_SIDE * LOW_RES_SIDE
        );
        // SAM 2's single mask: the planes at the image's size of the mask kept.
        let picks = self
            .mask_decoder
            .stable_picks(&low_res_logits, &iou, prompt.multimask)?;
        if let (Some(picks), Some(planes)) = (&picks, &mut full) {
            let (h, w) = image.frame.original;
            *planes = picks
                .iter()
                .flat_map(|&k| planes[k * h * w..(k + 1) * h * w].to_vec())
                .collect();
        }
        Ok((
            self.prediction(prompt, low_res_logits, iou, image.frame)?,
            full,
            dispatches,
        ))
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

impl PromptTensors {
    /// SAM 2's prompt: the box's corners as points with labels 2 and 3, before the clicks
    /// (`SAM2ImagePredictor._predict`); the prompt encoder then pads the points as for any
    /// prompt without a box.
    pub fn box_as_points(self) -> Result<Self> {
        let Some(boxes) = self.boxes else {
            return Ok(self);
        };
        let dev = Device::Cpu;
        let corners = boxes.reshape((1, 2, 2))?;
        let corner_labels = Tensor::from_vec(vec![2f32, 3.0], (1, 2), &dev)?;
        let points = match self.points {
            None => (corners, corner_labels),
            Some((coords, labels)) => (
                Tensor::cat(&[&corners, &coords], 1)?,
                Tensor::cat(&[&corner_labels, &labels], 1)?,
            ),
        };
        Ok(Self {
            points: Some(points),
            boxes: None,
            mask_input: self.mask_input,
        })
    }
}

/// Reads an `.npy` array held in memory as f32 (f32 or f16 stored, C order).
pub fn read_npy_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    let bad = |e: std::io::Error| Error::invalid(format!("not a readable .npy array: {e}"));
    let count = npy_element_count(bytes)?;
    let npy = npyz::NpyFile::new(bytes).map_err(bad)?;
    if npy.order() != npyz::Order::C {
        return Err(Error::invalid(
            ".npy array is in Fortran order; save it in C order",
        ));
    }
    // The header's shape is a claim: the data it implies must be in the file before anything
    // is allocated for it.
    let elem = match npy.dtype() {
        npyz::DType::Plain(t) => t.size_field().max(1),
        _ => 1,
    };
    let claimed = count.checked_mul(elem).filter(|&n| n <= bytes.len() as u64);
    if claimed.is_none() {
        return Err(Error::invalid(format!(
            ".npy header claims shape {:?} of {elem}-byte values: more than the file's {} bytes",
            npy.shape(),
            bytes.len()
        )));
    }
    // Each dim is at most the file's length (checked above), so it fits a usize.
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

/// The element count of the shape in an `.npy` header, read before npyz reads it: an error when
/// it overflows 64 bits (npyz multiplies the dims unchecked) or the header is nested. What the
/// header means is read by npyz after this; this only proves it safe to read.
fn npy_element_count(bytes: &[u8]) -> Result<u64> {
    let bad = |why: &str| Err(Error::invalid(format!("not a readable .npy array: {why}")));
    if bytes.len() < 10 || !bytes.starts_with(b"\x93NUMPY") {
        return bad("no .npy magic");
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return bad("unknown .npy version"),
    };
    let Some(header) = bytes.get(start..start.saturating_add(len)) else {
        return bad("the header runs past the end of the file");
    };
    let header = String::from_utf8_lossy(header);
    // A plain array's header is one flat dict with one tuple: anything nested (structured
    // dtypes, or braces no writer makes) is refused before npyz's parser, which takes
    // exponential time on nesting (a 200-byte header ran for more than 10 s under the fuzzer).
    let occurrences = |c: char| header.matches(c).count();
    if occurrences('{') != 1
        || occurrences('}') != 1
        || occurrences('(') > 1
        || occurrences('[') > 0
    {
        return bad("the header is not that of a plain array (nested brackets)");
    }
    let mut found = header.match_indices("shape");
    let (Some((at, _)), None) = (found.next(), found.next()) else {
        return bad("the header names no shape, or more than one");
    };
    let rest = &header[at..];
    let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else {
        return bad("the shape is not a tuple");
    };
    if close < open {
        return bad("the shape is not a tuple");
    }
    let mut count: u64 = 1;
    for dim in rest[open + 1..close].split(',').map(str::trim) {
        if dim.is_empty() {
            continue;
        }
        let d: u64 = dim
            .trim_end_matches('L')
            .parse()
            .map_err(|_| Error::invalid(format!(".npy shape has a dim {dim:?}")))?;
        count = count.checked_mul(d).ok_or_else(|| {
            Error::invalid(format!(
                ".npy header claims shape ({}): more than the file's {} bytes",
                &rest[open + 1..close],
                bytes.len()
            ))
        })?;
    }
    Ok(count)
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
            let mut b = Cpu;
            let (sparse, dense) = sam
                .prompt_encoder
                .forward(&mut b, p.points.as_ref().map(|(c, l)| (c, l)), None, None)
                .unwrap();
            let tokens = sam.mask_decoder.tokens(&sparse).unwrap();
            // src = image tokens + dense prompt, the transformer's input without the cache.
            let to_tokens = |t: &Tensor| t.flatten_from(2).unwrap().transpose(1, 2).unwrap();
            let src = (to_tokens(&embedding.features) + to_tokens(&dense)).unwrap();
            let (low_res, iou) = sam
                .mask_decoder
                .forward(
                    &mut b,
                    ImageInput::Src(&src),
                    sam.prompt_encoder.dense_pe_tokens(),
                    &tokens,
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
