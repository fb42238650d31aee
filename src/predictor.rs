//! The predictor a page or a tool holds: the model on the backend chosen, the image set once,
//! prompts decoded against it. Backend `Auto` uses the GPU when a hardware adapter exists (a
//! software one, such as lavapipe or SwiftShader, is slower than the CPU backend). The predictor
//! holds one model on one backend; a lost GPU device is recovered (the model built again on a
//! new device, else on the CPU, from the weights kept for that) without losing the image: its
//! embedding is always kept on the CPU side too.

use crate::error::{Error, Result};
use crate::gpu::context::Precision;
use crate::gpu::{GpuContext, GpuEmbedding, GpuSam};
use crate::image::{ImageFrame, MaskCleanup, RgbImage};
use crate::model::sam::{ImageEmbedding, Mask, Prediction, Prompt, Sam};
use crate::model::weights::Weights;

/// The backend asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Cpu,
    /// An error when no GPU adapter exists.
    Gpu,
    /// The GPU when a hardware adapter exists, else the CPU.
    Auto,
}

/// The backend in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Gpu,
}

/// The image set, on the CPU always and on the GPU when one is in use.
struct ImageState {
    embedding: ImageEmbedding,
    gpu: Option<GpuEmbedding>,
}

/// The model a decode runs on: the GPU's with the image prepared there, or the CPU's.
enum Model<'a> {
    Gpu(&'a GpuSam, &'a GpuEmbedding),
    Cpu(&'a Sam),
}

/// SAM with an image set, on the CPU or the GPU.
pub struct Predictor {
    /// Kept to build the model again when the GPU device is lost.
    weights: Weights,
    /// The checkpoint as loaded, once tensors of it have been replaced ([`Self::set_tensors`]).
    loaded: Option<Weights>,
    /// The model, on the CPU when `gpu` is `None`.
    cpu: Option<Sam>,
    gpu: Option<GpuSam>,
    /// Set when the GPU was asked for or found, so that a lost device is replaced.
    wants_gpu: bool,
    /// The GPU precision asked for (f16 is used where the adapter offers shader-f16).
    precision: Precision,
    image: Option<ImageState>,
}

impl Predictor {
    /// Builds the model on the backend asked for, in f32. With `Auto`, the reason the GPU is
    /// not used (no adapter, device refused) is returned beside the predictor.
    pub async fn new(weights: Weights, choice: BackendChoice) -> Result<(Self, Option<Error>)> {
        Self::with_precision(weights, choice, Precision::F32).await
    }

    /// [`Predictor::new`] with the GPU's precision: f16 takes effect where the adapter offers
    /// shader-f16 (see [`Predictor::precision`]); the CPU backend always computes in f32.
    pub async fn with_precision(
        weights: Weights,
        choice: BackendChoice,
        precision: Precision,
    ) -> Result<(Self, Option<Error>)> {
        let (gpu, why_not) = match choice {
            BackendChoice::Cpu => (None, None),
            BackendChoice::Gpu => (Some(open_gpu(&weights, precision).await?), None),
            BackendChoice::Auto => match open_gpu(&weights, precision).await {
                Ok(gpu) if gpu.ctx().is_software() => {
                    let why = Error::gpu(format!(
                        "the only GPU adapter, {}, is a software rasterizer on the CPU, slower \
                         than the CPU backend; ask for the GPU backend to use it anyway",
                        gpu.ctx().adapter_name()
                    ));
                    (None, Some(why))
                }
                Ok(gpu) => (Some(gpu), None),
                Err(e) => (None, Some(e)),
            },
        };
        let wants_gpu = gpu.is_some();
        let cpu = match gpu {
            Some(_) => None,
            None => Some(cpu_model(&weights)?),
        };
        Ok((
            Self {
                weights,
                loaded: None,
                cpu,
                gpu,
                wants_gpu,
                precision,
                image: None,
            },
            why_not,
        ))
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        if self.gpu.is_some() {
            Backend::Gpu
        } else {
            Backend::Cpu
        }
    }

    /// The precision in use: the GPU model's, f32 on the CPU.
    pub fn precision(&self) -> Precision {
        self.gpu
            .as_ref()
            .map_or(Precision::F32, |g| g.ctx().precision())
    }

    /// The adapter in use, e.g. "llvmpipe (...) (Vulkan, Cpu)"; `None` on the CPU.
    pub fn adapter_name(&self) -> Option<String> {
        self.gpu.as_ref().map(|g| g.ctx().adapter_name())
    }

