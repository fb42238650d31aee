//! Direct CPU convolution kernels that candle lacks, and the fused epilogue of a conv.
//!
//! candle 0.11 runs a grouped conv2d as one small convolution per group and concatenates the
//! results; for a depthwise conv (groups == channels) that is hundreds of tiny im2col + gemm
//! calls, about 6 s of a 10-14 s TinyViT encode. [`DepthwiseConv2d`] computes the same thing
//! in one pass over f32 slices.
//!
//! After a dense conv, adding the bias, a residual and a GELU as three candle ops costs three
//! passes and three allocations over tensors of up to 16M values (TinyViT's first stage);
//! [`Epilogue`] does them in one pass, in place. Its GELU uses [`erf`], a rational
//! approximation that compiles to SIMD, where candle's `gelu_erf` calls libm's scalar `erff`
//! per element (about a fifth of the encode).

use candle_core::{CpuStorage, CustomOp1, InplaceOp1, InplaceOp2, Layout, Shape, Tensor};

use crate::error::{Error, Result};
use crate::threads;

/// Output side of a convolution: `(input + 2 * padding - kernel) / stride + 1`.
pub fn conv_out_size(input: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (input + 2 * padding - kernel) / stride + 1
}

/// A dense conv2d without bias (groups 1, dilation 1) over NCHW: `weight` `[out, in, k, k]`.
///
/// A 1x1 conv of stride 1 is one matmul `[out, in] @ [in, H*W]` on the input as it lies
/// (candle's own 1x1 path first copies the input element by element, and the result once
/// more). Larger kernels run as im2col + matmul over bands of output rows ([`IM2COL_TILE`]
/// values of patch matrix at a time), the patch rows copied a row span at a time; candle's
/// tiled conv gathers them one value at a time.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (c_out, c_in, kh, kw) = weight.dims4()?;
    let (b, c, h, w) = x.dims4()?;
    if c != c_in || kh != kw || stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
        return Err(Error::invalid(format!(
            "conv2d: input {:?} does not fit weight {:?} with stride {stride}, padding {padding}",
            x.dims(),
            weight.dims()
        )));
    }
    if (kh, stride, padding) == (1, 1, 0) {
        let weight = weight.reshape((c_out, c_in))?;
        let x = x.contiguous()?.reshape((b, c_in, h * w))?;
        let y = if b == 1 {
            threads::matmul(&weight, &x.squeeze(0)?)?
        } else {
            weight.broadcast_matmul(&x)?
        };
        return Ok(y.reshape((b, c_out, h, w))?);
    }
    conv2d_im2col(x, weight, stride, padding)
}

/// Values of the im2col patch matrix built at once (8 MiB of f32): bounds the extra memory
/// of a conv whatever the image size.
pub const IM2COL_TILE: usize = 1 << 21;

fn conv2d_im2col(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (c_out, c_in, k, _) = weight.dims4()?;
    let (b, _, h, w) = x.dims4()?;
    let (s, p) = (stride, padding);
    let out_h = conv_out_size(h, k, s, p);
    let out_w = conv_out_size(w, k, s, p);
    let patch = c_in * k * k;
    // [out, in * k * k], rows in the order the patch matrix is built: (c, ky, kx).
    let weight = weight.reshape((c_out, patch))?;
    let input = x
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let rows_per_tile = (IM2COL_TILE / (patch * out_w)).clamp(1, out_h);
    let mut out = vec![0f32; b * c_out * out_h * out_w];
    let mut col = Vec::new();
    for bi in 0..b {
        let image = &input[bi * c_in * h * w..(bi + 1) * c_in * h * w];
        let out_image = &mut out[bi * c_out * out_h * out_w..(bi + 1) * c_out * out_h * out_w];
        for oy0 in (0..out_h).step_by(rows_per_tile) {
            let oy1 = (oy0 + rows_per_tile).min(out_h);
            let n = (oy1 - oy0) * out_w;
            col.clear();
            col.resize(patch * n, 0f32);
            for (r, col_row) in col.chunks_exact_mut(n).enumerate() {
                let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                let plane = &image[ci * h * w..(ci + 1) * h * w];
                let (lo, hi) = valid_columns(kx, w, out_w, s, p);
                if lo == hi {
                    continue;
                }
                for (oy, dst) in (oy0..oy1).zip(col_row.chunks_exact_mut(out_w)) {
                    let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h) else {
                        continue;
                    };
                    let in_row = &plane[iy * w..(iy + 1) * w];
                    let ix0 = lo * s + kx - p;
                    let src = in_row[ix0..].iter().step_by(s);
                    for (d, &v) in dst[lo..hi].iter_mut().zip(src) {
                        *d = v;
                    }
                }
            }
            let col_t = Tensor::from_slice(&col, (patch, n), x.device())?;
            let y = threads::matmul(&weight, &col_t)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (o, y_row) in y.chunks_exact(n).enumerate() {
                let start = o * out_h * out_w + oy0 * out_w;
                out_image[start..start + n].copy_from_slice(y_row);
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, c_out, out_h, out_w), x.device())?)
}

