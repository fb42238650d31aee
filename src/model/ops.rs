//! CPU kernels of the [`crate::model::cpu::Cpu`] backend that candle lacks or runs slowly:
//! GELU (erf), a threaded strided copy and a vectorized softmax.

use candle_core::Tensor;

use crate::error::Result;
use crate::model::conv::{Activation, Epilogue};
use crate::threads;

/// `act(x)` on a copy of `x`, as the fused epilogues apply it: GELU in its exact erf form
/// (PyTorch's `nn.GELU()` default) through the vectorizable [`crate::model::conv::erf`]; ReLU
/// keeping NaN as PyTorch's does (candle's `relu` and `f32::max` turn it into 0, which hides a
/// broken input behind plausible outputs).
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    if x.track_op() {
        return differentiable_activation(x, act);
    }
    Epilogue { bias: None, act }.apply(x.copy()?)
}

/// `act(x)` in candle's ops, which its autograd runs through (training: [`crate::train`]).
pub fn differentiable_activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::None => x.clone(),
        Activation::Relu => x.relu()?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::Sigmoid => candle_nn::ops::sigmoid(x)?,
    })
}

/// Whether any of `ts` is part of an autograd graph (a variable or computed from one): then
/// the CPU backend runs candle's differentiable ops instead of its own kernels, which have no
/// backward pass.
pub fn tracked(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// The error of a kernel with no backward pass given a tensor that needs one.
pub fn no_backward(op: &str) -> crate::Error {
    crate::Error::invalid(format!(
        "{op} has no backward pass: training runs through the prompt encoder and mask decoder, \
         the image encoder stays frozen"
    ))
}

/// `x` laid out contiguously, copied on the crate's threads when it is a strided view (candle's
/// own copy runs on one thread in the browser). A contiguous `x` is returned as is.
pub fn contiguous(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() {
        return Ok(x.clone());
    }
    if x.track_op() {
        return Ok(x.contiguous()?);
    }
    Ok(x.apply_op1_no_bwd(&StridedCopy)?)
}

/// The op behind [`contiguous`].
struct StridedCopy;

/// Values per piece of a strided copy.
const COPY_PIECE: usize = 1 << 15;

impl candle_core::CustomOp1 for StridedCopy {
    fn name(&self) -> &'static str {
        "strided-copy"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(src) = storage else {
            candle_core::bail!("strided-copy: only f32 is supported");
        };
        let dims = layout.dims();
        let strides = layout.stride();
        let start = layout.start_offset();
        let mut out = vec![0f32; layout.shape().elem_count()];
        let (n, step) = match (dims.last(), strides.last()) {
            (Some(&n), Some(&step)) if n > 0 => (n, step),
            _ => return Ok((candle_core::CpuStorage::F32(out), layout.shape().clone())),
        };
        let outer = &dims[..dims.len() - 1];
        let outer_strides = &strides[..strides.len() - 1];
        let rows_per_piece = (COPY_PIECE / n).max(1);
        threads::for_chunks(&mut out, rows_per_piece * n, |piece, dst| {
            // The multi-index of this piece's first row, then an odometer over the rows.
            let mut index = vec![0usize; outer.len()];
            let mut row = piece * rows_per_piece;
            for d in (0..outer.len()).rev() {
                index[d] = row % outer[d];
                row /= outer[d];
            }
            for line in dst.chunks_mut(n) {
                let at = start
                    + index
                        .iter()
                        .zip(outer_strides)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                if step == 1 {
                    line.copy_from_slice(&src[at..at + n]);
                } else {
                    for (j, d) in line.iter_mut().enumerate() {
                        *d = src[at + j * step];
                    }
                }
                next_index(&mut index, outer);
            }
        });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Steps the multi-index `index` over `dims` to the next element in row-major order (back to
/// all zeros after the last).
pub(crate) fn next_index(index: &mut [usize], dims: &[usize]) {
    for d in (0..dims.len()).rev() {
        index[d] += 1;
        if index[d] < dims[d] {
            return;
        }
        index[d] = 0;
    }
}

/// Softmax over the last dim.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    softmax_last_scaled(x, 1.0, None)
}

/// `softmax(x * scale + bias)` over the last dim, in one pass per row, on the crate's threads
/// (candle's softmax calls the scalar `expf`; this one runs [`exp_nonpositive`], which
/// vectorizes). `bias`, when given, is flat and repeats every `bias.len()` values of `x`, a
/// whole number of rows (TinyViT's attention biases `[heads, N, N]` for logits
/// `[windows, heads, N, N]`).
pub fn softmax_last_scaled(x: &Tensor, scale: f32, bias: Option<&[f32]>) -> Result<Tensor> {
    let x = contiguous(x)?;
    if let Some(b) = bias {
        let row = x.dims().last().copied().unwrap_or(1);
        if b.is_empty() || b.len() % row != 0 || x.elem_count() % b.len() != 0 {
            return Err(crate::Error::invalid(format!(
                "softmax: a bias of {} values does not repeat over logits of shape {:?}",
                b.len(),
                x.dims()
            )));
        }
    }
    if x.track_op() {
        let mut logits = (&x * scale as f64)?;
        if let Some(b) = bias {
            let b = Tensor::from_slice(b, b.len(), x.device())?;
            logits = logits
                .reshape(((), b.dim(0)?))?
                .broadcast_add(&b)?
                .reshape(x.shape())?;
        }
        return Ok(candle_nn::ops::softmax(&logits, candle_core::D::Minus1)?);
    }
    let bias = bias.map_or(SoftmaxBias::None, SoftmaxBias::Repeat);
    Ok(x.apply_op1_no_bwd(&SoftmaxOp { scale, bias })?)
}

/// `softmax(x * scale + rel_h[k / kw] + rel_w[k % kw])` over the last dim (`k` the key, on a
/// `kh x kw` grid): SAM ViT's decomposed relative positions (`add_decomposed_rel_pos`), the
/// `[.., Nq, kh, kw]` bias never made. `rel` holds, for every row of `x` in order, its `kh`
/// height terms then its `kw` width terms.
pub fn softmax_last_rel_pos(
    x: &Tensor,
    scale: f32,
    rel: &[f32],
    (kh, kw): (usize, usize),
) -> Result<Tensor> {
    let x = contiguous(x)?;
    let row = x.dims().last().copied().unwrap_or(0);
    let rows = x.elem_count().checked_div(row).unwrap_or(0);
    if row != kh * kw || rel.len() != rows * (kh + kw) {
        return Err(crate::Error::invalid(format!(
            "softmax: relative positions of {} values for logits of shape {:?} over a {kh}x{kw} grid",
            rel.len(),
            x.dims()
        )));
    }
    if x.track_op() {
        return Err(no_backward("the softmax with relative positions"));
    }
    let bias = SoftmaxBias::Decomposed { rel, kh, kw };
    Ok(x.apply_op1_no_bwd(&SoftmaxOp { scale, bias })?)
}
/// `e^x` for `x <= 0` (a softmax's logits less their maximum), within 2 ulp of `f32::exp`;
/// below -87 it returns `e^-87` (1.6e-38, nothing beside a row's maximum term, which is 1).
/// Cody-Waite reduction to `r = x - n ln 2`, `|r| <= ln2 / 2`, Cephes' degree-7 polynomial for
/// `e^r`, and `2^n` built in the exponent bits: branch-free, so a loop over it vectorizes.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two: n * LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    #[allow(clippy::excessive_precision)]
    let p = (((((1.987_569_15e-4 * r + 1.398_199_95e-3) * r + 8.333_451_9e-3) * r
        + 4.166_579_6e-2)
        * r
        + 1.666_666_55e-1)
        * r
        + 5.000_000_1e-1)
        * (r * r)
        + r
        + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Lanes of the partial maxima and sums in [`softmax_row`]: independent accumulators, so that
/// the reductions vectorize (a float sum in one accumulator is a chain of dependent adds).
const LANES: usize = 8;

/// Softmax of one row of logits, in place.
fn softmax_row(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, v) in sums.iter_mut().zip(c) {
            *v = exp_nonpositive(*v - max);
            *s += *v;
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - max);
        sum += *v;
    }
    let sum = sum + sums.iter().sum::<f32>();
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// What [`SoftmaxOp`] adds to the scaled logits.
enum SoftmaxBias<'a> {
    None,
    /// Flat; repeats every `len()` values of the logits.
    Repeat(&'a [f32]),
    /// `kh + kw` values per row: row `r`, key `k` gets `rel[r][k / kw] + rel[r][kh + k % kw]`.
    Decomposed {
        rel: &'a [f32],
        kh: usize,
        kw: usize,
    },
}

/// The op behind [`softmax_last_scaled`] and [`softmax_last_rel_pos`].
struct SoftmaxOp<'a> {
    scale: f32,
    bias: SoftmaxBias<'a>,
}