    /// Whether the checkpoint is SAM 2's.
    pub fn is_sam2(&self) -> bool {
        crate::model::sam::is_sam2(&self.weights)
    }

    /// The frame of an image of `height x width` for this model: SAM's (the longest side to
    /// 1024) or SAM 2's (stretched to 1024x1024).
    pub fn frame(&self, height: usize, width: usize) -> Result<ImageFrame> {
        if self.is_sam2() {
            ImageFrame::stretched(height, width)
        } else {
            ImageFrame::new(height, width)
        }
    }

    /// The CPU model, when in use.
    pub fn cpu(&self) -> Option<&Sam> {
        self.cpu.as_ref()
    }

    /// The GPU model, when in use.
    pub fn gpu(&self) -> Option<&GpuSam> {
        self.gpu.as_ref()
    }

    /// `SamPredictor.set_image`: embeds the image once (on the GPU when its encoder runs there).
    pub async fn set_image(&mut self, image: &RgbImage) -> Result<()> {
        self.set_image_with_progress(image, &mut |_, _| {}).await
    }

    /// [`Predictor::set_image`], calling `progress(done, steps)` as the encoder's steps (its
    /// blocks, for SAM's ViT) complete.
    pub async fn set_image_with_progress(
        &mut self,
        image: &RgbImage,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        self.image = None;
        let state = match self.live_gpu().await? {
            Some(gpu) => {
                let (embedding, g, _) = gpu.embed_counted(image, progress).await?;
                ImageState {
                    embedding,
                    gpu: Some(g),
                }
            }
            None => {
                let cpu = self.cpu_model()?;
                let embedding = cpu.embed_with_progress(image, progress)?;
                cpu.prepare_decoder(&embedding)?;
                ImageState {
                    embedding,
                    gpu: None,
                }
            }
        };
        self.image = Some(state);
        Ok(())
    }

    /// Sets an embedding computed elsewhere (decode-only use, as the official demo does).
    pub async fn set_embedding(&mut self, embedding: ImageEmbedding) -> Result<()> {
        self.image = None;
        let gpu = match self.live_gpu().await? {
            Some(gpu) => Some(gpu.upload_embedding(&embedding).await?),
            None => {
                self.cpu_model()?.prepare_decoder(&embedding)?;
                None
            }
        };
        self.image = Some(ImageState { embedding, gpu });
        Ok(())
    }

    /// The embedding of the image set.
    pub fn embedding(&self) -> Result<&ImageEmbedding> {
        self.image
            .as_ref()
            .map(|s| &s.embedding)
            .ok_or_else(no_image)
    }

    /// Low-res logits and IoU predictions for `prompt`.
    pub async fn predict_low_res(&mut self, prompt: &Prompt) -> Result<Prediction> {
        Ok(self.run(prompt, Masks::None).await?.0)
    }

    /// Low-res logits, IoU predictions and the masks at the image's size.
    pub async fn predict(&mut self, prompt: &Prompt) -> Result<(Prediction, Vec<Mask>)> {
        self.predict_with(prompt, &MaskCleanup::default()).await
    }

    /// [`Self::predict`] with `SAM2ImagePredictor`'s post-processing of the masks (holes and
    /// sprinkles of the low-res logits up to an area; the low-res logits returned are not
    /// changed).
    pub async fn predict_with(
        &mut self,
        prompt: &Prompt,
        cleanup: &MaskCleanup,
    ) -> Result<(Prediction, Vec<Mask>)> {
        let masks = if cleanup.is_off() {
            Masks::Full
        } else {
            Masks::Cleaned(*cleanup)
        };
        let (pred, masks) = self.run(prompt, masks).await?;
        Ok((pred, masks.unwrap_or_default()))
    }

    /// Low-res logits and IoU predictions for each prompt: on the GPU one recording and one
    /// submit for the whole batch; on the CPU the prompts spread over the crate's threads (in
    /// the threaded wasm build, where one decode alone uses them poorly), else one after
    /// another. The image's per-image work is shared by all.
    pub async fn predict_batch(&mut self, prompts: &[Prompt]) -> Result<Vec<Prediction>> {
        self.decoding(async |model, state| match model {
            Model::Gpu(gpu, g) => gpu.decode_batch(g, prompts).await,
            Model::Cpu(cpu) => {
                let embedding = &state.embedding;
                cpu.prepare_decoder(embedding)?;
                crate::threads::map(prompts.len(), |i| cpu.decode(embedding, &prompts[i]))
            }
        })
        .await
    }

