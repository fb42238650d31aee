//! Training SAM's prompt encoder and mask decoder on candle's autograd, the image encoder frozen
//! (its embeddings computed once): the paper's loss ([`loss`]) and AdamW over the same model
//! modules the predictor runs (the CPU backend, whose kernels give way to candle's
//! differentiable ops when a tensor carries a gradient).

pub mod coco;
pub mod eval;
pub mod interactive;
pub mod loss;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::error::{Error, Result};
use crate::model::cpu::Cpu;
use crate::model::sam::{ImageEmbedding, Prompt, Sam};
use crate::model::weights::Weights;
use interactive::{error_point, first_prompt, schedule, Truth};
use loss::{sam_loss, Loss, LossConfig};

/// The side of the decoder's low-res masks, the frame the loss compares in.
pub const TARGET_SIDE: usize = 256;

/// Keys under these prefixes are trained.
const TRAINED: [&str; 2] = ["prompt_encoder.", "mask_decoder."];
/// Buffers among them (registered with `register_buffer` in the reference): never trained.
const BUFFERS: [&str; 1] = ["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"];

/// One training example: a prompt on an embedded image and the mask it should give, `target`
/// `[256, 256]` (0 and 1) in the low-res masks' frame (the image resized and padded as the
/// model sees it, at a quarter of 1024).
#[derive(Debug, Clone)]
pub struct Sample {
    pub embedding: ImageEmbedding,
    pub prompt: Prompt,
    pub target: Tensor,
}

/// One object to train on interactively ([`interactive`]): its image's embedding and its truth.
#[derive(Debug, Clone)]
pub struct Object {
    pub embedding: ImageEmbedding,
    pub truth: Truth,
}

/// The loss of a batch of interactive sequences: the mean over objects and iterations, and per
/// object the loss and the IoU of the chosen candidate at each iteration.
#[derive(Debug, Clone)]
pub struct InteractiveLoss {
    pub total: f32,
    pub losses: Vec<Vec<f32>>,
    pub ious: Vec<Vec<f32>>,
}

impl InteractiveLoss {
    pub fn value(&self) -> Result<f32> {
        Ok(self.total)
    }
}

/// Predictions per object in the interactive sequence: the first prompt, the points, the
/// iterations without one.
pub const ITERATIONS: usize = 1 + interactive::POINTS + interactive::PLAIN_ITERATIONS;

/// The loss of a batch: the mean of its samples' totals, and each sample's terms.
#[derive(Debug, Clone)]
pub struct BatchLoss {
    pub total: Tensor,
    pub samples: Vec<Loss>,
}

impl BatchLoss {
    /// The batch's loss as a number.
    pub fn value(&self) -> Result<f32> {
        Ok(self.total.to_scalar::<f32>()?)
    }
}

/// The learning rate over a run, as the paper schedules it: a linear warm-up, then the base
/// rate, divided by 10 at two thirds of the run and again at 26/27 of it (the paper's 60k and
/// 86.7k of 90k iterations).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub lr: f64,
    pub warmup: usize,
    pub steps: usize,
}

impl Schedule {
    /// The paper's warm-up of 250 iterations, at most a tenth of a shorter run.
    pub fn new(lr: f64, steps: usize) -> Self {
        Self {
            lr,
            warmup: 250.min(steps / 10),
            steps,
        }
    }

    /// The rate of step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let decays = [2 * self.steps / 3, 26 * self.steps / 27]
            .iter()
            .filter(|&&at| step >= at)
            .count();
        self.lr * 0.1f64.powi(decays as i32)
    }
}

/// What a fine-tuning run does: `steps` optimisation steps of `batch` objects, the schedule's
/// base learning rate `lr`, the seed of the objects' order and prompts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunOptions {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            steps: 200,
            batch: 4,
            lr: 1e-4,
            seed: 0,
        }
    }
}