/// Values per piece of a softmax (whole rows, at least one).
const SOFTMAX_PIECE: usize = 1 << 14;

impl candle_core::CustomOp1 for SoftmaxOp<'_> {
    fn name(&self) -> &'static str {
        "softmax-last-scaled"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = crate::model::conv::contiguous_f32(storage, layout, "softmax")?;
        let n = layout.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; x.len()];
        if n == 0 || x.is_empty() {
            return Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()));
        }
        let rows_per_piece = (SOFTMAX_PIECE / n).max(1);
        threads::for_chunks(&mut out, rows_per_piece * n, |piece, dst| {
            let start = piece * rows_per_piece * n;
            for (r, row) in dst.chunks_mut(n).enumerate() {
                let at = start + r * n;
                let src = &x[at..at + n];
                // Logits, as x * scale + bias (the reference's order of operations).
                match self.bias {
                    SoftmaxBias::Repeat(bias) => {
                        let b = &bias[at % bias.len()..][..n];
                        for ((d, &s), &b) in row.iter_mut().zip(src).zip(b) {
                            *d = s * self.scale + b;
                        }
                    }
                    SoftmaxBias::Decomposed { rel, kh, kw } => {
                        let r = &rel[(at / n) * (kh + kw)..][..kh + kw];
                        let (rh, rw) = r.split_at(kh);
                        for ((d, s), &h) in row.chunks_mut(kw).zip(src.chunks(kw)).zip(rh) {
                            for ((d, &s), &w) in d.iter_mut().zip(s).zip(rw) {
                                *d = s * self.scale + h + w;
                            }
                        }
                    }
                    SoftmaxBias::None => {
                        for (d, &s) in row.iter_mut().zip(src) {
                            *d = s * self.scale;
                        }
                    }
                }
                softmax_row(row);
            }
        });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::max_abs_diff;
    use candle_core::{Device, Tensor};

    #[test]
    fn exp_nonpositive_is_within_2_ulp_of_exp() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let got = exp_nonpositive(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        // 2 ulp of f32 is 2.4e-7 relative.
        assert!(worst <= 2.4e-7, "max relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1e30) > 0.0 && exp_nonpositive(-1e30) < 2e-38);
    }

    #[test]
    fn contiguous_copies_every_view_as_candle_does() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 5, 7, 66), &dev).unwrap();
        let views = [
            x.permute((0, 2, 1, 3)).unwrap(),
            x.transpose(2, 3).unwrap(),
            x.narrow(3, 10, 20).unwrap().permute((3, 1, 0, 2)).unwrap(),
            x.narrow(1, 1, 3).unwrap(),
            x.reshape((15, 7, 66)).unwrap().t().unwrap(),
        ];
        for v in &views {
            let got = contiguous(v).unwrap();
            assert!(got.is_contiguous());
            let want = v.contiguous().unwrap();
            assert_eq!(got.dims(), want.dims());
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn softmax_matches_candle_with_scale_and_bias() {
        let dev = Device::Cpu;
        // [windows, heads, N, N] logits with [heads, N, N] biases, as TinyViT's attention.
        let x = Tensor::randn(0f32, 3.0, (5, 4, 49, 49), &dev).unwrap();
        let ab = Tensor::randn(0f32, 1.0, (4, 49, 49), &dev).unwrap();
        let scale = 0.176_776_7;
        let want = candle_nn::ops::softmax_last_dim(
            &(x.clone() * scale as f64)
                .unwrap()
                .broadcast_add(&ab)
                .unwrap(),
        )
        .unwrap();
        let ab_flat: Vec<f32> = ab.flatten_all().unwrap().to_vec1().unwrap();
        let got = softmax_last_scaled(&x, scale, Some(&ab_flat)).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-6, "with scale and bias: {d}");
        // Plain, on a strided view, rows of odd length.
        let y = Tensor::randn(0f32, 5.0, (7, 33, 3), &dev)
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        let d = max_abs_diff(
            &softmax_last(&y).unwrap(),
            &candle_nn::ops::softmax_last_dim(&y.contiguous().unwrap()).unwrap(),
        );
        assert!(d <= 1e-6, "plain: {d}");
        // A bias that does not repeat over the logits is refused.
        assert!(softmax_last_scaled(&x, 1.0, Some(&vec![0.0; 3 * 49 * 49])).is_err());
        assert!(softmax_last_scaled(&x, 1.0, Some(&[0.0; 50])).is_err());
    }
}
