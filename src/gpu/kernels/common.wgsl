// Shared helpers, prepended to kernels that use them.

// erf with the Abramowitz-Stegun 7.1.26 rational form refined to f32 accuracy
// (max abs error about 1.2e-7): WGSL has no erf builtin.
fn erf_f32(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.5 * a);
    // Numerical Recipes' erfc approximation (fractional error < 1.2e-7 everywhere).
    let y = t * exp(-a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277)))))))));
    return select(y - 1.0, 1.0 - y, x >= 0.0);
}

// GELU, exact erf form (PyTorch's nn.GELU default).
fn gelu_f32(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_f32(x * 0.70710678118654752));
}

// Linear invocation index over a grid split across x and y (see GpuContext::grid).
fn linear_index(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.x + gid.y * nwg.x * wg;
}

// ReLU as PyTorch's: a NaN stays NaN where the device keeps NaNs (max(x, 0) may drop it).
fn relu_f32(x: f32) -> f32 {
    return select(x, 0.0, x < 0.0);
}

fn sigmoid_f32(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// The fused activation of a kernel's epilogue (Activation::code on the Rust side):
// 0 none, 1 GELU (erf), 2 ReLU.
fn activate(x: f32, code: u32) -> f32 {
    switch code {
        case 1u: { return gelu_f32(x); }
        case 2u: { return relu_f32(x); }
        case 3u: { return sigmoid_f32(x); }
        default: { return x; }
    }
}
