//! Masks as run lengths, the way segment-anything and pycocotools store them: the mask read in
//! column-major (Fortran) order, as alternating runs of zeros and ones starting with zeros (a
//! mask whose first pixel is set starts with a run of length 0). The compressed form is
//! pycocotools' string (`rleToString` / `rleFrString` in its `maskApi.c`).

use crate::error::{Error, Result};

/// A mask of `height x width` pixels as column-major run lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    pub height: usize,
    pub width: usize,
    pub counts: Vec<u32>,
}

impl Rle {
    /// Encodes a row-major mask (non-zero = inside).
    pub fn from_mask(mask: &[u8], height: usize, width: usize) -> Result<Self> {
        if mask.len() != height * width {
            return Err(Error::invalid(format!(
                "a {width}x{height} mask needs {} values, got {}",
                height * width,
                mask.len()
            )));
        }
        Self::from_crop(mask, [0, 0, width, height], height, width)
    }

    /// Encodes a row-major mask of the crop `[x0, y0, x1, y1]` placed in a `height x width`
    /// image, zero outside the crop (segment-anything's `uncrop_masks` then
    /// `mask_to_rle_pytorch`, without the padded mask).
    pub fn from_crop(
        mask: &[u8],
        [x0, y0, x1, y1]: [usize; 4],
        height: usize,
        width: usize,
    ) -> Result<Self> {
        if x0 > x1 || y0 > y1 || x1 > width || y1 > height || mask.len() != (x1 - x0) * (y1 - y0) {
            return Err(Error::invalid(format!(
                "crop [{x0}, {y0}, {x1}, {y1}] with {} values does not fit a {width}x{height} image",
                mask.len()
            )));
        }
        if u32::try_from(height * width).is_err() {
            return Err(Error::invalid(format!(
                "a {width}x{height} mask is too large for run lengths"
            )));
        }
        let cw = x1 - x0;
        let mut runs = Runs::default();
        // Columns left of the crop, then each crop column framed by the rows above and below.
        runs.push(0, x0 * height);
        for x in 0..cw {
            runs.push(0, y0);
            for y in 0..y1 - y0 {
                runs.push(u8::from(mask[y * cw + x] != 0), 1);
            }
            runs.push(0, height - y1);
        }
        runs.push(0, (width - x1) * height);
        let mut counts = runs.counts;
        counts.push(runs.run);
        Ok(Self {
            height,
            width,
            counts,
        })
    }

