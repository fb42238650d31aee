//! The relaxed-SIMD kernels module (see kernels/Cargo.toml and src/gemm/mod.rs): one export,
//! `tiles`, the main crate's kernel with `f32x4.relaxed_madd`. Pointers are offsets in the
//! imported memory, the main module's.
#![no_std]

#[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
compile_error!("websam-kernels is built for wasm32 with +relaxed-simd (./build.sh package)");

// The portable half of the kernel file serves the main module only.
#[allow(dead_code)]
#[path = "../src/gemm/kernel.rs"]
mod kernel;

/// [`kernel::tiles`] with the fused multiply-add.
///
/// # Safety
/// As [`kernel::tiles`]: the main module passes its packed panels and its C block.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tiles(
    kc: usize,
    a: *const f32,
    mc: usize,
    b: *const f32,
    nc: usize,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    let block = kernel::Block {
        kc,
        a,
        mc,
        b,
        nc,
        c,
        ldc,
        add,
    };
    unsafe { kernel::tiles::<kernel::Fused>(block) }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