/// A fine-tuning run between its steps: objects drawn in a seeded order (a new one each pass),
/// each step [`Trainer::step_interactive`] at the [`Schedule`]'s rate.
pub struct Run {
    trainer: Trainer,
    objects: Vec<Object>,
    options: RunOptions,
    schedule: Schedule,
    done: usize,
    order: Vec<usize>,
    rng: rand_chacha::ChaCha8Rng,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("objects", &self.objects.len())
            .field("options", &self.options)
            .field("done", &self.done)
            .finish()
    }
}

impl Run {
    /// A run from `weights` (the prompt encoder and decoder are trained) on `objects`.
    pub fn new(weights: &Weights, objects: Vec<Object>, options: RunOptions) -> Result<Self> {
        if options.steps == 0 || options.batch == 0 {
            return Err(Error::invalid(format!(
                "a training run of {} steps of {} objects: both must be at least 1",
                options.steps, options.batch
            )));
        }
        if !(options.lr.is_finite() && options.lr > 0.0) {
            return Err(Error::invalid(format!(
                "learning rate {}: give a positive number",
                options.lr
            )));
        }
        if objects.is_empty() {
            return Err(Error::invalid("no object to train on"));
        }
        Ok(Self {
            trainer: Trainer::new(weights, paper_adamw(options.lr), LossConfig::default())?,
            objects,
            options,
            schedule: Schedule::new(options.lr, options.steps),
            done: 0,
            order: Vec::new(),
            rng: interactive::rng(options.seed, u64::MAX),
        })
    }

    /// The next step: its loss (before the step). An error once every step is done, or when
    /// the loss is not finite (the step is then not applied).
    pub fn step(&mut self) -> Result<f32> {
        if self.is_done() {
            return Err(Error::invalid("the training run is finished"));
        }
        let batch: Vec<Object> = (0..self.options.batch)
            .map(|_| {
                if self.order.is_empty() {
                    self.order = (0..self.objects.len()).collect();
                    rand::seq::SliceRandom::shuffle(self.order.as_mut_slice(), &mut self.rng);
                }
                let i = self.order.pop().unwrap_or(0);
                self.objects[i].clone()
            })
            .collect();
        let first = (self.done * self.options.batch) as u64;
        self.trainer
            .set_learning_rate(self.schedule.lr_at(self.done));
        let value = self
            .trainer
            .step_interactive(&batch, self.options.seed, first)?
            .total;
        self.done += 1;
        Ok(value)
    }

    pub fn is_done(&self) -> bool {
        self.done >= self.options.steps
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.done
    }

    pub fn options(&self) -> &RunOptions {
        &self.options
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub fn objects(&self) -> usize {
        self.objects.len()
    }

    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }
}

/// The generator streams of [`objective`]'s prompts start here: far from a run's (object `i`
/// of step `s` draws from stream `s * batch + i`), so an evaluation never replays a step's.
pub const OBJECTIVE_STREAM: u64 = 1 << 62;

/// First prompts per object in [`objective`].
pub const OBJECTIVE_PROMPTS: usize = 8;

/// What a run did to its objects, measured on `weights` without training: the training loss
/// of a first prompt (a click or a noisy box drawn from the object, three candidates, the best
/// one's loss, as a step's first prediction), the mean over [`OBJECTIVE_PROMPTS`] seeded prompts
/// per object. The prompts depend only on the objects and `seed`, never on the model's answers
/// (a whole interactive sequence places its clicks in the model's errors, so its loss jumps
/// when a click moves); the value is a continuous function of the weights, the same for the
/// same weights, objects and seed.
pub fn objective(weights: &Weights, objects: &[Object], seed: u64) -> Result<f32> {
    if objects.is_empty() {
        return Err(Error::invalid("no object to evaluate"));
    }
    // The inference path (no autograd graph), each image prepared once for its prompts.
    let sam: Sam = Sam::new(weights)?;
    let config = LossConfig::default();
    let mut sum = 0f64;
    for (i, o) in objects.iter().enumerate() {
        let target = Tensor::from_slice(
            o.truth.low_res(),
            (TARGET_SIDE, TARGET_SIDE),
            &candle_core::Device::Cpu,
        )?;
        let image = sam.record_prepare(&mut Cpu, &o.embedding.features, o.embedding.frame)?;
        for k in 0..OBJECTIVE_PROMPTS {
            let stream = OBJECTIVE_STREAM + (i * OBJECTIVE_PROMPTS + k) as u64;
            let prompt = first_prompt(&mut interactive::rng(seed, stream), &o.truth);
            let (low_res, iou) = sam.record_decode(&mut Cpu, &image, &prompt)?;
            let loss = sam_loss(&low_res.squeeze(0)?, &iou.squeeze(0)?, &target, &config)?;
            sum += f64::from(loss.total.to_scalar::<f32>()?);
        }
    }
    Ok((sum / (objects.len() * OBJECTIVE_PROMPTS) as f64) as f32)
}

