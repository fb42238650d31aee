//! The CPU backend: candle tensors, with the crate's own kernels where candle's are slow or
//! missing (threaded strided copies and softmax in [`crate::model::ops`], convs and their fused
//! epilogues in [`crate::model::conv`], the transposed conv's pixel shuffle and the channel
//! layer norm here). Tensors stay candle tensors, so candle's autograd can run through the same
//! modules.
//!
//! Layout ops return views where candle can (permute, slice); an op that needs its input laid
//! out copies it on the crate's threads ([`contiguous`]).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::error::{Error, Result};
use crate::model::backend::{Activation, Backend, ConvOpts, Gemm, Param};
use crate::model::conv::{contiguous_f32, conv2d, DepthwiseConv2d, Epilogue};
use crate::model::ops::{self, contiguous};
use crate::threads;

/// The CPU backend (a pass on it holds nothing: ops run as they are called).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

/// Scores held at once by [`Cpu::attention_rel_pos`] and [`Cpu::attention`]: 16 Mi values
/// (64 MiB), so that a global block's 12 heads x 4096 x 4096 scores (768 MiB, past what wasm32
/// can spare) go in 13 pieces.
const SCORES_AT_ONCE: usize = 1 << 24;

/// `x` as a GEMM operand: contiguous, or a transpose of a contiguous tensor in its last two
/// dims (which candle's GEMM reads as is); otherwise copied.
fn gemm_operand(x: &Tensor) -> Result<Tensor> {
    let rank = x.rank();
    if x.is_contiguous() || (rank >= 2 && x.transpose(rank - 2, rank - 1)?.is_contiguous()) {
        Ok(x.clone())
    } else {
        contiguous(x)
    }
}

/// `a @ b` with numpy batch broadcasting. When `b`'s batch is a suffix of `a`'s (the same
/// matrices for every index of `a`'s leading dims), those leading dims join `a`'s rows: one
/// batched GEMM over `b`'s batch, without materialising the broadcast `b`.
fn batched_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    let (ba, bb) = (&a.dims()[..ra - 2], &b.dims()[..rb - 2]);
    if ba == bb {
        return same_batch_matmul(a, b);
    }
    // `b`'s batch padded in front with 1s to `a`'s rank.
    let lead = ba.len().saturating_sub(bb.len());
    let b_pad: Vec<usize> = std::iter::repeat_n(1, lead)
        .chain(bb.iter().copied())
        .collect();
    let k = b_pad.iter().take_while(|&&d| d == 1).count().min(ba.len());
    if ba.len() >= bb.len() && b_pad[k..] == ba[k..] && k > 0 {
        let (m, kk) = (a.dim(ra - 2)?, a.dim(ra - 1)?);
        let n = b.dim(rb - 1)?;
        let rest = &ba[k..];
        let lead_dims = &ba[..k];
        let lead_n: usize = lead_dims.iter().product();
        // a: [lead.., rest.., M, K] -> [rest.., lead.. * M, K]
        let mut perm: Vec<usize> = (k..ba.len()).collect();
        perm.extend(0..k);
        perm.extend([ra - 2, ra - 1]);
        let mut folded: Vec<usize> = rest.to_vec();
        folded.extend([lead_n * m, kk]);
        let a2 = contiguous(&a.permute(perm)?)?.reshape(folded)?;
        // b without its leading 1s: `[rest.., K, N]` (squeezing keeps a transposed view).
        let mut b2 = gemm_operand(b)?;
        while b2.rank() > rest.len() + 2 {
            b2 = b2.squeeze(0)?;
        }
        debug_assert_eq!(b2.dims()[..rest.len()], *rest);
        debug_assert_eq!(b2.dims()[rest.len()..], [kk, n]);
        let y = same_batch_matmul(&a2, &b2)?; // [rest.., lead.. * M, N]
        let mut unfolded: Vec<usize> = rest.to_vec();
        unfolded.extend(lead_dims);
        unfolded.extend([m, n]);
        // [rest.., lead.., M, N] -> [lead.., rest.., M, N]
        let r = rest.len();
        let mut back: Vec<usize> = (r..r + k).collect();
        back.extend(0..r);
        back.extend([r + k, r + k + 1]);
        return Ok(y.reshape(unfolded)?.permute(back)?);
    }
    Ok(gemm_operand(a)?.broadcast_matmul(&gemm_operand(b)?)?)
}

