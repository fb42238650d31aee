//! Direct CPU convolution kernels that candle lacks.
//!
//! candle 0.11 runs a grouped conv2d as one small convolution per group and concatenates the
//! results; for a depthwise conv (groups == channels) that is hundreds of tiny im2col + gemm
//! calls, about 6 s of a 10-14 s TinyViT encode. [`DepthwiseConv2d`] computes the same thing
//! in one pass over f32 slices.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::error::{Error, Result};

/// Output side of a convolution: `(input + 2 * padding - kernel) / stride + 1`.
pub fn conv_out_size(input: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (input + 2 * padding - kernel) / stride + 1
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

    /// `x`: `[B, channels, H, W]` f32 on the CPU -> `[B, channels, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.apply_op1_no_bwd(self)?)
    }

    /// The convolution over one `[h, w]` plane of channel `c`, into `out` (`[h', w']`).
    fn plane(&self, c: usize, input: &[f32], (h, w): (usize, usize), out: &mut [f32]) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let out_w = conv_out_size(w, k, s, p);
        let filter = &self.weight[c * k * k..(c + 1) * k * k];
        // For each tap column kx, the output columns whose input column ox*s + kx - p lies in
        // [0, w): a contiguous range, so the inner loop has no bounds tests.
        let col_range = |kx: usize| -> (usize, usize) {
            let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
            let hi = if w + p > kx {
                ((w - 1 + p - kx) / s + 1).min(out_w)
            } else {
                0
            };
            (lo, hi.max(lo))
        };
        for (oy, out_row) in out.chunks_exact_mut(out_w).enumerate() {
            out_row.fill(self.bias[c]);
            for ky in 0..k {
                let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h) else {
                    continue;
                };
                let in_row = &input[iy * w..(iy + 1) * w];
                for kx in 0..k {
                    let wv = filter[ky * k + kx];
                    let (lo, hi) = col_range(kx);
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
        }
    }
}

impl CustomOp1 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("depthwise-conv2d: only f32 is supported");
        };
        let (b, c, h, w) = layout.shape().dims4()?;
        if c != self.channels {
            candle_core::bail!(
                "depthwise-conv2d: input has {c} channels, the filter {}",
                self.channels
            );
        }
        if h + 2 * self.padding < self.kernel || w + 2 * self.padding < self.kernel {
            candle_core::bail!("depthwise-conv2d: input {h}x{w} is smaller than the kernel");
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("depthwise-conv2d: input must be contiguous");
        };
        let input = &data[start..end];
        let out_h = conv_out_size(h, self.kernel, self.stride, self.padding);
        let out_w = conv_out_size(w, self.kernel, self.stride, self.padding);
        let mut out = vec![0f32; b * c * out_h * out_w];
        for (i, (src, dst)) in input
            .chunks_exact(h * w)
            .zip(out.chunks_exact_mut(out_h * out_w))
            .enumerate()
        {
            self.plane(i % c, src, (h, w), dst);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, out_h, out_w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Checks the kernel against candle's grouped conv2d (+ bias) on one configuration.
    fn check(b: usize, c: usize, h: usize, w: usize, k: usize, stride: usize, padding: usize) {
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
        let got = DepthwiseConv2d::new(&wt, &bias, stride, padding)
            .unwrap()
            .forward(&x)
            .unwrap();
        assert_eq!(
            got.dims(),
            expected.dims(),
            "k{k} s{stride} p{padding} {h}x{w}"
        );
        let diff = (got - &expected)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 1e-5,
            "b{b} c{c} {h}x{w} k{k} s{stride} p{padding}: max abs diff {diff}"
        );
    }

    #[test]
    fn matches_candle_grouped_conv_odd_sizes() {
        for &(h, w) in &[(7, 5), (13, 11), (1, 1), (2, 9), (16, 17)] {
            for &stride in &[1, 2, 3] {
                for &(k, padding) in &[(3, 1), (3, 0), (1, 0), (5, 2), (3, 2)] {
                    if h + 2 * padding < k || w + 2 * padding < k {
                        continue;
                    }
                    check(2, 5, h, w, k, stride, padding);
                }
            }
        }
    }

    #[test]
    fn fixed_small_case() {
        // One channel, 3x3 input of ones, 3x3 filter of ones, padding 1, bias 0.5: each output
        // is 0.5 + the number of in-bounds taps (4 at corners, 6 at edges, 9 in the centre).
        let dev = Device::Cpu;
        let x = Tensor::ones((1, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let wt = Tensor::ones((1, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let bias = Tensor::new(&[0.5f32], &dev).unwrap();
        let y = DepthwiseConv2d::new(&wt, &bias, 1, 1)
            .unwrap()
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(y, vec![4.5, 6.5, 4.5, 6.5, 9.5, 6.5, 4.5, 6.5, 4.5]);
    }

    #[test]
    fn rejects_a_wrong_channel_count() {
        let dev = Device::Cpu;
        let wt = Tensor::zeros((4, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let bias = Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap();
        let x = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &dev).unwrap();
        let conv = DepthwiseConv2d::new(&wt, &bias, 1, 1).unwrap();
        assert!(conv.forward(&x).is_err());
    }
}
