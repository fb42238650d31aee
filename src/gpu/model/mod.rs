//! SAM on the GPU engine: MobileSAM's TinyViT image encoder ([`tiny_vit`]) and the mask
//! decoder (with the prompt encoder's dense path) on WebGPU.
//! The sparse prompt embeddings (a few 256-wide tokens from sin/cos of the clicks) are computed
//! by the CPU prompt encoder and uploaded with the output tokens: that is less work than one
//! dispatch.

mod decoder;
mod layers;
pub mod tiny_vit;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::gpu::kernels::elementwise::{binary, Binary};
use crate::gpu::kernels::layout::permute;
use crate::gpu::kernels::resize::resize_bilinear;
use crate::gpu::{GpuContext, GpuTensor, Recorder};
use crate::image::{preprocess, ImageFrame, RgbImage};
use crate::model::config::IMAGE_SIZE;
use crate::model::config::{SamConfig, EMBEDDING_SIDE, EMBED_DIM, LOW_RES_SIDE};
use crate::model::prompt_encoder::PromptEncoder;
use crate::model::sam::{EncoderKind, ImageEmbedding, Prediction, Prompt, PromptTensors};
use crate::model::weights::Weights;
use tiny_vit::GpuTinyViT;

/// An image embedding on the GPU, as the decoder consumes it: tokens `[1, 64*64, 256]`.
#[derive(Debug, Clone)]
pub struct GpuEmbedding {
    tokens: GpuTensor,
    /// The decode's image-only work without mask input, done once per image.
    image_side: decoder::ImageSide,
    pub frame: ImageFrame,
}

/// Prompt encoder and mask decoder with weights uploaded once.
pub struct GpuSam {
    ctx: GpuContext,
    /// CPU prompt encoder, for the sparse embeddings.
    prompt_encoder: PromptEncoder,
    mask_downscaling: decoder::MaskDownscaling,
    mask_decoder: decoder::MaskDecoder,
    /// `iou_token` and `mask_tokens`, `[5, 256]`, on the CPU (they join the sparse tokens).
    output_tokens: Tensor,
    /// `no_mask_embed.weight` `[256]`: the dense prompt without a mask input.
    no_mask_embed: GpuTensor,
    /// The dense positional encoding as tokens `[1, 64*64, 256]`, the same for every image.
    image_pe_tokens: GpuTensor,
    /// TinyViT, when the checkpoint has it.
    encoder: Option<GpuTinyViT>,
}

impl GpuSam {
    /// Uploads the prompt encoder and mask decoder weights.
    pub async fn new(ctx: &GpuContext, weights: &Weights) -> Result<Self> {
        let cfg = SamConfig::mobile_sam();
        let pe_vb = weights.pp("prompt_encoder");
        let md_vb = weights.pp("mask_decoder");
        let prompt_encoder = PromptEncoder::new(&cfg.prompt_encoder, &pe_vb)?;
        let dim = cfg.mask_decoder.transformer_dim;
        let output_tokens = Tensor::cat(
            &[
                md_vb.pp("iou_token").get(&[1, dim], "weight")?,
                md_vb
                    .pp("mask_tokens")
                    .get(&[cfg.mask_decoder.num_mask_tokens(), dim], "weight")?,
            ],
            0,
        )?;
        let no_mask_embed = GpuTensor::from_candle(
            ctx,
            &pe_vb
                .pp("no_mask_embed")
                .get(&[1, EMBED_DIM], "weight")?
                .reshape(EMBED_DIM)?,
        )?;
        // [1, C, H, W] -> [1, HW, C]
        let pe = prompt_encoder.get_dense_pe()?;
        let pe_tokens = pe.flatten_from(2)?.permute((0, 2, 1))?.contiguous()?;
        let image_pe_tokens = GpuTensor::from_candle(ctx, &pe_tokens)?;
        let sam = Self {
            ctx: ctx.clone(),
            mask_downscaling: decoder::MaskDownscaling::new(
                ctx,
                &cfg.prompt_encoder,
                &pe_vb.pp("mask_downscaling"),
            )?,
            mask_decoder: decoder::MaskDecoder::new(
                ctx,
                &cfg.mask_decoder,
                EMBEDDING_SIDE,
                &md_vb,
            )?,
            prompt_encoder,
            output_tokens,
            no_mask_embed,
            image_pe_tokens,
            encoder: match EncoderKind::detect(weights) {
                EncoderKind::TinyVit => Some(GpuTinyViT::new(
                    ctx,
                    &cfg.tiny_vit,
                    &weights.pp("image_encoder"),
                )?),
                EncoderKind::Vit | EncoderKind::None => None,
            },
        };
        // Surface upload errors (out of memory, lost device) here rather than at first decode.
        Recorder::new(ctx).finish().await?;
        Ok(sam)
    }