/// For tap column `kx`, the output columns `[lo, hi)` whose input column `ox*s + kx - p`
/// lies in `[0, w)`: a contiguous range, so inner loops need no bounds tests.
fn valid_columns(kx: usize, w: usize, out_w: usize, s: usize, p: usize) -> (usize, usize) {
    let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
    let hi = if w + p > kx {
        ((w - 1 + p - kx) / s + 1).min(out_w)
    } else {
        0
    };
    (lo.min(out_w), hi.max(lo.min(out_w)))
}

pub use crate::model::backend::Activation;

impl Activation {
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Gelu => gelu(x),
            // Not `x.max(0.0)`: PyTorch's ReLU keeps a NaN a NaN, `f32::max` drops it.
            Activation::Relu => relu(x),
            Activation::Sigmoid => sigmoid(x),
        }
    }

    /// Applies the activation to every value of `xs`.
    pub fn apply_slice(self, xs: &mut [f32]) {
        match self {
            Activation::None => {}
            Activation::Gelu => xs.iter_mut().for_each(|x| *x = gelu(*x)),
            Activation::Relu => xs.iter_mut().for_each(|x| *x = relu(*x)),
            Activation::Sigmoid => xs.iter_mut().for_each(|x| *x = sigmoid(*x)),
        }
    }
}

/// ReLU that keeps NaN (`NaN < 0` is false): branch-free, so loops over it vectorize.
#[inline(always)]
pub fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// The error function in f32: Eigen's rational approximation (`generic_fast_erf_float`),
/// within a few ulp of libm's `erff` (see the test) and free of branches, so loops over it
/// vectorize. Beyond |x| = 4, erf is +-1 in f32.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const ERF_SATURATION: f32 = 4.0;
    // Odd numerator, even denominator, in x^2; Eigen's coefficients, as published.
    #[allow(clippy::excessive_precision)]
    const ALPHA: [f32; 7] = [
        -1.60960333262415e-02,
        -2.95459980854025e-03,
        -7.34990630326855e-04,
        -5.69250639462346e-05,
        -2.10102402082508e-06,
        2.77068142495902e-08,
        -2.72614225801306e-10,
    ];
    #[allow(clippy::excessive_precision)]
    const BETA: [f32; 5] = [
        -1.42647390514189e-02,
        -7.37332916720468e-03,
        -1.68282697438203e-03,
        -2.13374055278905e-04,
        -1.45660718464996e-05,
    ];
    let x = x.clamp(-ERF_SATURATION, ERF_SATURATION);
    let x2 = x * x;
    let mut p = ALPHA[6];
    for a in ALPHA[..6].iter().rev() {
        p = p * x2 + a;
    }
    let p = p * x;
    let mut q = BETA[4];
    for b in BETA[..4].iter().rev() {
        q = q * x2 + b;
    }
    p / q
}

/// `1 / (1 + exp(-x))`, as PyTorch's f32 sigmoid.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// GELU, exact erf form: `x / 2 * (1 + erf(x / sqrt(2)))`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// What follows a conv, fused into one in-place pass over its NCHW output:
/// `x = act(x + bias[c] (+ residual))`.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    /// `[channels]`, added over dim 1; `None`: no bias (then any shape is accepted).
    pub bias: Option<&'a [f32]>,
    pub act: Activation,
}

