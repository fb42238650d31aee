//! SAM itself: one file per reference module, written on candle for the CPU.

pub mod config;
pub mod conv;
pub mod mask_decoder;
pub mod ops;
pub mod prompt_encoder;
pub mod sam;
pub mod tiny_vit;
pub mod transformer;
pub mod weights;