    /// Whether the checkpoint's image encoder runs here (MobileSAM's TinyViT).
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    pub fn ctx(&self) -> &GpuContext {
        &self.ctx
    }

    /// `SamPredictor.set_image` on the GPU: preprocesses on the CPU, encodes with TinyViT and
    /// lays the result out as the decoder's tokens in one recording (one submit), and reads the
    /// features back once for the [`ImageEmbedding`].
    pub async fn embed(&self, image: &RgbImage) -> Result<(ImageEmbedding, GpuEmbedding)> {
        let (embedding, gpu, _) = self.embed_counted(image).await?;
        Ok((embedding, gpu))
    }

    /// [`GpuSam::embed`], also returning the number of kernel dispatches it recorded.
    pub async fn embed_counted(
        &self,
        image: &RgbImage,
    ) -> Result<(ImageEmbedding, GpuEmbedding, usize)> {
        let encoder = self.encoder.as_ref().ok_or_else(|| {
            Error::UnsupportedModel(
                "the GPU engine encodes images with TinyViT only, and this checkpoint has none"
                    .into(),
            )
        })?;
        let (input, frame) = preprocess(image)?;
        let input = GpuTensor::from_candle(&self.ctx, &input)?;
        let mut rec = Recorder::new(&self.ctx);
        let features = encoder.forward(&mut rec, &input)?;
        let gpu_embedding = self.record_embedding(&mut rec, &features, frame)?;
        let dispatches = rec.dispatch_count();
        rec.read(&features);
        let features = rec
            .finish()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::gpu("embed read back no tensor"))?;
        let features = Tensor::from_vec(
            features,
            (1, EMBED_DIM, EMBEDDING_SIDE, EMBEDDING_SIDE),
            &candle_core::Device::Cpu,
        )?;
        Ok((
            ImageEmbedding::new(features, frame)?,
            gpu_embedding,
            dispatches,
        ))
    }

    /// Uploads an image embedding once per image and lays it out as the decoder's tokens.
    pub async fn upload_embedding(&self, embedding: &ImageEmbedding) -> Result<GpuEmbedding> {
        let features = GpuTensor::from_candle(&self.ctx, &embedding.features)?;
        let mut rec = Recorder::new(&self.ctx);
        let gpu_embedding = self.record_embedding(&mut rec, &features, embedding.frame)?;
        rec.finish().await?;
        Ok(gpu_embedding)
    }

    /// Records the per-image work on features `[1, C, H, W]`: the decoder's tokens and the
    /// image side of a decode without mask input.
    fn record_embedding(
        &self,
        rec: &mut Recorder,
        features: &GpuTensor,
        frame: ImageFrame,
    ) -> Result<GpuEmbedding> {
        let hw = EMBEDDING_SIDE * EMBEDDING_SIDE;
        let tokens = permute(rec, &features.reshape(&[1, EMBED_DIM, hw])?, &[0, 2, 1])?;
        // src = image embedding + the dense prompt without a mask (no_mask_embed)
        let src = binary(rec, &tokens, &self.no_mask_embed, Binary::Add)?;
        let image_side = self
            .mask_decoder
            .image_side(rec, &src, &self.image_pe_tokens)?;
        Ok(GpuEmbedding {
            tokens,
            image_side,
            frame,
        })
    }

    /// `SamPredictor.predict` on the GPU: one recording, one submit, and a readback of only the
    /// low-res logits and the IoU predictions.
    pub async fn decode(&self, embedding: &GpuEmbedding, prompt: &Prompt) -> Result<Prediction> {
        let (prediction, _) = self.decode_counted(embedding, prompt).await?;
        Ok(prediction)
    }

    /// [`GpuSam::decode`], also returning the number of kernel dispatches it recorded.
    pub async fn decode_counted(
        &self,
        embedding: &GpuEmbedding,
        prompt: &Prompt,
    ) -> Result<(Prediction, usize)> {
        let (prediction, _, dispatches) = self.decode_inner(embedding, prompt, false).await?;
        Ok((prediction, dispatches))
    }

    /// [`GpuSam::decode`] plus the masks' logits at the original image size
    /// (`Sam.postprocess_masks`: upsample to 1024, crop, resize), computed on the GPU in the
    /// same submit. Returns one `height * width` plane per mask.
    pub async fn decode_with_logits(
        &self,
        embedding: &GpuEmbedding,
        prompt: &Prompt,
    ) -> Result<(Prediction, Vec<Vec<f32>>)> {
        let (prediction, logits, _) = self.decode_inner(embedding, prompt, true).await?;
        let (h, w) = embedding.frame.original;
        let planes = logits
            .unwrap_or_default()
            .chunks_exact(h * w)
            .map(<[f32]>::to_vec)
            .collect();
        Ok((prediction, planes))
    }

    async fn decode_inner(
        &self,
        embedding: &GpuEmbedding,
        prompt: &Prompt,
        upsample: bool,
    ) -> Result<(Prediction, Option<Vec<f32>>, usize)> {
        let p = PromptTensors::new(prompt, &embedding.frame)?;
        // Embed prompts: sparse on the CPU, joined to the output tokens.
        let (sparse, _) = self.prompt_encoder.forward(
            p.points.as_ref().map(|(c, l)| (c, l)),
            p.boxes.as_ref(),
            None,
        )?;
        let tokens = Tensor::cat(&[self.output_tokens.unsqueeze(0)?, sparse], 1)?;
        let tokens = GpuTensor::from_candle(&self.ctx, &tokens)?;

        let mut rec = Recorder::new(&self.ctx);
        // src = image embedding + dense prompt
        let src = match &p.mask_input {
            None => None,
            Some(mask) => {
                let mask = GpuTensor::from_candle(&self.ctx, mask)?;
                let dense = self.mask_downscaling.forward(&mut rec, &mask)?;
                let hw = EMBEDDING_SIDE * EMBEDDING_SIDE;
                let dense = permute(&mut rec, &dense.reshape(&[1, EMBED_DIM, hw])?, &[0, 2, 1])?;
                Some(binary(&mut rec, &embedding.tokens, &dense, Binary::Add)?)
            }
        };
        let image = match &src {
            Some(src) => decoder::ImageInput::Src(src),
            None => decoder::ImageInput::Cached(&embedding.image_side),
        };
        // Predict masks
        let (masks, iou) = self.mask_decoder.forward(
            &mut rec,
            image,
            &self.image_pe_tokens,
            &tokens,
            prompt.multimask,
        )?;
        // Postprocess: low-res logits to the original image size.
        let full = if upsample {
            let frame = embedding.frame;
            let (in_h, in_w) = frame.input;
            let (h, w) = frame.original;
            let up = resize_bilinear(&mut rec, &masks, IMAGE_SIZE, IMAGE_SIZE, in_h, in_w)?;
            Some(if (h, w) == (in_h, in_w) {
                up
            } else {
                resize_bilinear(&mut rec, &up, h, w, h, w)?
            })
        } else {
            None
        };
        let dispatches = rec.dispatch_count();
        rec.read(&masks);
        rec.read(&iou);
        if let Some(full) = &full {
            rec.read(full);
        }
        let mut out = rec.finish().await?.into_iter();
        let (low_res_logits, iou) = match (out.next(), out.next()) {
            (Some(m), Some(i)) => (m, i),
            _ => return Err(Error::gpu("decode read back fewer tensors than recorded")),
        };
        debug_assert_eq!(
            low_res_logits.len(),
            iou.len() * LOW_RES_SIDE * LOW_RES_SIDE
        );
        Ok((
            Prediction {
                low_res_logits,
                iou,
                frame: embedding.frame,
            },
            out.next(),
            dispatches,
        ))
    }
}