/// `a @ b` for operands with the same batch dims, which are flattened into one (candle's GEMM
/// walks at most two).
fn same_batch_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let rank = a.rank();
    if rank <= 4 {
        return threads::matmul(&gemm_operand(a)?, &gemm_operand(b)?);
    }
    let batch: usize = a.dims()[..rank - 2].iter().product();
    let flat = |x: &Tensor| -> Result<Tensor> {
        let (r, c) = (x.dim(rank - 2)?, x.dim(rank - 1)?);
        let t = x.transpose(rank - 2, rank - 1)?;
        Ok(if t.is_contiguous() {
            t.reshape((batch, c, r))?.transpose(1, 2)?
        } else {
            contiguous(x)?.reshape((batch, r, c))?
        })
    };
    let y = threads::matmul(&flat(a)?, &flat(b)?)?;
    let mut dims = a.dims()[..rank - 2].to_vec();
    dims.extend([a.dim(rank - 2)?, b.dim(rank - 1)?]);
    Ok(y.reshape(dims)?)
}

/// The values of a small f32 tensor (a bias, a norm's weight).
/// `block(start, len)` over `nq` queries in blocks whose scores (`per_query` each) take at most
/// [`SCORES_AT_ONCE`] values, the results joined along `dim`.
fn in_query_blocks(
    nq: usize,
    per_query: usize,
    dim: usize,
    block: impl Fn(usize, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    if nq == 0 {
        return block(0, 0);
    }
    let rows = (SCORES_AT_ONCE / per_query.max(1)).clamp(1, nq);
    let mut outs = (0..nq)
        .step_by(rows)
        .map(|start| block(start, rows.min(nq - start)))
        .collect::<Result<Vec<_>>>()?;
    if outs.len() == 1 {
        return Ok(outs.remove(0));
    }
    Ok(Tensor::cat(&outs, dim)?)
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
}

/// `act(x)` on an owned tensor (overwritten in place when it can be).
fn activate(x: Tensor, act: Activation) -> Result<Tensor> {
    if x.track_op() {
        return ops::differentiable_activation(&x, act);
    }
    match act {
        Activation::None => Ok(x),
        Activation::Relu | Activation::Gelu | Activation::Sigmoid => {
            Epilogue { bias: None, act }.apply(contiguous(&x)?)
        }
    }
}

impl Backend for Cpu {
    type Device = ();
    type Tensor = Tensor;

    fn begin(_: &()) -> Self {
        Cpu
    }

    fn param(_: &(), t: &Tensor, use_: Param) -> Result<Tensor> {
        let t = t.to_dtype(DType::F32)?;
        Ok(match use_ {
            Param::Plain | Param::Conv | Param::Depthwise => t.contiguous()?,
            // x @ W^T: kept as W^T `[in, out]`, the GEMM's right operand as it lies.
            Param::Linear => t.t()?.contiguous()?,
            // `[in, out, 2, 2]` -> `[out * 4, in]`, rows in (out, ky, kx) order: the GEMM
            // `W' @ x[in, H*W]` gives each output channel's four sub-images as rows.
            Param::ConvTranspose => {
                let (c_in, c_out, kh, kw) = t.dims4()?;
                t.permute((1, 2, 3, 0))?
                    .contiguous()?
                    .reshape((c_out * kh * kw, c_in))?
            }
        })
    }

    fn input(&mut self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_dtype(DType::F32)?)
    }

    fn dims(t: &Tensor) -> &[usize] {
        t.dims()
    }

    fn reshape(&mut self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != x.elem_count() {
            return Err(Error::invalid(format!(
                "cannot reshape {:?} ({} values) to {shape:?} ({n} values)",
                x.dims(),
                x.elem_count()
            )));
        }
        Ok(contiguous(x)?.reshape(shape)?)
    }

    fn permute(&mut self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        Ok(x.permute(perm.to_vec())?)
    }

    fn slice(&mut self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(x.narrow(dim, start, len)?)
    }

    fn concat(&mut self, xs: &[&Tensor], dim: usize) -> Result<Tensor> {
        Ok(Tensor::cat(xs, dim)?)
    }

    fn window_partition(
        &mut self,
        x: &Tensor,
        (h, w): (usize, usize),
        ws: usize,
    ) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        if l != h * w || ws == 0 {
            return Err(Error::invalid(format!(
                "window_partition: tokens {:?} for a {h}x{w} grid in windows of {ws}",
                x.dims()
            )));
        }
        let x = contiguous(x)?.reshape((b, h, w, c))?;
        let (pad_b, pad_r) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
        // Zero tokens, as F.pad: they go through the attention's LayerNorm and are attended
        // to like any other token.
        let x = if pad_b > 0 || pad_r > 0 {
            x.pad_with_zeros(1, 0, pad_b)?.pad_with_zeros(2, 0, pad_r)?
        } else {
            x
        };
        let (n_h, n_w) = ((h + pad_b) / ws, (w + pad_r) / ws);
        Ok(
            contiguous(&x.reshape((b, n_h, ws, n_w, ws, c))?.transpose(2, 3)?)?.reshape((
                b * n_h * n_w,
                ws * ws,
                c,
            ))?,
        )
    }

    fn window_reverse(
        &mut self,
        windows: &Tensor,
        (h, w): (usize, usize),
        ws: usize,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (nb, n, c) = windows.dims3()?;
        let (n_h, n_w) = (h.div_ceil(ws.max(1)), w.div_ceil(ws.max(1)));
        if ws == 0 || n != ws * ws || h == 0 || w == 0 || nb % (n_h * n_w) != 0 {
            return Err(Error::invalid(format!(
                "window_reverse: windows {:?} for a {h}x{w} grid in windows of {ws}",
                windows.dims()
            )));
        }
        let b = nb / (n_h * n_w);
        let (p_h, p_w) = (n_h * ws, n_w * ws);
        let x = contiguous(&windows.reshape((b, n_h, n_w, ws, ws, c))?.transpose(2, 3)?)?
            .reshape((b, p_h, p_w, c))?;
        let x = if p_h != h || p_w != w {
            contiguous(&x.narrow(1, 0, h)?.narrow(2, 0, w)?)?
        } else {
            x
        };
        let x = x.reshape((b, h * w, c))?;
        match residual {
            Some(r) => Ok((r + x)?),
            None => Ok(x),
        }
    }

    fn add(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if a.dims() == b.dims() {
            Ok((a + b)?)
        } else {
            Ok(a.broadcast_add(b)?)
        }
    }

    fn maximum(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if a.dims() == b.dims() {
            Ok(a.maximum(b)?)
        } else {
            Ok(a.broadcast_maximum(b)?)
        }
    }

    fn activation(&mut self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match act {
            Activation::None => Ok(x.clone()),
            Activation::Relu | Activation::Gelu | Activation::Sigmoid => {
                ops::activation(&contiguous(x)?, act)
            }
        }
    }

    fn linear(
        &mut self,
        x: &Tensor,
        weight_t: &Tensor,
        bias: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (in_dim, out_dim) = weight_t.dims2()?;
        if dims.last() != Some(&in_dim) {
            return Err(Error::invalid(format!(
                "linear of x {dims:?} with a weight of {in_dim} inputs"
            )));
        }
        let rows = x.elem_count() / in_dim.max(1);
        let y = threads::matmul(&contiguous(x)?.reshape((rows, in_dim))?, weight_t)?;
        let y = match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = out_dim;
        activate(y.reshape(out_dims)?, act)
    }

    fn matmul(&mut self, a: &Tensor, b: &Tensor, opts: Gemm<'_, Tensor>) -> Result<Tensor> {
        let (ra, rb) = (a.rank(), b.rank());
        if ra < 2 || rb < 2 {
            return Err(Error::invalid(format!(
                "matmul of a {:?} and b {:?}: both need at least 2 dims",
                a.dims(),
                b.dims()
            )));
        }
        let b = if opts.trans_b {
            b.transpose(rb - 2, rb - 1)?
        } else {
            b.clone()
        };
        let y = batched_matmul(a, &b)?;
        let y = if opts.alpha == 1.0 {
            y
        } else {
            y.affine(opts.alpha as f64, 0.0)?
        };
        let y = match opts.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        };
        activate(y, opts.act)
    }

    fn softmax(&mut self, x: &Tensor) -> Result<Tensor> {
        ops::softmax_last(x)
    }

    fn attention(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        scale: f32,
    ) -> Result<Tensor> {
        let (q, k, v) = (gemm_operand(q)?, gemm_operand(k)?, gemm_operand(v)?);
        let rank = k.rank();
        // k^T is a strided view that the batched GEMM reads as is.
        let kt = k.transpose(rank - 2, rank - 1)?;
        if bias.is_some_and(|b| b.track_op()) {
            return Err(ops::no_backward("an attention bias"));
        }
        if bias.is_some() || ops::tracked(&[&q, &k, &v]) {
            let logits = threads::matmul(&q, &kt)?;
            let bias = bias.map(values).transpose()?;
            let attn = ops::softmax_last_scaled(&logits, scale, bias.as_deref())?;
            return threads::matmul(&attn, &v);
        }
        // Hiera-L's global blocks: 8 heads x 4096 x 4096 scores, 512 MiB whole.
        let (nq, nk) = (q.dims()[rank - 2], k.dims()[rank - 2]);
        let batch: usize = q.dims()[..rank - 2].iter().product();
        in_query_blocks(nq, batch * nk, rank - 2, |start, len| {
            let logits = threads::matmul(&q.narrow(rank - 2, start, len)?, &kt)?;
            let attn = ops::softmax_last_scaled(&logits, scale, None)?;
            threads::matmul(&attn, &v)
        })
    }

    fn attention_rel_pos(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rel: &Tensor,
        (kh, kw): (usize, usize),
        scale: f32,
    ) -> Result<Tensor> {
        let (b, h, nq, _) = q.dims4()?;
        let nk = k.dims4()?.2;
        if nk != kh * kw || rel.dims() != [b, h, nq, kh + kw] || v.dims() != k.dims() {
            return Err(Error::invalid(format!(
                "attention of q {:?}, k {:?}, v {:?} with relative positions {:?} over a {kh}x{kw} grid",
                q.dims(),
                k.dims(),
                v.dims(),
                rel.dims()
            )));
        }
        let (q, k, v) = (gemm_operand(q)?, gemm_operand(k)?, gemm_operand(v)?);
        let kt = k.transpose(2, 3)?;
        let rel = contiguous(rel)?;
        in_query_blocks(nq, b * h * nk, 2, |start, len| {
            let logits = threads::matmul(&q.narrow(2, start, len)?, &kt)?;
            let rel_block = values(&rel.narrow(2, start, len)?)?;
            let attn = ops::softmax_last_rel_pos(&logits, scale, &rel_block, (kh, kw))?;
            threads::matmul(&attn, &v)
        })
    }

    fn multi_head_attention(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f32,
    ) -> Result<Tensor> {
        let (b, nq, c) = q.dims3()?;
        let bad = || {
            Error::invalid(format!(
                "attention of q {:?}, k {:?}, v {:?} in {heads} heads",
                q.dims(),
                k.dims(),
                v.dims()
            ))
        };
        if heads == 0 || c % heads != 0 || v.dims() != k.dims() {
            return Err(bad());
        }
        let d = c / heads;
        // [B, N, H * D] -> [B, H, N, D], views the attention's GEMMs copy as they need; keys
        // and values already split into heads are taken as they are.
        let split = |x: &Tensor| -> Result<Tensor> {
            match *x.dims() {
                [xb, n, xc] if (xb, xc) == (b, c) => {
                    Ok(contiguous(x)?.reshape((b, n, heads, d))?.transpose(1, 2)?)
                }
                [xb, xh, _, xd] if (xb, xh, xd) == (b, heads, d) => Ok(x.clone()),
                _ => Err(bad()),
            }
        };
        let out = self.attention(&split(q)?, &split(k)?, &split(v)?, None, scale)?;
        Ok(contiguous(&out.transpose(1, 2)?)?.reshape((b, nq, c))?)
    }

    fn layer_norm(
        &mut self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        eps: f32,
        act: Activation,
    ) -> Result<Tensor> {
        use candle_core::Module;
        if ops::tracked(&[x, weight, bias]) {
            let y = candle_nn::ops::layer_norm_slow(x, weight, bias, eps)?;
            return ops::differentiable_activation(&y, act);
        }
        let norm = candle_nn::LayerNorm::new(weight.clone(), bias.clone(), eps as f64);
        activate(norm.forward(&contiguous(x)?)?, act)
    }

    fn layer_norm_2d(
        &mut self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        eps: f32,
        act: Activation,
    ) -> Result<Tensor> {
        let c = x.dims4()?.1;
        if ops::tracked(&[x, weight, bias]) {
            // LayerNorm2d as the reference writes it: over the channels of each pixel.
            let channel = |t: &Tensor| t.reshape((1, c, 1, 1));
            let u = x.mean_keepdim(1)?;
            let d = x.broadcast_sub(&u)?;
            let s = d.sqr()?.mean_keepdim(1)?;
            let y = d.broadcast_div(&(s + eps as f64)?.sqrt()?)?;
            let y = y
                .broadcast_mul(&channel(weight)?)?
                .broadcast_add(&channel(bias)?)?;
            return ops::differentiable_activation(&y, act);
        }
        let op = ChannelNorm {
            weight: values(weight)?,
            bias: values(bias)?,
            eps,
            act,
        };
        if op.weight.len() != c || op.bias.len() != c {
            return Err(Error::invalid(format!(
                "LayerNorm2d of {} channels on an input of shape {:?}",
                op.weight.len(),
                x.dims()
            )));
        }
        Ok(contiguous(x)?.apply_op1_no_bwd(&op)?)
    }

    fn conv2d(
        &mut self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: ConvOpts,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        if ops::tracked(&[x, weight]) || bias.is_some_and(|b| b.track_op()) {
            if opts.groups != 1 {
                return Err(ops::no_backward("a depthwise conv"));
            }
            let y = x.conv2d(weight, opts.padding, opts.stride, 1, 1)?;
            let y = match bias {
                Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
                None => y,
            };
            let y = match residual {
                Some(r) => (y + r)?,
                None => y,
            };
            return ops::differentiable_activation(&y, act);
        }
        let x = contiguous(x)?;
        let bias = bias.map(values).transpose()?;
        let c_in = x.dims4()?.1;
        if opts.groups == 1 {
            let y = conv2d(&x, weight, opts.stride, opts.padding)?;
            let epilogue = Epilogue {
                bias: bias.as_deref(),
                act,
            };
            return match residual {
                Some(r) => epilogue.apply_with_residual(y, &contiguous(r)?),
                None => epilogue.apply(y),
            };
        }
        let c_out = weight.dim(0)?;
        if opts.groups != c_in || c_out != c_in {
            return Err(Error::UnsupportedModel(format!(
                "grouped conv {c_in}->{c_out} with {} groups (only dense and depthwise are implemented)",
                opts.groups
            )));
        }
        let bias = match bias {
            Some(b) => Tensor::from_vec(b, c_out, &candle_core::Device::Cpu)?,
            None => Tensor::zeros(c_out, DType::F32, &candle_core::Device::Cpu)?,
        };
        let conv = DepthwiseConv2d::new(weight, &bias, opts.stride, opts.padding)?;
        match residual {
            None => conv.forward(&x, act),
            Some(r) => {
                let y = conv.forward(&x, Activation::None)?;
                Epilogue { bias: None, act }.apply_with_residual(y, &contiguous(r)?)
            }
        }
    }

    fn conv_transpose2x2(
        &mut self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        let (b, c_in, h, w) = x.dims4()?;
        let (rows, w_in) = weight.dims2()?;
        if w_in != c_in || rows % 4 != 0 {
            return Err(Error::invalid(format!(
                "conv_transpose2x2: input {:?} for a weight of {w_in} input channels",
                x.dims()
            )));
        }
        let c_out = rows / 4;
        if ops::tracked(&[x, weight]) || bias.is_some_and(|b| b.track_op()) {
            // The same GEMM per image, then the pixel shuffle as a reshape and a permute:
            // rows (out, ky, kx) x (i, j) -> out x (2i + ky) x (2j + kx).
            let per_image = (0..b)
                .map(|i| {
                    let xi = x.get(i)?.reshape((c_in, h * w))?;
                    let y = threads::matmul(weight, &xi)?
                        .reshape((c_out, 2, 2, h, w))?
                        .permute((0, 3, 1, 4, 2))?
                        .reshape((c_out, 2 * h, 2 * w))?;
                    Ok(y)
                })
                .collect::<Result<Vec<_>>>()?;
            let y = Tensor::stack(&per_image, 0)?;
            let y = match bias {
                Some(t) => y.broadcast_add(&t.reshape((1, c_out, 1, 1))?)?,
                None => y,
            };
            return ops::differentiable_activation(&y, act);
        }
        let bias = match bias {
            Some(t) => values(t)?,
            None => vec![0.0; c_out],
        };
        if bias.len() != c_out {
            return Err(Error::invalid(format!(
                "conv_transpose2x2: bias of {} values for {c_out} channels",
                bias.len()
            )));
        }
        // Each image as `[in, H*W]`: a transposed view when `x` is a channel-last tensor seen
        // as NCHW (the decoder's tokens), so that no copy is made.
        let nhwc = x.permute((0, 2, 3, 1))?;
        let per_image = (0..b)
            .map(|i| {
                let rhs = if nhwc.is_contiguous() {
                    nhwc.get(i)?.reshape((h * w, c_in))?.t()?
                } else {
                    contiguous(&x.get(i)?)?.reshape((c_in, h * w))?
                };
                threads::matmul(weight, &rhs) // [out * 4, H*W]
            })
            .collect::<Result<Vec<_>>>()?;
        let y = Tensor::stack(&per_image, 0)?;
        Ok(y.apply_op1_no_bwd(&PixelShuffle2x2 {
            bias,
            act,
            hw: (h, w),
        })?)
    }
}

