//! safetensors containers: any bytes must give Ok or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use websam::model::weights::Weights;

fuzz_target!(|data: &[u8]| {
    let _ = Weights::from_safetensors_bytes(data);
    // What the CLI and the JS API call: the format sniffed from the first bytes.
    let _ = Weights::from_bytes(data);
});
