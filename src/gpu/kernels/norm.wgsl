// Layer norms with biased variance, mean first then variance about it (two passes, not
// E[x^2] - E[x]^2, which loses digits when the mean is large).
// - `layer_norm`: PyTorch's LayerNorm over the last dim, one workgroup per row.
// - `layer_norm_2d`: SAM's LayerNorm2d over C of [B, C, H, W], one thread per pixel, so
//   neighbouring threads read neighbouring pixels of the same channel (coalesced).
// The launcher prepends `const WG: u32;` (threads per workgroup, a power of two).

struct Params {
    rows: u32,   // layer_norm: rows; layer_norm_2d: B * H * W pixels
    c: u32,      // normalised length
    hw: u32,     // layer_norm_2d: H * W
    act: u32,    // Activation::code, applied after the affine
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, WG>;

// Sum of `v` over the workgroup (every thread gets it).
fn workgroup_sum(t: u32, v: f32) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (t < stride) {
            red[t] += red[t + stride];
        }
        workgroupBarrier();
    }
    let total = red[0];
    // Nobody may overwrite red[0] before every thread has read it.
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn layer_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.c;
    let inv_c = 1.0 / f32(p.c);
    var s = 0.0;
    for (var i = t; i < p.c; i += WG) {
        s += x[base + i];
    }
    let mean = workgroup_sum(t, s) * inv_c;
    var q = 0.0;
    for (var i = t; i < p.c; i += WG) {
        let d = x[base + i] - mean;
        q = fma(d, d, q);
    }
    let rstd = 1.0 / sqrt(workgroup_sum(t, q) * inv_c + p.eps);
    for (var i = t; i < p.c; i += WG) {
        y[base + i] = activate((x[base + i] - mean) * rstd * w[i] + bias[i], p.act);
    }
}

@compute @workgroup_size(WG)
fn layer_norm_2d(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg, WG);
    if (i >= p.rows) {
        return;
    }
    let b = i / p.hw;
    let base = b * p.c * p.hw + (i - b * p.hw);
    let inv_c = 1.0 / f32(p.c);
    var s = 0.0;
    for (var c = 0u; c < p.c; c++) {
        s += x[base + c * p.hw];
    }
    let mean = s * inv_c;
    var q = 0.0;
    for (var c = 0u; c < p.c; c++) {
        let d = x[base + c * p.hw] - mean;
        q = fma(d, d, q);
    }
    let rstd = 1.0 / sqrt(q * inv_c + p.eps);
    for (var c = 0u; c < p.c; c++) {
        let at = base + c * p.hw;
        y[at] = activate((x[at] - mean) * rstd * w[c] + bias[c], p.act);
    }
}