/// `[B, out * 4, H*W]` (rows in (out, ky, kx) order) -> NCHW `[B, out, 2H, 2W]`, plus the bias,
/// then `act`: the pixel shuffle of a 2x2/s2 transposed conv done as one GEMM.
struct PixelShuffle2x2 {
    bias: Vec<f32>,
    act: Activation,
    hw: (usize, usize),
}

impl CustomOp1 for PixelShuffle2x2 {
    fn name(&self) -> &'static str {
        "conv-transpose-shuffle"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(storage, layout, self.name())?;
        let (b, rows, hw) = layout.shape().dims3()?;
        let (h, w) = self.hw;
        let c = self.bias.len();
        if rows != 4 * c || hw != h * w {
            candle_core::bail!("{}: GEMM output {:?}", self.name(), layout.shape());
        }
        let (oh, ow) = (2 * h, 2 * w);
        let mut out = vec![0f32; b * c * oh * ow];
        // One output row at a time: output row 2i + ky of channel c interleaves rows
        // (c, ky, 0) and (c, ky, 1) of the GEMM output at input row i.
        threads::for_chunks(&mut out, ow, |r, dst| {
            let (plane, oy) = (r / oh, r % oh);
            let (bi, ch) = (plane / c, plane % c);
            let (i, ky) = (oy / 2, oy % 2);
            let src = |kx: usize| {
                let row = (bi * rows + ch * 4 + ky * 2 + kx) * hw + i * w;
                &y[row..row + w]
            };
            let (left, right) = (src(0), src(1));
            let bias = self.bias[ch];
            for ((pair, &l), &r) in dst.chunks_exact_mut(2).zip(left).zip(right) {
                pair[0] = l + bias;
                pair[1] = r + bias;
            }
            self.act.apply_slice(dst);
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}

/// SAM's `LayerNorm2d` over NCHW, then an activation: per pixel, `u = mean(x)`,
/// `s = mean((x - u)^2)` over the channels, `(x - u) / sqrt(s + eps) * weight + bias`.
struct ChannelNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
    act: Activation,
}

/// Pixels per piece of the statistics passes.
const NORM_PIECE: usize = 1024;

/// Calls `f(pixel, offset, len)` for each run of `[start, start + n)` within one image of `hw`
/// pixels: `pixel` is the run's first pixel over the batch, `offset` its place in the piece.
fn image_runs(start: usize, n: usize, hw: usize, mut f: impl FnMut(usize, usize, usize)) {
    let mut p = start;
    while p < start + n {
        let end = ((p / hw + 1) * hw).min(start + n);
        f(p, p - start, end - p);
        p = end;
    }
}

impl CustomOp1 for ChannelNorm {
    fn name(&self) -> &'static str {
        "layer-norm-2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let (b, c, h, w) = layout.shape().dims4()?;
        let hw = h * w;
        let mut out = vec![0f32; x.len()];
        if x.is_empty() {
            return Ok((CpuStorage::F32(out), layout.shape().clone()));
        }
        // The channels of pixel p of image i: x[(i * c + ch) * hw + p % hw]. The statistics
        // are summed over the channel planes with the pixels as the vector dimension.
        let plane = |p: usize, ch: usize, len: usize| {
            let (i, q) = (p / hw, p % hw);
            &x[(i * c + ch) * hw + q..][..len]
        };
        let mut mean = vec![0f32; b * hw];
        threads::for_chunks(&mut mean, NORM_PIECE, |piece, dst| {
            image_runs(piece * NORM_PIECE, dst.len(), hw, |p, at, len| {
                let m = &mut dst[at..at + len];
                for ch in 0..c {
                    m.iter_mut()
                        .zip(plane(p, ch, len))
                        .for_each(|(m, v)| *m += v);
                }
                m.iter_mut().for_each(|m| *m /= c as f32);
            });
        });
        let mut inv = vec![0f32; b * hw];
        threads::for_chunks(&mut inv, NORM_PIECE, |piece, dst| {
            image_runs(piece * NORM_PIECE, dst.len(), hw, |p, at, len| {
                let s = &mut dst[at..at + len];
                let u = &mean[p..p + len];
                for ch in 0..c {
                    for ((s, u), v) in s.iter_mut().zip(u).zip(plane(p, ch, len)) {
                        *s += (v - u) * (v - u);
                    }
                }
                s.iter_mut()
                    .for_each(|s| *s = 1.0 / (*s / c as f32 + self.eps).sqrt());
            });
        });
        threads::for_chunks(&mut out, hw, |plane_index, dst| {
            let (i, ch) = (plane_index / c, plane_index % c);
            let src = &x[plane_index * hw..][..hw];
            let (u, s) = (&mean[i * hw..][..hw], &inv[i * hw..][..hw]);
            let (wc, bc) = (self.weight[ch], self.bias[ch]);
            for (((d, &v), &u), &s) in dst.iter_mut().zip(src).zip(u).zip(s) {
                *d = (v - u) * s * wc + bc;
            }
            self.act.apply_slice(dst);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}
