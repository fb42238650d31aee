//! websam: Segment Anything (SAM, MobileSAM) in the browser, in Rust.
//!
//! The model is split the way clicks flow: [`model::sam::Sam::embed`] once per image,
//! [`model::sam::Sam::decode`] per prompt. Weights load from the official PyTorch
//! checkpoints or from safetensors ([`model::weights`]).

pub mod amg;
pub mod error;
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub mod gemm;
pub mod gpu;
pub mod image;
pub mod model;
pub mod predictor;
pub mod threads;
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
