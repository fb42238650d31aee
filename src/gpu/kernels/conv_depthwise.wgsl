// Depthwise conv (groups == Cin == Cout, one kh x kw filter per channel) over NCHW, with bias,
// residual and activation fused. One thread per output value; a 16 x 16 workgroup covers a
// tile of one channel's output plane, workgroup_id.z = b * C + c, so no integer division.
// Depthwise convs are memory-bound: the 9 taps of neighbouring threads overlap and come
// from the cache.

const HAS_BIAS: u32 = 1u;
const HAS_RESIDUAL: u32 = 2u;

struct Params {
    c: u32,
    h: u32,
    w: u32,
    out_h: u32,
    out_w: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    flags: u32,     // HAS_BIAS | HAS_RESIDUAL
    act: u32,       // Activation::code
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ox = gid.x;
    let oy = gid.y;
    if (ox >= p.out_w || oy >= p.out_h) {
        return;
    }
    let plane = gid.z;              // b * C + c
    let c = plane % p.c;
    let in_base = plane * p.h * p.w;
    let w_base = c * p.kh * p.kw;
    let iy0 = i32(oy * p.stride) - i32(p.pad);
    let ix0 = i32(ox * p.stride) - i32(p.pad);
    var acc = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = iy0 + i32(ky);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        let row = in_base + u32(iy) * p.w;
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = ix0 + i32(kx);
            if (ix >= 0 && ix < i32(p.w)) {
                acc += wt[w_base + ky * p.kw + kx] * x[row + u32(ix)];
            }
        }
    }
    if ((p.flags & HAS_BIAS) != 0u) {
        acc += bias[c];
    }
    let idx = (plane * p.out_h + oy) * p.out_w + ox;
    if ((p.flags & HAS_RESIDUAL) != 0u) {
        acc += residual[idx];
    }
    y[idx] = activate(acc, p.act);
}
