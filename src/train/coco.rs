//! Training data as COCO instance annotations (what the page's export and `websam everything`
//! write): the images' sizes and each object's mask, from RLE (pycocotools' compressed string or
//! its uncompressed run list) or polygons.

use std::collections::HashMap;

use image::{GrayImage, Luma};
use imageproc::drawing::draw_polygon_mut;
use imageproc::point::Point;
use serde::Deserialize;

use crate::amg::rle::Rle;
use crate::error::{Error, Result};

/// A COCO dataset: its images and their objects.
#[derive(Debug, Clone, Deserialize)]
pub struct Coco {
    pub images: Vec<CocoImage>,
    #[serde(default)]
    pub annotations: Vec<Annotation>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CocoImage {
    pub id: u64,
    pub file_name: String,
    pub height: usize,
    pub width: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Annotation {
    #[serde(default)]
    pub id: u64,
    pub image_id: u64,
    pub segmentation: Segmentation,
    /// Crowd regions (several objects in one mask) are not single objects to train on.
    #[serde(default)]
    pub iscrowd: u8,
}

/// An object's outline: polygons `[x0, y0, x1, y1, ...]` in pixels, or a run-length mask.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    Polygons(Vec<Vec<f64>>),
    Rle { size: [usize; 2], counts: Counts },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Counts {
    /// pycocotools' compressed string.
    Compressed(String),
    /// Run lengths, column-major, starting with zeros.
    Runs(Vec<u32>),
}

impl Coco {
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("a COCO annotation file: {e}")))
    }

    /// The images by id.
    pub fn image_index(&self) -> HashMap<u64, &CocoImage> {
        self.images.iter().map(|i| (i.id, i)).collect()
    }

    /// The objects to train on, in the file's order: every annotation that is not a crowd, with
    /// its image. An annotation of an unknown image is an error.
    pub fn objects(&self) -> Result<Vec<(&CocoImage, &Annotation)>> {
        let images = self.image_index();
        self.annotations
            .iter()
            .filter(|a| a.iscrowd == 0)
            .map(|a| {
                let image = images.get(&a.image_id).ok_or_else(|| {
                    Error::invalid(format!(
                        "annotation {} is of image {}, which the file does not list",
                        a.id, a.image_id
                    ))
                })?;
                Ok((*image, a))
            })
            .collect()
    }
}

impl Segmentation {
    /// The object's mask on a `height x width` image, row-major, 1 inside.
    pub fn to_mask(&self, height: usize, width: usize) -> Result<Vec<u8>> {
        match self {
            Segmentation::Rle { size, counts } => {
                if *size != [height, width] {
                    return Err(Error::invalid(format!(
                        "an RLE mask of size {size:?} on a {height}x{width} image"
                    )));
                }
                let rle = match counts {
                    Counts::Compressed(s) => Rle::from_coco_string(s, height, width)?,
                    Counts::Runs(r) => Rle {
                        height,
                        width,
                        counts: r.clone(),
                    },
                };
                rle.to_mask()
            }
            Segmentation::Polygons(polygons) => polygons_to_mask(polygons, height, width),
        }
    }
}

/// Fills polygons (`[x0, y0, x1, y1, ...]` in pixels) on a `height x width` mask.
pub fn polygons_to_mask(polygons: &[Vec<f64>], height: usize, width: usize) -> Result<Vec<u8>> {
    let (w, h) = (u32::try_from(width), u32::try_from(height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(Error::invalid(format!("an image of {height}x{width}")));
    };
    let mut canvas = GrayImage::new(w, h);
    for polygon in polygons {
        if polygon.len() % 2 != 0 || polygon.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "a polygon of {} numbers: give finite x, y pairs",
                polygon.len()
            )));
        }
        let mut points: Vec<Point<i32>> = polygon
            .chunks_exact(2)
            .map(|p| Point::new(p[0].round() as i32, p[1].round() as i32))
            .collect();
        points.dedup();
        // imageproc refuses a polygon that repeats its first point at the end.
        while points.len() > 1 && points.first() == points.last() {
            points.pop();
        }
        if points.len() < 3 {
            continue;
        }
        draw_polygon_mut(&mut canvas, &points, Luma([1]));
    }
    Ok(canvas.into_raw())
}