impl Epilogue<'_> {
    /// `x` (`[B, C, ...]` f32, owned: its storage is overwritten) -> `act(x + bias)`.
    pub fn apply(&self, x: Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        self.check(&x, None)?;
        x.inplace_op1(self)?;
        Ok(x)
    }

    /// `x` -> `act(x + bias + residual)`, `residual` of the same shape.
    pub fn apply_with_residual(&self, x: Tensor, residual: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let residual = residual.contiguous()?;
        self.check(&x, Some(&residual))?;
        x.inplace_op2(&residual, self)?;
        Ok(x)
    }

    fn check(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<()> {
        if let Some(bias) = self.bias {
            if x.rank() < 2 || x.dim(1)? != bias.len() {
                return Err(Error::invalid(format!(
                    "conv epilogue: bias of {} channels for an output of shape {:?}",
                    bias.len(),
                    x.dims()
                )));
            }
        }
        if let Some(r) = residual {
            if r.dims() != x.dims() {
                return Err(Error::invalid(format!(
                    "conv epilogue: residual {:?} for an output of shape {:?}",
                    r.dims(),
                    x.dims()
                )));
            }
        }
        Ok(())
    }

    /// The pass over `out` (with `residual` of the same length, or none), split over the
    /// threads when there are several.
    fn run(&self, out: &mut [f32], dims: &[usize], residual: Option<&[f32]>) {
        let act = self.act;
        // [B, C, rest]: one bias value per plane of `rest` values; without a bias, pieces of
        // any length.
        let plane: usize = match self.bias {
            Some(_) => dims[2..].iter().product(),
            None => EPILOGUE_PIECE,
        };
        threads::for_chunks(out, plane.max(1), |i, o| {
            let b = self.bias.map_or(0.0, |bias| bias[i % bias.len()]);
            match residual {
                Some(r) => {
                    let r = &r[i * plane..][..o.len()];
                    o.iter_mut()
                        .zip(r)
                        .for_each(|(o, r)| *o = act.apply(*o + b + r));
                }
                None => o.iter_mut().for_each(|o| *o = act.apply(*o + b)),
            }
        });
    }
}

/// Values per piece of an epilogue without a bias.
const EPILOGUE_PIECE: usize = 1 << 16;

/// The contiguous f32 values of a CPU storage.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 is supported");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous");
    };
    Ok(&data[start..end])
}

impl InplaceOp1 for Epilogue<'_> {
    fn name(&self) -> &'static str {
        "conv-epilogue"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("conv-epilogue: only f32 is supported");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("conv-epilogue: output must be contiguous");
        };
        self.run(&mut data[start..end], layout.dims(), None);
        Ok(())
    }
}

impl InplaceOp2 for Epilogue<'_> {
    fn name(&self) -> &'static str {
        "conv-epilogue-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let residual = contiguous_f32(s2, l2, "conv-epilogue-residual")?;
        let CpuStorage::F32(data) = s1 else {
            candle_core::bail!("conv-epilogue-residual: only f32 is supported");
        };
        let Some((start, end)) = l1.contiguous_offsets() else {
            candle_core::bail!("conv-epilogue-residual: output must be contiguous");
        };
        self.run(&mut data[start..end], l1.dims(), Some(residual));
        Ok(())
    }
}

