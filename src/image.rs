//! Pre- and post-processing, exactly as the reference predictor does it.
//!
//! Preprocessing follows `SamPredictor.set_image`: `ResizeLongestSide.apply_image` (torchvision's
//! resize of a PIL image, i.e. PIL's bilinear filter, which antialiases when shrinking), then
//! `Sam.preprocess` (normalize, zero-pad bottom/right to 1024). Coordinates are transformed as
//! `ResizeLongestSide.apply_coords` does. Postprocessing follows `Sam.postprocess_masks`.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::config::{
    IMAGE_SIZE, LOW_RES_SIDE, MASK_THRESHOLD, PIXEL_MEAN, PIXEL_STD, STABILITY_SCORE_OFFSET,
};

/// The largest image websam takes, in pixels (16384 x 16384): a limit on what one file or one
/// call can make websam allocate, far above what SAM looks at (1024 on the long side).
pub const MAX_IMAGE_PIXELS: usize = 1 << 28;

/// Errors unless a `width x height` image is within [`MAX_IMAGE_PIXELS`] (and not empty).
fn check_size(width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::invalid(format!(
            "image is {width}x{height}; both sides must be at least 1 pixel"
        )));
    }
    match width.checked_mul(height) {
        Some(n) if n <= MAX_IMAGE_PIXELS => Ok(()),
        _ => Err(Error::Image(format!(
            "image is {width}x{height}: more than websam's limit of {MAX_IMAGE_PIXELS} pixels \
             (16384 x 16384); scale it down first"
        ))),
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps RGB bytes, checking their length.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        check_size(width, height)?;
        if data.len() != width * height * 3 {
            return Err(Error::invalid(format!(
                "RGB image {width}x{height} needs {} bytes, got {}",
                width * height * 3,
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Drops the alpha channel of RGBA bytes (as canvases and `ImageData` hold them).
    pub fn from_rgba(width: usize, height: usize, rgba: &[u8]) -> Result<Self> {
        check_size(width, height)?;
        if rgba.len() != width * height * 4 {
            return Err(Error::invalid(format!(
                "RGBA image {width}x{height} needs {} bytes, got {}",
                width * height * 4,
                rgba.len()
            )));
        }
        let data = rgba
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        Self::new(width, height, data)
    }

    /// Decodes a PNG or JPEG file held in memory.
    /// The size is read from the header and checked ([`MAX_IMAGE_PIXELS`]) before any pixel
    /// is decoded, so a small file that claims a huge image allocates nothing.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let err = |e: image::ImageError| Error::Image(e.to_string());
        let reader = || {
            image::ImageReader::new(std::io::Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| Error::Image(e.to_string()))
        };
        let (w, h) = reader()?.into_dimensions().map_err(err)?;
        check_size(w as usize, h as usize)?;
        let mut limits = image::Limits::default();
        // The decoded image, its RGB copy and the decoder's own buffers.
        limits.max_alloc = Some(MAX_IMAGE_PIXELS as u64 * 4);
        let mut decoder = reader()?;
        decoder.limits(limits);
        let img = decoder.decode().map_err(err)?;
        let rgb = img.to_rgb8();
        let (w, h) = rgb.dimensions();
        Self::new(w as usize, h as usize, rgb.into_raw())
    }

    /// The pixels of `[x0, y0, x1, y1]` (exclusive ends), as `image[y0:y1, x0:x1]`.
    pub fn crop(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> Result<Self> {
        if x0 >= x1 || y0 >= y1 || x1 > self.width || y1 > self.height {
            return Err(Error::invalid(format!(
                "crop [{x0}, {y0}, {x1}, {y1}] is empty or outside the {}x{} image",
                self.width, self.height
            )));
        }
        let data = (y0..y1)
            .flat_map(|y| &self.data[(y * self.width + x0) * 3..(y * self.width + x1) * 3])
            .copied()
            .collect();
        Self::new(x1 - x0, y1 - y0, data)
    }

    /// Reads and decodes an image file.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::decode(&bytes).map_err(|e| e.context(path.display()))
    }
}

/// `ResizeLongestSide.get_preprocess_shape`: the (height, width) after scaling the longest side
/// to `long_side`, rounded as the reference does (`int(x + 0.5)` in float64).
pub fn preprocess_shape(height: usize, width: usize, long_side: usize) -> (usize, usize) {
    let scale = long_side as f64 / height.max(width) as f64;
    let new_h = (height as f64 * scale + 0.5) as usize;
    let new_w = (width as f64 * scale + 0.5) as usize;
    (new_h, new_w)
}

/// How an image is fitted into the encoder's 1024x1024 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// SAM: the longest side scaled to 1024, the aspect kept, padded at the bottom and right
    /// (`ResizeLongestSide`).
    LongestSide,
    /// SAM 2: resized to 1024x1024 whatever its aspect (`SAM2Transforms`).
    Stretch,
}

/// The size of an image and the size it has inside the encoder's 1024 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFrame {
    /// Original (height, width).
    pub original: (usize, usize),
    /// (height, width) inside the 1024 frame: after resizing the longest side to 1024, before
    /// padding; (1024, 1024) when stretched.
    pub input: (usize, usize),
    pub fit: Fit,
}

impl ImageFrame {
    /// The frame of an image of the given original size.
    /// Masks are made at the original size, so it is held to [`MAX_IMAGE_PIXELS`] too.
    pub fn new(height: usize, width: usize) -> Result<Self> {
        check_size(width, height)?;
        let input = preprocess_shape(height, width, IMAGE_SIZE);
        if input.0 == 0 || input.1 == 0 {
            return Err(Error::invalid(format!(
                "image size {height}x{width} is too elongated: its short side rounds to 0 pixels at 1024"
            )));
        }
        Ok(Self {
            original: (height, width),
            input,
            fit: Fit::LongestSide,
        })
    }

    /// The frame of an image SAM 2 stretches to 1024x1024.
    pub fn stretched(height: usize, width: usize) -> Result<Self> {
        check_size(width, height)?;
        Ok(Self {
            original: (height, width),
            input: (IMAGE_SIZE, IMAGE_SIZE),
            fit: Fit::Stretch,
        })
    }

    /// A point from the original frame to the 1024 frame: `ResizeLongestSide.apply_coords`
    /// (float64 arithmetic, as numpy does it, then f32 as the predictor's tensor), or SAM 2's
    /// `transform_coords` (`x / width * 1024` on the f32 tensor).
    pub fn apply_coords(&self, x: f64, y: f64) -> (f32, f32) {
        let (old_h, old_w) = self.original;
        if self.fit == Fit::Stretch {
            let side = IMAGE_SIZE as f32;
            return (
                x as f32 / old_w as f32 * side,
                y as f32 / old_h as f32 * side,
            );
        }
        let (new_h, new_w) = self.input;
        let x = x * (new_w as f64 / old_w as f64);
        let y = y * (new_h as f64 / old_h as f64);
        (x as f32, y as f32)
    }
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS` in `Resample.c`).
const PIL_PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel source window and fixed-point weights of PIL's bilinear filter, as
/// `precompute_coeffs` + `normalize_coeffs_8bpc` compute them.
struct PilCoeffs {
    /// (first source index, number of taps) per output index.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output index.
    weights: Vec<i32>,
    ksize: usize,
}

fn pil_bilinear_coeffs(in_size: usize, out_size: usize) -> PilCoeffs {
    // The triangle filter of support 1, widened by the scale when shrinking (antialiasing).
    let filter = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    };
    let support_base = 1.0;
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support_base * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero; the values are clamped right after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let scaled = w * (1u32 << PIL_PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    PilCoeffs {
        bounds,
        weights,
        ksize,
    }
}

/// Pillow's `clip8`: fixed-point sum back to a byte.
fn pil_clip8(v: i32) -> u8 {
    if v >= (1 << PIL_PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PIL_PRECISION_BITS) as u8
    }
}

/// Pillow's horizontal pass: `rows` rows of `img` from `row_first` on, each resampled to `out_w`.
fn pil_pass_horizontal(img: &RgbImage, out_w: usize, row_first: usize, rows: usize) -> RgbImage {
    let half = 1i32 << (PIL_PRECISION_BITS - 1);
    let coeffs = pil_bilinear_coeffs(img.width, out_w);
    let mut data = vec![0u8; out_w * rows * 3];
    for (y, dst_row) in data.chunks_exact_mut(out_w * 3).enumerate() {
        let src_row = &img.data[(y + row_first) * img.width * 3..][..img.width * 3];
        for (xx, &(xmin, n)) in coeffs.bounds.iter().enumerate() {
            let k = &coeffs.weights[xx * coeffs.ksize..][..n];
            let mut ss = [half; 3];
            for (x, &w) in k.iter().enumerate() {
                let p = &src_row[(xmin + x) * 3..][..3];
                for c in 0..3 {
                    ss[c] += p[c] as i32 * w;
                }
            }
            for c in 0..3 {
                dst_row[xx * 3 + c] = pil_clip8(ss[c]);
            }
        }
    }
    RgbImage {
        width: out_w,
        height: rows,
        data,
    }
}

/// Pillow's vertical pass: `img` resampled to `out_h` rows, with source row indices
/// (`coeffs.bounds`) shifted down by `row_shift` (the rows a previous pass skipped).
fn pil_pass_vertical(img: &RgbImage, coeffs: &PilCoeffs, row_shift: usize) -> RgbImage {
    let half = 1i32 << (PIL_PRECISION_BITS - 1);
    let stride = img.width * 3;
    let out_h = coeffs.bounds.len();
    let mut data = vec![0u8; stride * out_h];
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, n)) in coeffs.bounds.iter().enumerate() {
        let k = &coeffs.weights[yy * coeffs.ksize..][..n];
        acc.fill(half);
        for (y, &w) in k.iter().enumerate() {
            let src = &img.data[(ymin - row_shift + y) * stride..][..stride];
            for (a, &p) in acc.iter_mut().zip(src) {
                *a += p as i32 * w;
            }
        }
        for (o, &a) in data[yy * stride..][..stride].iter_mut().zip(&acc) {
            *o = pil_clip8(a);
        }
    }
    RgbImage {
        width: img.width,
        height: out_h,
        data,
    }
}

/// Resizes like `PIL.Image.resize(size, Image.BILINEAR)` (Pillow 13) on an RGB image, bit for
/// bit. This is what torchvision's resize does to a PIL image, and so what the reference
/// predictor feeds the encoder; image crates' resizers round differently, so we follow
/// Pillow's `ImagingResampleInner`: two separable passes with 22-bit fixed-point weights and
/// a byte between the passes. The order of the passes changes the bytes: Pillow runs the
/// vertical pass first when the height shrinks by more than twice as many pixels as the
/// width does, else the horizontal pass first over only the rows the vertical pass reads.
pub fn resize_bilinear_pil(img: &RgbImage, out_w: usize, out_h: usize) -> Result<RgbImage> {
    if out_w == 0 || out_h == 0 {
        return Err(Error::invalid(format!(
            "resize target {out_w}x{out_h}: both sides must be at least 1 pixel"
        )));
    }
    let need_horizontal = out_w != img.width;
    let need_vertical = out_h != img.height;
    let shrink_h = img.height as i64 - out_h as i64;
    let shrink_w = img.width as i64 - out_w as i64;
    let horizontal_first = !(shrink_h > 0 && shrink_h > shrink_w * 2);
    let vert = pil_bilinear_coeffs(img.height, out_h);

    let out = if horizontal_first {
        let (row_first, row_shift, rows) = if need_vertical {
            let first = vert.bounds[0].0;
            let (last_min, last_n) = vert.bounds[out_h - 1];
            (first, first, last_min + last_n - first)
        } else {
            (0, 0, img.height)
        };
        let temp = if need_horizontal {
            pil_pass_horizontal(img, out_w, row_first, rows)
        } else {
            img.clone()
        };
        // Without a horizontal pass the vertical one reads the original rows.
        let shift = if need_horizontal { row_shift } else { 0 };
        if need_vertical {
            pil_pass_vertical(&temp, &vert, shift)
        } else {
            temp
        }
    } else {
        let temp = pil_pass_vertical(img, &vert, 0);
        if need_horizontal {
            pil_pass_horizontal(&temp, out_w, 0, out_h)
        } else {
            temp
        }
    };
    Ok(out)
}

/// `SamPredictor.set_image` + `Sam.preprocess`: resize the longest side to 1024 (PIL bilinear),
/// normalize with the pixel mean and std, zero-pad bottom/right. Returns `[1, 3, 1024, 1024]`
/// and the frame of the image.
pub fn preprocess(img: &RgbImage) -> Result<(Tensor, ImageFrame)> {
    let frame = ImageFrame::new(img.height, img.width)?;
    let (h, w) = frame.input;
    let resized = resize_bilinear_pil(img, w, h)?;
    let mut data = vec![0f32; 3 * IMAGE_SIZE * IMAGE_SIZE];
    for (c, (mean, std)) in PIXEL_MEAN.iter().zip(PIXEL_STD).enumerate() {
        let plane = &mut data[c * IMAGE_SIZE * IMAGE_SIZE..][..IMAGE_SIZE * IMAGE_SIZE];
        for y in 0..h {
            for x in 0..w {
                let v = resized.data[(y * w + x) * 3 + c] as f32;
                // Same f32 operations as `(x - pixel_mean) / pixel_std` in the reference.
                plane[y * IMAGE_SIZE + x] = (v - mean) / std;
            }
        }
    }
    let t = Tensor::from_vec(data, (1, 3, IMAGE_SIZE, IMAGE_SIZE), &Device::Cpu)?;
    Ok((t, frame))
}

/// ImageNet's mean and std on the 0..1 scale (`SAM2Transforms`).
const SAM2_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const SAM2_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `SAM2Transforms` on an image: `ToTensor` (bytes / 255), `Resize((1024, 1024))` on the
/// float planes (bilinear with antialiasing: [`resize_plane_aa`]), `Normalize` with ImageNet's
/// mean and std. Returns `[1, 3, 1024, 1024]` and the (stretched) frame.
pub fn preprocess_sam2(img: &RgbImage) -> Result<(Tensor, ImageFrame)> {
    let frame = ImageFrame::stretched(img.height, img.width)?;
    let (h, w) = (img.height, img.width);
    let side = IMAGE_SIZE;
    let mut data = Vec::with_capacity(3 * side * side);
    let taps_w = aa_taps(w, side);
    let taps_h = aa_taps(h, side);
    let mut plane = vec![0f32; h * w];
    for (c, (mean, std)) in SAM2_MEAN.iter().zip(SAM2_STD).enumerate() {
        for (p, px) in plane.iter_mut().zip(img.data.chunks_exact(3)) {
            *p = px[c] as f32 / 255.0;
        }
        let resized = resize_plane_aa(&plane, (h, w), (side, side), &taps_h, &taps_w);
        data.extend(resized.into_iter().map(|v| (v - mean) / std));
    }
    let t = Tensor::from_vec(data, (1, 3, side, side), &Device::Cpu)?;
    Ok((t, frame))
}

/// One output index of an antialiased resize: the first source index and the weights.
struct AaTap {
    first: usize,
    weights: Vec<f32>,
}

/// PyTorch's `_compute_weights_aa` for the bilinear (triangle) filter, `align_corners=False`,
/// in its arithmetic: f32 scale, centre, support and weights; f64 where the C++ mixes in a
/// double (`i + 0.5`, the filter's argument, the window's bounds).
fn aa_taps(in_size: usize, out_size: usize) -> Vec<AaTap> {
    let scale = in_size as f32 / out_size as f32;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 {
        (1.0 / scale as f64) as f32
    } else {
        1.0
    };
    let max_size = support.ceil() as i64 * 2 + 1;
    (0..out_size)
        .map(|i| {
            let center = (scale as f64 * (i as f64 + 0.5)) as f32;
            let xmin = ((center as f64 - support as f64 + 0.5) as i64).max(0);
            let xsize = ((center as f64 + support as f64 + 0.5) as i64).min(in_size as i64) - xmin;
            let xsize = xsize.clamp(0, max_size);
            let mut weights: Vec<f32> = (0..xsize)
                .map(|j| {
                    let x = (((j + xmin) as f64 - center as f64 + 0.5) * invscale as f64) as f32;
                    let x = x.abs();
                    if x < 1.0 {
                        1.0 - x
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f32 = weights.iter().fold(0.0, |a, &w| a + w);
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            AaTap {
                first: xmin as usize,
                weights,
            }
        })
        .collect()
}

/// `F.interpolate(mode="bilinear", antialias=True, align_corners=False)` of one plane, as
/// PyTorch's separable CPU kernel: the rows first (skipped when the width is kept), then the
/// columns, each output `t0 * w0 + t1 * w1 + ...` in f32.
fn resize_plane_aa(
    src: &[f32],
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    taps_h: &[AaTap],
    taps_w: &[AaTap],
) -> Vec<f32> {
    let sum = |tap: &AaTap, at: &dyn Fn(usize) -> f32| -> f32 {
        let mut acc = at(tap.first) * tap.weights[0];
        for (j, w) in tap.weights.iter().enumerate().skip(1) {
            acc += at(tap.first + j) * w;
        }
        acc
    };
    let rows: Vec<f32> = if in_w == out_w {
        src.to_vec()
    } else {
        let mut out = Vec::with_capacity(in_h * out_w);
        for row in src.chunks_exact(in_w) {
            out.extend(taps_w.iter().map(|t| sum(t, &|x| row[x])));
        }
        out
    };
    if in_h == out_h {
        return rows;
    }
    let mut out = vec![0f32; out_h * out_w];
    for (y, t) in taps_h.iter().enumerate() {
        for x in 0..out_w {
            out[y * out_w + x] = sum(t, &|r| rows[r * out_w + x]);
        }
    }
    out
}

/// Source index and weight pairs of PyTorch's bilinear interpolation with
/// `align_corners=False` (`area_pixel_compute_source_index`, f32 arithmetic).
fn linear_taps(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|i| {
            let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(in_size - 1);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Bilinear resize of one `[in_h, in_w]` plane to `[out_h, out_w]` as
/// `F.interpolate(mode="bilinear", align_corners=False)`, but only producing the top-left
/// `keep_h x keep_w` block of the output (the crop that follows in `postprocess_masks`).
fn interpolate_plane(
    src: &[f32],
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    keep_h: usize,
    keep_w: usize,
) -> Vec<f32> {
    let ty = linear_taps(in_h, out_h);
    let tx = linear_taps(in_w, out_w);
    let mut out = vec![0f32; keep_h * keep_w];
    for (y, &(y0, y1, ly0, ly1)) in ty.iter().take(keep_h).enumerate() {
        let r0 = &src[y0 * in_w..][..in_w];
        let r1 = &src[y1 * in_w..][..in_w];
        let row = &mut out[y * keep_w..][..keep_w];
        for (o, &(x0, x1, lx0, lx1)) in row.iter_mut().zip(tx.iter()) {
            *o = ly0 * (lx0 * r0[x0] + lx1 * r0[x1]) + ly1 * (lx0 * r1[x0] + lx1 * r1[x1]);
        }
    }
    out
}

/// `Sam.postprocess_masks` for one low-res logit plane (`256 x 256`): upsample to 1024, crop to
/// the resized image, resize to the original size. Returns `height * width` logits.
pub fn postprocess_logits(low_res: &[f32], frame: &ImageFrame) -> Result<Vec<f32>> {
    if low_res.len() != LOW_RES_SIDE * LOW_RES_SIDE {
        return Err(Error::invalid(format!(
            "low-res logits must hold {}x{} values, got {}",
            LOW_RES_SIDE,
            LOW_RES_SIDE,
            low_res.len()
        )));
    }
    let (in_h, in_w) = frame.input;
    let (orig_h, orig_w) = frame.original;
    if frame.fit == Fit::Stretch {
        // SAM 2's `postprocess_masks`: straight from 256x256 to the original size.
        return Ok(interpolate_plane(
            low_res,
            LOW_RES_SIDE,
            LOW_RES_SIDE,
            orig_h,
            orig_w,
            orig_h,
            orig_w,
        ));
    }
    let up = interpolate_plane(
        low_res,
        LOW_RES_SIDE,
        LOW_RES_SIDE,
        IMAGE_SIZE,
        IMAGE_SIZE,
        in_h,
        in_w,
    );
    if (orig_h, orig_w) == (in_h, in_w) {
        return Ok(up);
    }
    Ok(interpolate_plane(
        &up, in_h, in_w, orig_h, orig_w, orig_h, orig_w,
    ))
}

/// The 8-connected components of the set pixels of a row-major `height x width` mask
/// (imageproc's labelling): each pixel's label (0: not set; components 1..=n) and each label's
/// area (`areas[0]` counts the unset pixels).
pub fn label_components(set: &[bool], height: usize, width: usize) -> (Vec<u32>, Vec<u64>) {
    use imageproc::region_labelling::{connected_components, Connectivity};
    let working: Vec<u8> = set.iter().map(|&s| u8::from(s)).collect();
    let Some(working) = image::GrayImage::from_raw(width as u32, height as u32, working) else {
        return (vec![0; set.len()], vec![set.len() as u64]);
    };
    let labels = connected_components(&working, Connectivity::Eight, image::Luma([0u8]));
    let labels: Vec<u32> = labels.into_raw();
    let n = labels.iter().copied().max().unwrap_or(0) as usize;
    let mut areas = vec![0u64; n + 1];
    for &l in &labels {
        areas[l as usize] += 1;
    }
    (labels, areas)
}

/// `SAM2ImagePredictor`'s post-processing of a mask's low-res logits before they are upsampled
/// to the image's size (its `max_hole_area`, `max_sprinkle_area`; off at 0): the 8-connected
/// regions at or below the threshold (holes) of at most `max_hole_area` low-res pixels become
/// `+10`, then the regions above it (sprinkles, as they were before the holes were filled) of
/// at most `max_sprinkle_area` become `-10`. It changes the masks and their stability, not the
/// low-res logits a prediction returns.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MaskCleanup {
    pub max_hole_area: f64,
    pub max_sprinkle_area: f64,
}

impl MaskCleanup {
    /// Checks that both areas are finite and not negative.
    pub fn new(max_hole_area: f64, max_sprinkle_area: f64) -> Result<Self> {
        for (name, v) in [
            ("maxHoleArea", max_hole_area),
            ("maxSprinkleArea", max_sprinkle_area),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(format!(
                    "{name} must be a number of low-res pixels, 0 or more (0: off), not {v}"
                )));
            }
        }
        Ok(Self {
            max_hole_area,
            max_sprinkle_area,
        })
    }

    /// Whether it changes nothing (both areas 0).
    pub fn is_off(&self) -> bool {
        self.max_hole_area <= 0.0 && self.max_sprinkle_area <= 0.0
    }

    /// The low-res plane (`256 x 256`) cleaned.
    pub fn apply(&self, low_res: &[f32]) -> Vec<f32> {
        let mut out = low_res.to_vec();
        let side = LOW_RES_SIDE;
        let mut set = |inside: fn(f32) -> bool, most: f64, value: f32| {
            if most <= 0.0 {
                return;
            }
            let region: Vec<bool> = low_res.iter().map(|&v| inside(v)).collect();
            let (labels, areas) = label_components(&region, side, side);
            for (o, &l) in out.iter_mut().zip(&labels) {
                if l > 0 && areas[l as usize] as f64 <= most {
                    *o = value;
                }
            }
        };
        set(
            |v| v <= MASK_THRESHOLD,
            self.max_hole_area,
            MASK_THRESHOLD + 10.0,
        );
        set(
            |v| v > MASK_THRESHOLD,
            self.max_sprinkle_area,
            MASK_THRESHOLD - 10.0,
        );
        out
    }
}

/// Binary mask (0/1) of logits above the mask threshold.
pub fn threshold(logits: &[f32]) -> Vec<u8> {
    logits
        .iter()
        .map(|&v| u8::from(v > MASK_THRESHOLD))
        .collect()
}

/// `calculate_stability_score` with offset 1: the IoU between the masks thresholded at `t + 1`
/// and `t - 1`. An empty union gives 0.
pub fn stability_score(logits: &[f32]) -> f32 {
    let s = stability_score_at(logits, STABILITY_SCORE_OFFSET as f64);
    if s.is_nan() {
        0.0
    } else {
        s
    }
}

/// `calculate_stability_score` with any offset: the IoU of the masks thresholded at
/// `t + offset` and `t - offset` (f32 thresholds and ratio, as the reference's tensors); NaN
/// when both are empty, as the reference's 0 / 0.
pub fn stability_score_at(logits: &[f32], offset: f64) -> f32 {
    let hi = (MASK_THRESHOLD as f64 + offset) as f32;
    let lo = (MASK_THRESHOLD as f64 - offset) as f32;
    let (mut inter, mut union) = (0u32, 0u32);
    for &v in logits {
        inter += u32::from(v > hi);
        union += u32::from(v > lo);
    }
    inter as f32 / union as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_cleanup_fills_small_holes_and_drops_small_sprinkles() {
        let side = LOW_RES_SIDE;
        // A square mask with a 2x2 hole, a 3-pixel sprinkle far from it, and a 9x9 hole.
        let mut plane = vec![-5.0f32; side * side];
        let mut set = |y0: usize, y1: usize, x0: usize, x1: usize, v: f32| {
            for y in y0..y1 {
                for x in x0..x1 {
                    plane[y * side + x] = v;
                }
            }
        };
        set(50, 150, 50, 150, 5.0);
        set(60, 62, 60, 62, -5.0);
        set(100, 109, 100, 109, -5.0);
        set(200, 201, 200, 203, 5.0);
        let off = MaskCleanup::default();
        assert!(off.is_off());
        let c = MaskCleanup::new(4.0, 3.0).unwrap();
        let out = c.apply(&plane);
        let at = |y: usize, x: usize| out[y * side + x];
        assert_eq!(
            at(60, 61),
            MASK_THRESHOLD + 10.0,
            "the 4-pixel hole is filled"
        );
        assert_eq!(at(104, 104), -5.0, "the 81-pixel hole stays");
        assert_eq!(
            at(200, 201),
            MASK_THRESHOLD - 10.0,
            "the 3-pixel sprinkle goes"
        );
        assert_eq!(at(70, 70), 5.0);
        assert_eq!(at(0, 0), -5.0, "the background is one large region");
        assert!(MaskCleanup::new(-1.0, 0.0).is_err());
        assert!(MaskCleanup::new(0.0, f64::NAN).is_err());
    }

    #[test]
    fn preprocess_shape_matches_reference_rounding() {
        assert_eq!(preprocess_shape(480, 640, 1024), (768, 1024));
        assert_eq!(preprocess_shape(333, 517, 1024), (660, 1024));
        assert_eq!(preprocess_shape(1024, 1024, 1024), (1024, 1024));
        assert_eq!(preprocess_shape(1, 3000, 1024), (0, 1024));
    }

    #[test]
    fn interpolate_identity_when_sizes_match() {
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(interpolate_plane(&src, 3, 4, 3, 4, 3, 4), src);
    }

    #[test]
    fn interpolate_upsample_2x_matches_torch() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), (4, 4),
        // mode="bilinear", align_corners=False)[0, 0, 0] == [0.0, 0.25, 0.75, 1.0]
        let src = [0.0, 1.0, 2.0, 3.0];
        let out = interpolate_plane(&src, 2, 2, 4, 4, 4, 4);
        assert_eq!(&out[..4], &[0.0, 0.25, 0.75, 1.0]);
        assert_eq!(&out[12..], &[2.0, 2.25, 2.75, 3.0]);
    }

    #[test]
    fn stability_score_counts_bands() {
        let logits = [2.0, 0.5, -0.5, -2.0];
        // > 1: one pixel; > -1: three pixels.
        assert!((stability_score(&logits) - 1.0 / 3.0).abs() < 1e-7);
        assert_eq!(stability_score(&[-5.0; 4]), 0.0);
    }

    #[test]
    fn rgba_drops_alpha_and_checks_length() {
        let img = RgbImage::from_rgba(2, 1, &[1, 2, 3, 255, 4, 5, 6, 0]).unwrap();
        assert_eq!(img.data, vec![1, 2, 3, 4, 5, 6]);
        assert!(RgbImage::from_rgba(2, 2, &[0; 8]).is_err());
    }
}
