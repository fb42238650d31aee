//! `remove_small_regions` of segment-anything's `utils/amg.py`: holes or islands smaller than
//! an area removed from a mask, by 8-connected components (imageproc's labelling, where the
//! reference calls OpenCV's `connectedComponentsWithStats`).

use crate::image::label_components;

/// Which regions [`remove_small_regions`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regions {
    /// Regions outside the mask (holes, and the background if it is small) are filled.
    Holes,
    /// Regions of the mask are dropped; when every one is small, the largest is kept.
    Islands,
}

/// Removes the `mode` regions smaller than `area` from the row-major `mask` (`height x
/// width`, non-zero = inside), in place. Returns whether the mask changed.
pub fn remove_small_regions(
    mask: &mut [u8],
    height: usize,
    width: usize,
    area: f64,
    mode: Regions,
) -> bool {
    let holes = mode == Regions::Holes;
    if mask.len() != height * width {
        return false;
    }
    // The regions to label: the mask's pixels, or the pixels outside it.
    let working: Vec<bool> = mask.iter().map(|&m| (m != 0) ^ holes).collect();
    // Sizes of regions 1..=n (index 0: the unlabelled pixels).
    let (labels, sizes) = label_components(&working, height, width);
    let n = sizes.len() - 1;
    let small: Vec<bool> = sizes.iter().map(|&s| (s as f64) < area).collect();
    if !(1..=n).any(|l| small[l]) {
        return false;
    }
    // The labels that are set in the result.
    let mut fill = vec![false; n + 1];
    if holes {
        fill.copy_from_slice(&small);
        fill[0] = true;
    } else {
        for l in 1..=n {
            fill[l] = !small[l];
        }
        if !fill.iter().any(|&f| f) {
            // Every island is small: keep the largest (the first of equal ones, as argmax).
            let largest = (1..=n).fold(1, |best, l| if sizes[l] > sizes[best] { l } else { best });
            fill[largest] = true;
        }
    }
    for (m, &l) in mask.iter_mut().zip(&labels) {
        *m = u8::from(fill[l as usize]);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&str]) -> (Vec<u8>, usize, usize) {
        let h = rows.len();
        let w = rows[0].len();
        let data = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| u8::from(b == b'#')))
            .collect();
        (data, h, w)
    }

    #[test]
    fn holes_are_filled_and_islands_dropped() {
        let (mut m, h, w) = grid(&["#####.", "#.####", "######", ".....#"]);
        assert!(remove_small_regions(&mut m, h, w, 2.0, Regions::Holes));
        // The one-pixel hole is filled; the background regions of 1 pixel (top right) too.
        assert_eq!(m, grid(&["######", "######", "######", ".....#"]).0);
        let (mut m, h, w) = grid(&["##....", "##....", ".....#"]);
        assert!(remove_small_regions(&mut m, h, w, 2.0, Regions::Islands));
        assert_eq!(m, grid(&["##....", "##....", "......"]).0);
        // 8-connected: a diagonal touch joins two pixels into one region of 2.
        let (mut m, h, w) = grid(&["#...", ".#..", "...."]);
        assert!(!remove_small_regions(&mut m, h, w, 2.0, Regions::Islands));
    }

    #[test]
    fn all_small_islands_keep_the_largest() {
        let (mut m, h, w) = grid(&["#..##", ".....", "#...."]);
        assert!(remove_small_regions(&mut m, h, w, 10.0, Regions::Islands));
        assert_eq!(m, grid(&["...##", ".....", "....."]).0);
    }
}
