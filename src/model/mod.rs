//! SAM itself: one file per reference module, each written once against the primitives of
//! [`backend::Backend`], which the CPU ([`cpu::Cpu`], candle) and the GPU
//! ([`crate::gpu::backend::Gpu`], the WebGPU engine) implement.

pub mod backend;
pub mod common;
pub mod config;
pub mod conv;
pub mod cpu;
pub mod hf;
pub mod hiera;
pub mod mask_decoder;
pub mod ops;
pub mod prompt_encoder;
pub mod pth;
pub mod sam;
pub mod source;
pub mod tiny_vit;
pub mod transformer;
pub mod vit;
pub mod weights;

/// Helpers of the unit tests of this module's files.
#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::Tensor;

    /// Max `|a - b|` over all elements of two tensors of the same shape.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }
}
