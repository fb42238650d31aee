//! Image files (PNG, JPEG) as the CLI and `Sam.embed(bytes)` take them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use websam::image::RgbImage;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = RgbImage::decode(data) {
        assert_eq!(img.data.len(), img.width * img.height * 3);
    }
});
