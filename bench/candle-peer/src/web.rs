//! The wasm face of the peer, shaped like candle's `candle-wasm-examples/segment-anything`
//! `Model` (weights as safetensors bytes, an image, prompts in, a thresholded mask out), but
//! with what the benchmark measures on every system: RGBA pixels in, any prompt (points, box,
//! multimask), the best mask at the image size.

use wasm_bindgen::prelude::*;

use crate::{Peer, Prompt};

fn js(e: candle_core::Error) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen]
pub struct CandleSam {
    peer: Peer,
}

#[wasm_bindgen]
impl CandleSam {
    /// From f32 safetensors bytes (bench/candle_weights.py makes them from the fixture).
    #[wasm_bindgen(constructor)]
    pub fn new(weights: Vec<u8>) -> Result<CandleSam, JsError> {
        Ok(Self {
            peer: Peer::new(weights).map_err(js)?,
        })
    }

    /// Encodes an image from RGBA pixels (`getImageData`), `width` x `height`.
    #[wasm_bindgen(js_name = setImage)]
    pub fn set_image(&mut self, rgba: Vec<u8>, width: u32, height: u32) -> Result<(), JsError> {
        self.peer.set_image_rgba(rgba, width, height).map_err(js)
    }

    /// `points`: x, y, label triples in image pixels; `bbox`: x0, y0, x1, y1 or empty. Returns
    /// the best mask (by predicted IoU) at the image size, 0/1 per pixel.
    pub fn decode(
        &self,
        points: &[f32],
        bbox: &[f32],
        multimask: bool,
    ) -> Result<Vec<u8>, JsError> {
        if !points.len().is_multiple_of(3) || !(bbox.is_empty() || bbox.len() == 4) {
            return Err(JsError::new(
                "points: x, y, label triples; bbox: 4 numbers or none",
            ));
        }
        let prompt = Prompt {
            points: points.chunks_exact(3).map(|p| (p[0], p[1], p[2])).collect(),
            bbox: (bbox.len() == 4).then(|| [bbox[0], bbox[1], bbox[2], bbox[3]]),
            mask_input: None,
            multimask,
        };
        Ok(self.peer.decode(&prompt).map_err(js)?.mask)
    }
}
