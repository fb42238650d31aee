//! `.npy` arrays: the reader, and an image embedding read from them (`Sam.decode` from an
//! embedding saved by `websam embed` or the official demo's export).
#![no_main]

use libfuzzer_sys::fuzz_target;
use websam::image::ImageFrame;
use websam::model::sam::{read_npy_f32, ImageEmbedding};

fuzz_target!(|data: &[u8]| {
    if let Ok((shape, values)) = read_npy_f32(data) {
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        assert_eq!(
            n,
            Some(values.len()),
            "shape {shape:?} vs {} values",
            values.len()
        );
    }
    let frame = ImageFrame::new(480, 640).expect("a valid frame");
    let _ = ImageEmbedding::from_npy_bytes(data, frame);
});