/// AdamW's settings of the paper (betas 0.9 / 0.999, weight decay 0.1) at learning rate `lr`.
pub fn paper_adamw(lr: f64) -> ParamsAdamW {
    ParamsAdamW {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    }
}

/// The trainable part of a SAM checkpoint as autograd variables, and AdamW over them.
pub struct Trainer {
    /// Trained tensors by official key, in key order.
    params: Vec<(String, Var)>,
    /// The rest of the prompt encoder and decoder (buffers), as loaded.
    frozen: Vec<(String, Tensor)>,
    optimizer: AdamW,
    loss: LossConfig,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("params", &self.params.len())
            .field("loss", &self.loss)
            .finish()
    }
}

impl Trainer {
    /// Takes the prompt encoder and mask decoder of `weights` (any checkpoint the predictor
    /// loads; the image encoder's tensors are not read).
    pub fn new(weights: &Weights, adamw: ParamsAdamW, loss: LossConfig) -> Result<Self> {
        let mut keys: Vec<&str> = weights
            .keys()
            .into_iter()
            .filter(|k| TRAINED.iter().any(|p| k.starts_with(p)))
            .collect();
        keys.sort_unstable();
        if crate::model::sam::is_sam2(weights) {
            return Err(Error::UnsupportedModel(
                "training SAM 2's decoder is not built yet".into(),
            ));
        }
        if !keys.iter().any(|k| k.starts_with("mask_decoder.")) {
            return Err(Error::format(
                "no `mask_decoder.*` tensors: not a SAM checkpoint to train",
            ));
        }
        let (mut params, mut frozen) = (Vec::new(), Vec::new());
        for key in keys {
            let shape = weights.shape_of(key).unwrap_or_default();
            let t = weights.get(key, &shape)?;
            if BUFFERS.contains(&key) {
                frozen.push((key.to_string(), t));
            } else {
                params.push((key.to_string(), Var::from_tensor(&t)?));
            }
        }
        let vars = params.iter().map(|(_, v)| v.clone()).collect();
        let optimizer = AdamW::new(vars, adamw)?;
        Ok(Self {
            params,
            frozen,
            optimizer,
            loss,
        })
    }

    /// The trained tensors, by official key.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The prompt encoder and decoder with the current values, under their official keys (the
    /// variables' tensors: a model built from them is part of the autograd graph).
    fn tracked_weights(&self) -> Result<Weights> {
        Weights::from_tensors(
            self.params
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .chain(self.frozen.iter().cloned()),
        )
    }

    /// `base` (the checkpoint trained from, its image encoder included) with the trained
    /// tensors' current values: a whole checkpoint under the official keys.
    pub fn checkpoint(&self, base: &Weights) -> Result<Weights> {
        let trained: std::collections::HashMap<&str, &Var> =
            self.params.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut tensors = Vec::with_capacity(base.len());
        for key in base.keys() {
            let t = match trained.get(key) {
                Some(v) => v.as_tensor().detach().copy()?,
                None => base.get(key, &base.shape_of(key).unwrap_or_default())?,
            };
            tensors.push((key.to_string(), t));
        }
        Weights::from_tensors(tensors)
    }