/// A depthwise 2D convolution (`groups == channels`, one `k x k` filter per channel) with
/// bias, over NCHW f32 tensors: PyTorch's `Conv2d(c, c, k, stride, padding, groups=c)`.
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    /// `[channels, k, k]`, row-major.
    weight: Vec<f32>,
    /// `[channels]`.
    bias: Vec<f32>,
    channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl DepthwiseConv2d {
    /// `weight`: `[channels, 1, k, k]` as PyTorch stores a depthwise conv; `bias`: `[channels]`.
    pub fn new(weight: &Tensor, bias: &Tensor, stride: usize, padding: usize) -> Result<Self> {
        let (channels, one, kernel, kernel_w) = weight.dims4()?;
        if one != 1 || kernel != kernel_w {
            return Err(Error::invalid(format!(
                "depthwise conv weight must be [channels, 1, k, k], got {:?}",
                weight.dims()
            )));
        }
        if bias.dims() != [channels] {
            return Err(Error::invalid(format!(
                "depthwise conv bias must be [{channels}], got {:?}",
                bias.dims()
            )));
        }
        if stride == 0 {
            return Err(Error::invalid("depthwise conv stride must be at least 1"));
        }
        Ok(Self {
            weight: weight.flatten_all()?.to_vec1::<f32>()?,
            bias: bias.to_vec1::<f32>()?,
            channels,
            kernel,
            stride,
            padding,
        })
    }

    /// `x`: `[B, channels, H, W]` f32 on the CPU -> `act(conv(x) + bias)`, `[B, channels, H', W']`.
    pub fn forward(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        Ok(x.contiguous()?
            .apply_op1_no_bwd(&DepthwiseOp { conv: self, act })?)
    }

    /// The convolution over one `[h, w]` plane of channel `c`, into `out` (`[h', w']`).
    fn plane(
        &self,
        c: usize,
        input: &[f32],
        (h, w): (usize, usize),
        out: &mut [f32],
        act: Activation,
    ) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let out_w = conv_out_size(w, k, s, p);
        let filter = &self.weight[c * k * k..(c + 1) * k * k];
        for (oy, out_row) in out.chunks_exact_mut(out_w).enumerate() {
            out_row.fill(self.bias[c]);
            for ky in 0..k {
                let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h) else {
                    continue;
                };
                let in_row = &input[iy * w..(iy + 1) * w];
                for kx in 0..k {
                    let wv = filter[ky * k + kx];
                    let (lo, hi) = valid_columns(kx, w, out_w, s, p);
                    if lo == hi {
                        continue;
                    }
                    // First input column read: lo*s + kx - p (>= 0 by construction of lo).
                    let ix0 = lo * s + kx - p;
                    let dst = &mut out_row[lo..hi];
                    if s == 1 {
                        let src = &in_row[ix0..ix0 + (hi - lo)];
                        for (o, &v) in dst.iter_mut().zip(src) {
                            *o += wv * v;
                        }
                    } else {
                        let src = in_row[ix0..].iter().step_by(s);
                        for (o, &v) in dst.iter_mut().zip(src) {
                            *o += wv * v;
                        }
                    }
                }
            }
            act.apply_slice(out_row);
        }
    }
}

/// A [`DepthwiseConv2d`] with the activation of one call.
struct DepthwiseOp<'a> {
    conv: &'a DepthwiseConv2d,
    act: Activation,
}

