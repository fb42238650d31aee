//! safetensors containers: any bytes must give Ok or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use websam::model::weights::Weights;

fuzz_target!(|data: &[u8]| {
    // Loading indexes the file; every tensor is then read as the model would.
    if let Ok(w) = Weights::from_safetensors_bytes(data) {
        for key in w.keys() {
            let shape = w.shape_of(key).unwrap_or_default();
            let _ = w.get(key, &shape);
        }
    }
    // What the CLI and the JS API call: the format sniffed from the first bytes.
    let _ = Weights::from_bytes(data);
});
