//! Writes the deterministic ViT checkpoint of `tests/fixtures/vit/` (two blocks of ViT-B's
//! structure, hash-generated weights checked against the manifest's SHA-256) as safetensors,
//! for the tests that cannot generate it themselves (the browser's):
//! `cargo run --example vit_checkpoint -- target/fixtures/vit_b2.safetensors`.

#[path = "../tests/common/mod.rs"]
mod common;

fn main() {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: vit_checkpoint OUT.safetensors");
        std::process::exit(2);
    };
    let bytes = common::vit::checkpoint();
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).expect("output folder");
    }
    std::fs::write(&out, &bytes).unwrap_or_else(|e| panic!("{out}: {e}"));
    println!("wrote {out}: {} bytes", bytes.len());
}