    /// The number of pixels inside (`area_from_rle`).
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as u64)
            .sum()
    }

    /// The row-major mask (1 inside, 0 outside).
    pub fn to_mask(&self) -> Result<Vec<u8>> {
        let n = self.height * self.width;
        let mut col_major = Vec::with_capacity(n);
        for (i, &c) in self.counts.iter().enumerate() {
            if col_major.len() + c as usize > n {
                break;
            }
            col_major.resize(col_major.len() + c as usize, (i % 2) as u8);
        }
        if col_major.len() != n || self.counts.iter().map(|&c| c as u64).sum::<u64>() != n as u64 {
            return Err(Error::invalid(format!(
                "run lengths cover {} pixels, a {}x{} mask has {n}",
                self.counts.iter().map(|&c| c as u64).sum::<u64>(),
                self.width,
                self.height
            )));
        }
        let (h, w) = (self.height, self.width);
        let mut mask = vec![0u8; n];
        for x in 0..w {
            for y in 0..h {
                mask[y * w + x] = col_major[x * h + y];
            }
        }
        Ok(mask)
    }

    /// pycocotools' compressed string (`rleToString`): each count, from the third on as the
    /// difference to the count two before, in 5-bit groups with a continuation bit, as ASCII
    /// 48..111.
    pub fn to_coco_string(&self) -> String {
        let mut s = String::with_capacity(self.counts.len() * 2);
        for (i, &c) in self.counts.iter().enumerate() {
            let mut x = c as i64;
            if i > 2 {
                x -= self.counts[i - 2] as i64;
            }
            loop {
                let mut ch = (x & 0x1f) as u8;
                x >>= 5;
                let more = if ch & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    ch |= 0x20;
                }
                s.push((ch + 48) as char);
                if !more {
                    break;
                }
            }
        }
        s
    }

    /// Reads pycocotools' compressed string (`rleFrString`) for a `height x width` mask,
    /// checking that the runs are valid and cover the mask exactly.
    pub fn from_coco_string(s: &str, height: usize, width: usize) -> Result<Self> {
        let bad = |why: &str| Error::invalid(format!("COCO RLE string: {why}"));
        let bytes = s.as_bytes();
        let mut counts: Vec<u32> = Vec::new();
        let mut p = 0;
        while p < bytes.len() {
            let mut x: i64 = 0;
            let mut k = 0;
            loop {
                let Some(&b) = bytes.get(p) else {
                    return Err(bad("it ends inside a count"));
                };
                if !(48..=111).contains(&b) {
                    return Err(bad(&format!("byte {b} at {p} is outside '0'..'o'")));
                }
                if k >= 12 {
                    return Err(bad("a count is too long"));
                }
                let c = (b - 48) as i64;
                x |= (c & 0x1f) << (5 * k);
                p += 1;
                k += 1;
                if c & 0x20 == 0 {
                    if c & 0x10 != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
            }
            if counts.len() > 2 {
                x += counts[counts.len() - 2] as i64;
            }
            let count = u32::try_from(x).map_err(|_| bad(&format!("run length {x}")))?;
            counts.push(count);
        }
        let total: u64 = counts.iter().map(|&c| c as u64).sum();
        if total != (height * width) as u64 {
            return Err(bad(&format!(
                "the runs cover {total} pixels, a {width}x{height} mask has {}",
                height * width
            )));
        }
        Ok(Self {
            height,
            width,
            counts,
        })
    }
}

/// Run lengths being written: the runs closed so far and the open one.
#[derive(Default)]
struct Runs {
    counts: Vec<u32>,
    value: u8,
    run: u32,
}

impl Runs {
    fn push(&mut self, value: u8, n: usize) {
        if n == 0 {
            return;
        }
        if value != self.value {
            self.counts.push(self.run);
            self.value = value;
            self.run = 0;
        }
        self.run += n as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_column_major_and_start_with_zeros() {
        // 2 rows x 3 columns; columns: [1,0], [1,1], [0,0]
        let mask = [1, 1, 0, 0, 1, 0];
        let rle = Rle::from_mask(&mask, 2, 3).unwrap();
        assert_eq!(rle.counts, vec![0, 1, 1, 2, 2]);
        assert_eq!(rle.area(), 3);
        assert_eq!(rle.to_mask().unwrap(), mask);
        assert_eq!(Rle::from_mask(&[0; 6], 2, 3).unwrap().counts, vec![6]);
        assert_eq!(Rle::from_mask(&[1; 6], 2, 3).unwrap().counts, vec![0, 6]);
    }

    #[test]
    fn a_crop_is_placed_in_its_image() {
        // A 2x2 crop of ones at x 1..3, y 1..3 in a 4x3 (h x w) image.
        let rle = Rle::from_crop(&[1, 1, 1, 1], [1, 1, 3, 3], 4, 3).unwrap();
        let mut full = vec![0u8; 12];
        for y in 1..3 {
            for x in 1..3 {
                full[y * 3 + x] = 1;
            }
        }
        assert_eq!(rle, Rle::from_mask(&full, 4, 3).unwrap());
        assert!(Rle::from_crop(&[1; 4], [2, 1, 4, 3], 4, 3).is_err());
    }

    #[test]
    fn coco_strings_round_trip() {
        let rle = Rle {
            height: 100,
            width: 90,
            counts: vec![0, 31, 2000, 1, 40, 6928],
        };
        let s = rle.to_coco_string();
        assert_eq!(Rle::from_coco_string(&s, 100, 90).unwrap(), rle);
        assert!(Rle::from_coco_string(&s, 100, 91).is_err());
        assert!(Rle::from_coco_string("\u{7f}", 1, 1).is_err());
        assert!(Rle::from_coco_string("0o", 1, 1).is_err());
    }
}
