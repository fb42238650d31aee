//! `.pth` / `.pt` checkpoints (torch's zip: a pickle and raw storages): any bytes must give Ok or
//! an error, never a panic, an abort, a hang or an allocation the file cannot back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use websam::model::weights::Weights;

fuzz_target!(|data: &[u8]| {
    // Loading indexes the file; every tensor is then read as the model would.
    if let Ok(w) = Weights::from_pth_bytes(data) {
        for key in w.keys() {
            let shape = w.shape_of(key).unwrap_or_default();
            let _ = w.get(key, &shape);
        }
    }
});