    /// The current values as plain tensors under their official keys: a checkpoint of the
    /// prompt encoder and decoder (with an image encoder's weights added, a whole model).
    pub fn weights(&self) -> Result<Weights> {
        Weights::from_tensors(
            self.params
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
                .chain(self.frozen.iter().map(|(k, t)| Ok((k.clone(), t.clone()))))
                .collect::<Result<Vec<_>>>()?,
        )
    }

    /// The batch's loss, as a graph back to the trained tensors.
    pub fn loss(&self, samples: &[Sample]) -> Result<BatchLoss> {
        if samples.is_empty() {
            return Err(Error::invalid("a training batch needs at least one sample"));
        }
        let sam: Sam = Sam::new(&self.tracked_weights()?)?;
        let mut totals = Vec::with_capacity(samples.len());
        let mut losses = Vec::with_capacity(samples.len());
        for s in samples {
            if s.target.dims() != [TARGET_SIDE, TARGET_SIDE] {
                return Err(Error::invalid(format!(
                    "a training target of shape {:?}: give the mask at {TARGET_SIDE}x{TARGET_SIDE}, \
                     in the low-res masks' frame",
                    s.target.dims()
                )));
            }
            let image = sam.record_prepare(&mut Cpu, &s.embedding.features, s.embedding.frame)?;
            let (low_res, iou) = sam.record_decode(&mut Cpu, &image, &s.prompt)?;
            let l = sam_loss(
                &low_res.squeeze(0)?,
                &iou.squeeze(0)?,
                &s.target,
                &self.loss,
            )?;
            totals.push(l.total.clone());
            losses.push(l);
        }
        let total = (Tensor::stack(&totals, 0)?.sum_all()? / samples.len() as f64)?;
        Ok(BatchLoss {
            total,
            samples: losses,
        })
    }

    /// The batch's loss and its gradients with respect to the trained tensors.
    pub fn gradients(&self, samples: &[Sample]) -> Result<(BatchLoss, GradStore)> {
        let loss = self.loss(samples)?;
        let grads = loss.total.backward()?;
        Ok((loss, grads))
    }

    /// One optimisation step on a batch: its loss (before the step) back-propagated, then
    /// AdamW.
    pub fn step(&mut self, samples: &[Sample]) -> Result<BatchLoss> {
        let (loss, grads) = self.gradients(samples)?;
        self.optimizer.step(&grads)?;
        Ok(loss)
    }

    /// The loss of the paper's interactive sequence ([`ITERATIONS`] predictions) on each
    /// object. Object `i` draws its prompts from the generator of (`seed`, `first_index + i`):
    /// the same arguments give the same sequence.
    pub fn interactive_loss(
        &self,
        objects: &[Object],
        seed: u64,
        first_index: u64,
    ) -> Result<InteractiveLoss> {
        Ok(self.interactive(objects, seed, first_index, false)?.0)
    }

    /// [`Self::interactive_loss`] and its gradients with respect to the trained tensors. Each
    /// prediction's graph is back-propagated as soon as its loss is known (the mask input is
    /// the previous prediction's detached logits, so the predictions share only the
    /// parameters) and the gradients summed: the memory of one prediction's graph, not of the
    /// whole batch's.
    pub fn interactive_gradients(
        &self,
        objects: &[Object],
        seed: u64,
        first_index: u64,
    ) -> Result<(InteractiveLoss, GradStore)> {
        let (loss, grads) = self.interactive(objects, seed, first_index, true)?;
        let grads = grads.ok_or_else(|| Error::invalid("no prediction to take gradients of"))?;
        Ok((loss, grads))
    }

