//! SAM's training loss, as the paper gives it: each mask candidate's logits against the truth by
//! focal loss (gamma 2, alpha 0.25) and dice loss, combined 20:1; the IoU head by mean squared
//! error against the real IoU of each candidate's mask; with several candidates only the one
//! with the lowest mask loss is back-propagated (its IoU term too). On candle's autograd: every
//! term is made of differentiable tensor ops.

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};

/// The weights of the loss's terms (the paper's: focal 20, dice 1, IoU 1) and the focal loss's
/// parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    pub focal_weight: f64,
    pub dice_weight: f64,
    pub iou_weight: f64,
    /// Focal loss's weight of the positive class (0.25).
    pub alpha: f64,
    /// Focal loss's focusing exponent (2).
    pub gamma: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            focal_weight: 20.0,
            dice_weight: 1.0,
            iou_weight: 1.0,
            alpha: 0.25,
            gamma: 2.0,
        }
    }
}

/// The loss of one prediction against its truth.
#[derive(Debug, Clone)]
pub struct Loss {
    /// The scalar to back-propagate: the chosen candidate's weighted focal + dice + IoU terms.
    pub total: Tensor,
    /// The candidate whose loss is back-propagated (the lowest mask loss).
    pub best: usize,
    /// Per candidate: focal loss, dice loss, the real IoU of its mask (logit > 0) with the
    /// truth, and the IoU head's squared error.
    pub focal: Vec<f32>,
    pub dice: Vec<f32>,
    pub iou: Vec<f32>,
    pub iou_error: Vec<f32>,
}

/// Focal loss of each candidate (`logits` `[M, H, W]`, `target` `[H, W]` of 0 and 1), the mean
/// over its pixels (torchvision's `sigmoid_focal_loss`): `alpha_t (1 - p_t)^gamma` times the
/// binary cross-entropy, `[M]`.
pub fn focal_loss(logits: &Tensor, target: &Tensor, alpha: f64, gamma: f64) -> Result<Tensor> {
    let t = target.broadcast_as(logits.shape())?;
    let p = candle_nn::ops::sigmoid(logits)?;
    // BCE with logits, the stable form: max(x, 0) - x t + log(1 + e^-|x|).
    let ce = ((logits.relu()? - (logits * &t)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    // 1 - p_t = p + t - 2 p t.
    let one_minus_pt = ((&p + &t)? - ((&p * &t)? * 2.0)?)?;
    let modulating = if gamma == 2.0 {
        one_minus_pt.sqr()?
    } else {
        one_minus_pt.powf(gamma)?
    };
    // alpha_t = alpha t + (1 - alpha)(1 - t) = (1 - alpha) + (2 alpha - 1) t.
    let alpha_t = ((&t * (2.0 * alpha - 1.0))? + (1.0 - alpha))?;
    let loss = ((ce * modulating)? * alpha_t)?;
    Ok(loss.flatten_from(1)?.mean(D::Minus1)?)
}

/// Dice loss of each candidate: `1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)` with `p` the
/// sigmoid of the logits, `[M]`.
pub fn dice_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let t = target.broadcast_as(logits.shape())?.flatten_from(1)?;
    let p = candle_nn::ops::sigmoid(logits)?.flatten_from(1)?;
    let numerator = (((&p * &t)?.sum(D::Minus1)? * 2.0)? + 1.0)?;
    let denominator = ((p.sum(D::Minus1)? + t.sum(D::Minus1)?)? + 1.0)?;
    Ok((1.0 - (numerator / denominator)?)?)
}

/// The IoU of each candidate's mask (logit > 0) with the truth, `[M]` (no gradient: it is the
/// IoU head's target). An empty union counts as IoU 1.
pub fn mask_iou(logits: &Tensor, target: &Tensor) -> Result<Vec<f32>> {
    let m = logits.dim(0)?;
    let pred = logits
        .detach()
        .gt(0.0)?
        .to_dtype(DType::F32)?
        .flatten_from(1)?;
    let t = target
        .detach()
        .broadcast_as(logits.shape())?
        .flatten_from(1)?
        .gt(0.5)?
        .to_dtype(DType::F32)?;
    let inter = (&pred * &t)?.sum(D::Minus1)?.to_vec1::<f32>()?;
    let union = ((&pred + &t)?.clamp(0.0, 1.0)?)
        .sum(D::Minus1)?
        .to_vec1::<f32>()?;
    Ok((0..m)
        .map(|i| {
            if union[i] == 0.0 {
                1.0
            } else {
                inter[i] / union[i]
            }
        })
        .collect())
}

/// SAM's loss of one prediction: `logits` `[M, H, W]` (M candidates), `iou_pred` `[M]`,
/// `target` `[H, W]` (0 and 1, the same size as the logits).
pub fn sam_loss(
    logits: &Tensor,
    iou_pred: &Tensor,
    target: &Tensor,
    cfg: &LossConfig,
) -> Result<Loss> {
    let (m, h, w) = logits.dims3()?;
    if target.dims() != [h, w] || iou_pred.dims() != [m] || m == 0 {
        return Err(Error::invalid(format!(
            "loss of logits {:?} and IoU predictions {:?} against a target {:?}: expected \
             [M, H, W], [M] and [H, W] with M > 0",
            logits.dims(),
            iou_pred.dims(),
            target.dims()
        )));
    }
    let target = target.to_dtype(DType::F32)?;
    let focal = focal_loss(logits, &target, cfg.alpha, cfg.gamma)?;
    let dice = dice_loss(logits, &target)?;
    let iou = mask_iou(logits, &target)?;
    let iou_target = Tensor::new(iou.as_slice(), logits.device())?;
    let iou_sq = (iou_pred - &iou_target)?.sqr()?;
    let mask = ((&focal * cfg.focal_weight)? + (&dice * cfg.dice_weight)?)?;
    let mask_values = mask.to_vec1::<f32>()?;
    // The first of equal losses, as torch.argmin.
    let best = (0..m).fold(0, |best, i| {
        if mask_values[i] < mask_values[best] {
            i
        } else {
            best
        }
    });
    let total = (mask.get(best)? + (iou_sq.get(best)? * cfg.iou_weight)?)?;
    Ok(Loss {
        total,
        best,
        focal: focal.to_vec1()?,
        dice: dice.to_vec1()?,
        iou,
        iou_error: iou_sq.to_vec1()?,
    })
}