    async fn run(
        &mut self,
        prompt: &Prompt,
        masks: Masks,
    ) -> Result<(Prediction, Option<Vec<Mask>>)> {
        self.decoding(async |model, state| match model {
            Model::Gpu(gpu, g) => gpu_predict(gpu, g, prompt, masks).await,
            Model::Cpu(cpu) => cpu_predict(cpu, &state.embedding, prompt, masks),
        })
        .await
    }

    /// Runs `decode` on the model in use and the image set, with one retry: a device lost
    /// since the image was set (or during the call) is replaced first.
    async fn decoding<T>(
        &mut self,
        decode: impl AsyncFn(Model<'_>, &ImageState) -> Result<T>,
    ) -> Result<T> {
        if self.image.is_none() {
            return Err(no_image());
        }
        for attempt in 0..2 {
            self.live_gpu().await?;
            let state = self.image.as_ref().ok_or_else(no_image)?;
            let model = match (&self.gpu, &state.gpu) {
                (Some(gpu), Some(g)) => Model::Gpu(gpu, g),
                _ => Model::Cpu(self.cpu_model()?),
            };
            match decode(model, state).await {
                Err(_) if attempt == 0 && self.gpu_lost() => continue,
                other => return other,
            }
        }
        Err(Error::gpu("the GPU device was lost twice in a row"))
    }

    fn gpu_lost(&self) -> bool {
        self.gpu.as_ref().is_some_and(|g| g.ctx().is_lost())
    }

    /// The weights the model is built from (the loaded checkpoint, with any tensors replaced).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Whether tensors of the loaded checkpoint have been replaced ([`Self::set_tensors`]).
    pub fn is_tuned(&self) -> bool {
        self.loaded.is_some()
    }

    /// The checkpoint as it was loaded, before any [`Self::set_tensors`].
    pub fn loaded_weights(&self) -> &Weights {
        self.loaded.as_ref().unwrap_or(&self.weights)
    }

    /// Replaces tensors of the model by official key (a fine-tuned prompt encoder and
    /// decoder: [`crate::train::Trainer::weights`]) and builds it again on its backend; the
    /// image stays set. Each key must be one of the checkpoint's, with its shape.
    pub async fn set_tensors(&mut self, tensors: Weights) -> Result<()> {
        let base = self.loaded_weights().clone();
        let mut weights = base.clone();
        for key in tensors.keys() {
            let shape = base.shape_of(key).ok_or_else(|| {
                Error::invalid(format!("`{key}` is not a tensor of the loaded checkpoint"))
            })?;
            weights.insert(key, tensors.get(key, &shape)?)?;
        }
        self.rebuild(weights).await?;
        self.loaded = Some(base);
        Ok(())
    }

    /// Builds the model again from the checkpoint as it was loaded, undoing
    /// [`Self::set_tensors`].
    pub async fn revert_tensors(&mut self) -> Result<()> {
        if let Some(base) = self.loaded.take() {
            self.rebuild(base).await?;
        }
        Ok(())
    }

    /// The model built again from `weights` on the backend in use, the image set again.
    async fn rebuild(&mut self, weights: Weights) -> Result<()> {
        if self.gpu.is_some() {
            let gpu = open_gpu(&weights, self.precision).await?;
            if let Some(state) = &mut self.image {
                state.gpu = Some(gpu.upload_embedding(&state.embedding).await?);
            }
            self.gpu = Some(gpu);
        } else {
            let cpu = cpu_model(&weights)?;
            if let Some(state) = &self.image {
                cpu.prepare_decoder(&state.embedding)?;
            }
            self.cpu = Some(cpu);
        }
        self.weights = weights;
        Ok(())
    }

    /// The GPU model when in use, replacing a lost device: a new device when one can be had
    /// (the image's embedding is uploaded again), else the CPU from then on.
    async fn live_gpu(&mut self) -> Result<Option<&GpuSam>> {
        if self.wants_gpu && (self.gpu.is_none() || self.gpu_lost()) {
            self.gpu = None;
            if let Some(state) = &mut self.image {
                state.gpu = None;
            }
            if let Ok(gpu) = open_gpu(&self.weights, self.precision).await {
                if let Some(state) = &mut self.image {
                    state.gpu = Some(gpu.upload_embedding(&state.embedding).await?);
                }
                self.gpu = Some(gpu);
            } else {
                // No device to be had: the CPU from now on, the image's embedding kept.
                self.wants_gpu = false;
                self.cpu = Some(cpu_model(&self.weights)?);
                if let Some(state) = &self.image {
                    self.cpu_model()?.prepare_decoder(&state.embedding)?;
                }
            }
        }
        Ok(self.gpu.as_ref())
    }

    /// The CPU model, when the predictor runs on the CPU.
    fn cpu_model(&self) -> Result<&Sam> {
        self.cpu
            .as_ref()
            .ok_or_else(|| Error::gpu("the GPU model is in use, not the CPU one"))
    }
}

/// The most a wasm32 module's memory can grow to, less what the module, its stacks and the
/// decoder's buffers take beside the weights and the encoder's work.
pub const WASM32_BUDGET: u64 = (4 << 30) - (256 << 20);

/// Whether the CPU model of `weights` fits a wasm32 module: its f32 weights and the encoder's
/// working memory within [`WASM32_BUDGET`]. A model that does not is refused by name before
/// anything is built, rather than running out of memory part way; its weights go to GPU
/// memory on WebGPU instead. Checked on wasm32 only (a native process has no such limit).
pub fn check_fits_wasm32(weights: &Weights) -> Result<()> {
    let held = weights.f32_bytes();
    let work = crate::model::sam::cpu_encode_working_bytes(weights);
    if held + work <= WASM32_BUDGET {
        return Ok(());
    }
    let gb = |b: u64| b as f64 / 1e9;
    Err(Error::UnsupportedModel(format!(
        "this checkpoint's weights take {:.2} GB as f32 on the CPU path and its encoder about \
         {:.2} GB more, beyond the 4.29 GB a wasm32 module can address; load it with backend \
         \"webgpu\", where the weights live in GPU memory",
        gb(held),
        gb(work)
    )))
}

/// The CPU model (on wasm32, after [`check_fits_wasm32`]).
fn cpu_model(weights: &Weights) -> Result<Sam> {
    #[cfg(target_arch = "wasm32")]
    check_fits_wasm32(weights)?;
    Sam::new(weights)
}

/// The GPU model on a new device, in `precision` where the adapter offers it (f16 needs
/// shader-f16), else in f32.
async fn open_gpu(weights: &Weights, precision: Precision) -> Result<GpuSam> {
    let ctx = GpuContext::new().await?;
    let ctx = match precision {
        Precision::F16 if ctx.supports_f16() => ctx.with_precision(Precision::F16)?,
        _ => ctx,
    };
    GpuSam::upload(&ctx, weights).await
}

fn no_image() -> Error {
    Error::invalid("no image set: set an image or an embedding before predicting")
}

/// The masks a prediction is asked for.
#[derive(Debug, Clone, Copy)]
enum Masks {
    /// The low-res logits only.
    None,
    /// The masks at the image's size (on the GPU where the decoder runs there).
    Full,
    /// The masks at the image's size from the low-res logits after a clean-up (on the CPU).
    Cleaned(MaskCleanup),
}

async fn gpu_predict(
    gpu: &GpuSam,
    embedding: &GpuEmbedding,
    prompt: &Prompt,
    masks: Masks,
) -> Result<(Prediction, Option<Vec<Mask>>)> {
    match masks {
        Masks::None => return Ok((gpu.decode(embedding, prompt).await?, None)),
        Masks::Cleaned(cleanup) => {
            // The clean-up labels the low-res logits' regions: on the CPU, from those read back.
            let pred = gpu.decode(embedding, prompt).await?;
            let masks = pred.masks_with(&cleanup)?;
            return Ok((pred, Some(masks)));
        }
        Masks::Full => {}
    }
    let (pred, planes) = gpu.decode_with_logits(embedding, prompt).await?;
    let masks = planes
        .iter()
        .enumerate()
        .map(|(i, p)| pred.mask_from_logits(i, p))
        .collect::<Result<Vec<_>>>()?;
    Ok((pred, Some(masks)))
}

fn cpu_predict(
    sam: &Sam,
    embedding: &ImageEmbedding,
    prompt: &Prompt,
    masks: Masks,
) -> Result<(Prediction, Option<Vec<Mask>>)> {
    let pred = sam.decode(embedding, prompt)?;
    let masks = match masks {
        Masks::None => None,
        Masks::Full => Some(pred.masks()?),
        Masks::Cleaned(cleanup) => Some(pred.masks_with(&cleanup)?),
    };
    Ok((pred, masks))
}