    fn interactive(
        &self,
        objects: &[Object],
        seed: u64,
        first_index: u64,
        with_grads: bool,
    ) -> Result<(InteractiveLoss, Option<GradStore>)> {
        if objects.is_empty() {
            return Err(Error::invalid("a training batch needs at least one object"));
        }
        let sam: Sam = Sam::new(&self.tracked_weights()?)?;
        let scale = 1.0 / (objects.len() * ITERATIONS) as f64;
        // The sum of each trained tensor's gradients, and the last prediction's store (candle's
        // stores are made by `backward` only), which carries the sums out.
        let mut sums: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let mut last: Option<GradStore> = None;
        let (mut total, mut losses, mut ious) = (0f64, Vec::new(), Vec::new());
        for (i, object) in objects.iter().enumerate() {
            let frame = object.embedding.frame;
            if object.truth.frame() != frame {
                return Err(Error::invalid(format!(
                    "an object's mask is for a {:?} image, its embedding for {:?}",
                    object.truth.frame().original,
                    frame.original
                )));
            }
            let mut rng = interactive::rng(seed, first_index + i as u64);
            let mut prompt = first_prompt(&mut rng, &object.truth);
            let plan = schedule(&mut rng);
            let (mut object_losses, mut object_ious) = (Vec::new(), Vec::new());
            for iteration in 0..ITERATIONS {
                // The image's side of the decoder, per prediction: its graph goes with the
                // prediction's.
                let image = sam.record_prepare(&mut Cpu, &object.embedding.features, frame)?;
                let (low_res, iou) = sam.record_decode(&mut Cpu, &image, &prompt)?;
                let low_res = low_res.squeeze(0)?;
                let l = sam_loss(&low_res, &iou.squeeze(0)?, &object.truth.target, &self.loss)?;
                let value = l.total.to_scalar::<f32>()?;
                object_losses.push(value);
                object_ious.push(l.iou[l.best]);
                total += value as f64 * scale;
                if with_grads {
                    let g = (&l.total * scale)?.backward()?;
                    for ((_, var), sum) in self.params.iter().zip(&mut sums) {
                        if let Some(new) = g.get(var.as_tensor()) {
                            *sum = Some(match sum.take() {
                                Some(old) => (old + new)?,
                                None => new.clone(),
                            });
                        }
                    }
                    last = Some(g);
                }
                let Some(&add_point) = plan.get(iteration) else {
                    break;
                };
                // The next prompt: the chosen candidate's logits as the mask input, one mask.
                let previous: Vec<f32> = low_res.get(l.best)?.detach().flatten_all()?.to_vec1()?;
                if add_point {
                    if let Some(p) = error_point(&mut rng, &previous, &object.truth) {
                        prompt.points.push(p);
                    }
                }
                prompt.mask_input = Some(previous);
                prompt.multimask = false;
            }
            losses.push(object_losses);
            ious.push(object_ious);
        }
        let grads = match last {
            Some(mut store) => {
                for ((_, var), sum) in self.params.iter().zip(sums) {
                    if let Some(sum) = sum {
                        store.insert(var.as_tensor(), sum);
                    }
                }
                Some(store)
            }
            None => None,
        };
        Ok((
            InteractiveLoss {
                total: total as f32,
                losses,
                ious,
            },
            grads,
        ))
    }

    /// One optimisation step on a batch of objects' interactive sequences
    /// ([`Self::interactive_gradients`]): the loss before the step. A loss that is not finite
    /// is an error and the step is not applied.
    pub fn step_interactive(
        &mut self,
        objects: &[Object],
        seed: u64,
        first_index: u64,
    ) -> Result<InteractiveLoss> {
        let (loss, grads) = self.interactive_gradients(objects, seed, first_index)?;
        if !loss.total.is_finite() {
            return Err(Error::invalid(format!(
                "the loss is {}: the step is not applied; lower the learning rate",
                loss.total
            )));
        }
        self.optimizer.step(&grads)?;
        Ok(loss)
    }

    /// The learning rate of the next steps (a schedule's warm-up and decay).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.optimizer.set_learning_rate(lr);
    }

    pub fn learning_rate(&self) -> f64 {
        self.optimizer.learning_rate()
    }
}
