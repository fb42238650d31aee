//! Writes a deterministic checkpoint of the fixtures as safetensors, for the tests that cannot
//! generate it themselves (the browser's), its weights generated from the manifest and checked
//! against its SHA-256:
//! - `vit`: `tests/fixtures/vit/` (two blocks of ViT-B's structure);
//! - `sam2`: `tests/fixtures/sam2/` (SAM 2.1-T's Hiera cut to stages [1, 2, 3, 2] at half its
//!   widths), its trunk named in the file's metadata.
//!
//! `cargo run --example fixture_checkpoint -- vit target/fixtures/vit_b2.safetensors`

#[path = "../tests/common/mod.rs"]
mod common;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bytes = match args.first().map(String::as_str) {
        Some("vit") => common::vit::checkpoint(),
        Some("sam2") => common::sam2::checkpoint_naming_its_trunk(&common::sam2::fixture_hiera()),
        _ => {
            eprintln!("usage: fixture_checkpoint vit|sam2 OUT.safetensors");
            std::process::exit(2);
        }
    };
    let Some(out) = args.get(1) else {
        eprintln!("usage: fixture_checkpoint vit|sam2 OUT.safetensors");
        std::process::exit(2);
    };
    if let Some(dir) = std::path::Path::new(out).parent() {
        std::fs::create_dir_all(dir).expect("output folder");
    }
    // Written beside it and renamed into place: test files that run at once may each write it,
    // and none reads a half-written file.
    let part = format!("{out}.{}.part", std::process::id());
    std::fs::write(&part, &bytes).unwrap_or_else(|e| panic!("{part}: {e}"));
    std::fs::rename(&part, out).unwrap_or_else(|e| panic!("{out}: {e}"));
    println!("wrote {out}: {} bytes", bytes.len());
}