impl CustomOp1 for DepthwiseOp<'_> {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let conv = self.conv;
        let input = contiguous_f32(storage, layout, "depthwise-conv2d")?;
        let (b, c, h, w) = layout.shape().dims4()?;
        if c != conv.channels {
            candle_core::bail!(
                "depthwise-conv2d: input has {c} channels, the filter {}",
                conv.channels
            );
        }
        if h + 2 * conv.padding < conv.kernel || w + 2 * conv.padding < conv.kernel {
            candle_core::bail!("depthwise-conv2d: input {h}x{w} is smaller than the kernel");
        }
        let out_h = conv_out_size(h, conv.kernel, conv.stride, conv.padding);
        let out_w = conv_out_size(w, conv.kernel, conv.stride, conv.padding);
        let mut out = vec![0f32; b * c * out_h * out_w];
        threads::for_chunks(&mut out, out_h * out_w, |i, dst| {
            conv.plane(i % c, &input[i * h * w..][..h * w], (h, w), dst, self.act);
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, out_h, out_w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::max_abs_diff;
    use candle_core::{DType, Device, Tensor};

    /// Checks the kernel against candle's grouped conv2d (+ bias, + candle's erf GELU).
    fn check(b: usize, c: usize, (h, w): (usize, usize), k: usize, stride: usize, padding: usize) {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 1.0, (c, 1, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let expected = x
            .conv2d(
                &wt, padding, stride, /* dilation */ 1, /* groups */ c,
            )
            .unwrap()
            .broadcast_add(&bias.reshape((c, 1, 1)).unwrap())
            .unwrap();
        let conv = DepthwiseConv2d::new(&wt, &bias, stride, padding).unwrap();
        let what = format!("b{b} c{c} {h}x{w} k{k} s{stride} p{padding}");
        let got = conv.forward(&x, Activation::None).unwrap();
        assert_eq!(got.dims(), expected.dims(), "{what}");
        let diff = max_abs_diff(&got, &expected);
        assert!(diff <= 1e-5, "{what}: max abs diff {diff}");

        let got = conv.forward(&x, Activation::Gelu).unwrap();
        let diff = max_abs_diff(&got, &expected.gelu_erf().unwrap());
        assert!(diff <= 1e-5, "{what} + GELU: max abs diff {diff}");
    }

    #[test]
    fn depthwise_matches_candle_grouped_conv_odd_sizes() {
        for &hw in &[(7, 5), (13, 11), (1, 1), (2, 9), (16, 17)] {
            for &stride in &[1, 2, 3] {
                for &(k, padding) in &[(3, 1), (3, 0), (1, 0), (5, 2), (3, 2)] {
                    if hw.0 + 2 * padding < k || hw.1 + 2 * padding < k {
                        continue;
                    }
                    check(2, 5, hw, k, stride, padding);
                }
            }
        }
    }

    #[test]
    fn im2col_conv2d_matches_candle_odd_sizes() {
        let dev = Device::Cpu;
        // The last case spans several bands of IM2COL_TILE values.
        let cases = [
            (1, 3, 4, 9, 13),
            (2, 2, 3, 5, 4),
            (1, 1, 2, 1, 1),
            (1, 32, 3, 40, 512),
        ];
        for &(b, c_in, c_out, h, w) in &cases {
            for &(k, stride, padding) in &[(3, 1, 1), (3, 2, 1), (3, 2, 0), (5, 3, 2), (1, 2, 0)] {
                if h + 2 * padding < k || w + 2 * padding < k {
                    continue;
                }
                let x = Tensor::randn(0f32, 1.0, (b, c_in, h, w), &dev).unwrap();
                // Unit-variance outputs, so 1e-5 is a relative tolerance too.
                let std = 1.0 / ((c_in * k * k) as f32).sqrt();
                let wt = Tensor::randn(0f32, std, (c_out, c_in, k, k), &dev).unwrap();
                let expected = x.conv2d(&wt, padding, stride, 1, 1).unwrap();
                let got = conv2d(&x, &wt, stride, padding).unwrap();
                let what = format!("b{b} {c_in}->{c_out} {h}x{w} k{k} s{stride} p{padding}");
                assert_eq!(got.dims(), expected.dims(), "{what}");
                let diff = max_abs_diff(&got, &expected);
                assert!(diff <= 1e-5, "{what}: {diff}");
            }
        }
    }

    #[test]
    fn pointwise_conv2d_matches_candle() {
        let dev = Device::Cpu;
        for &(b, c_in, c_out, h, w) in &[(1, 5, 7, 3, 11), (2, 3, 4, 5, 5)] {
            let x = Tensor::randn(0f32, 1.0, (b, c_in, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (c_out, c_in, 1, 1), &dev).unwrap();
            let expected = x.conv2d(&wt, 0, 1, 1, 1).unwrap();
            let got = conv2d(&x, &wt, 1, 0).unwrap();
            assert_eq!(got.dims(), expected.dims());
            let diff = max_abs_diff(&got, &expected);
            assert!(diff <= 1e-5, "b{b} {c_in}->{c_out} {h}x{w}: {diff}");
        }
    }

    #[test]
    fn depthwise_fixed_small_case() {
        // One channel, 3x3 input of ones, 3x3 filter of ones, padding 1, bias 0.5: each output
        // is 0.5 + the number of in-bounds taps (4 at corners, 6 at edges, 9 in the centre).
        let dev = Device::Cpu;
        let x = Tensor::ones((1, 1, 3, 3), DType::F32, &dev).unwrap();
        let wt = Tensor::ones((1, 1, 3, 3), DType::F32, &dev).unwrap();
        let bias = Tensor::new(&[0.5f32], &dev).unwrap();
        let y = DepthwiseConv2d::new(&wt, &bias, 1, 1)
            .unwrap()
            .forward(&x, Activation::None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![4.5, 6.5, 4.5, 6.5, 9.5, 6.5, 4.5, 6.5, 4.5]);
    }

    #[test]
    fn depthwise_rejects_a_wrong_channel_count() {
        let dev = Device::Cpu;
        let wt = Tensor::zeros((4, 1, 3, 3), DType::F32, &dev).unwrap();
        let bias = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev).unwrap();
        let conv = DepthwiseConv2d::new(&wt, &bias, 1, 1).unwrap();
        assert!(conv.forward(&x, Activation::None).is_err());
    }

    #[test]
    fn erf_is_within_a_few_ulp_of_libm() {
        // Every 1/4096 over [-6, 6], plus the extremes.
        let mut worst = 0f32;
        for i in -6 * 4096..=6 * 4096 {
            let x = i as f32 / 4096.0;
            worst = worst.max((erf(x) - libm_erf(x)).abs());
        }
        assert!(worst <= 5e-7, "max |erf - erff| = {worst}");
        assert!((erf(f32::MAX) - 1.0).abs() <= 5e-7);
        assert!((erf(f32::MIN) + 1.0).abs() <= 5e-7);
        assert_eq!(erf(0.0), 0.0);
    }

    /// libm's erff, as candle's `gelu_erf` uses it, through a 1-element tensor.
    fn libm_erf(x: f32) -> f32 {
        Tensor::new(&[x], &Device::Cpu)
            .unwrap()
            .erf()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0]
    }

    #[test]
    fn epilogue_matches_candle_ops() {
        let dev = Device::Cpu;
        let (b, c, h, w) = (2, 3, 5, 7);
        let x = Tensor::randn(0f32, 2.0, (b, c, h, w), &dev).unwrap();
        let r = Tensor::randn(0f32, 2.0, (b, c, h, w), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let xb = x.broadcast_add(&bias.reshape((c, 1, 1)).unwrap()).unwrap();
        let bias = bias.to_vec1::<f32>().unwrap();
        let bias = Some(bias.as_slice());

        type Case<'a> = (Option<&'a [f32]>, Option<&'a Tensor>, Activation, Tensor);
        let cases: [Case; 4] = [
            (bias, None, Activation::Gelu, xb.gelu_erf().unwrap()),
            (
                bias,
                Some(&r),
                Activation::Gelu,
                (&xb + &r).unwrap().gelu_erf().unwrap(),
            ),
            (bias, Some(&r), Activation::None, (&xb + &r).unwrap()),
            (None, None, Activation::Gelu, x.gelu_erf().unwrap()),
        ];
        for (i, (bias, residual, act, expected)) in cases.into_iter().enumerate() {
            let epi = Epilogue { bias, act };
            // A copy: the epilogue overwrites its input.
            let y = x.copy().unwrap();
            let got = match residual {
                Some(r) => epi.apply_with_residual(y, r).unwrap(),
                None => epi.apply(y).unwrap(),
            };
            let diff = max_abs_diff(&got, &expected);
            assert!(diff <= 1e-5, "case {i}: max abs diff {diff}");
        }
    }

    #[test]
    fn epilogue_rejects_a_wrong_bias_or_residual() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        let bias4 = [0f32; 4];
        let epi = Epilogue {
            bias: Some(&bias4),
            act: Activation::Gelu,
        };
        assert!(epi.apply(x.copy().unwrap()).is_err());
        let r = Tensor::zeros((1, 3, 4, 5), DType::F32, &dev).unwrap();
        let epi = Epilogue {
            bias: None,
            act: Activation::Gelu,
        };
        assert!(epi.apply_with_residual(x, &r).is_err());
    }
}
