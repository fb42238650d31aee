// Bilinear resize as F.interpolate(mode="bilinear", align_corners=False) to (out_h, out_w),
// writing only the top-left keep_h x keep_w block of that output. The arithmetic is
// websam::image's, in f32: src = max(scale * (i + 0.5) - 0.5, 0), scale = in / out (computed
// on the CPU and passed in, so both sides use the same rounded value).
// One thread per output value; a 16 x 16 workgroup covers a tile of one plane,
// workgroup_id.z = b * C + c.

struct Params {
    in_h: u32,
    in_w: u32,
    keep_h: u32,
    keep_w: u32,
    scale_h: f32,
    scale_w: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// (i0, i1, weight of i0, weight of i1) of output index `i` along a side of `n` inputs.
struct Taps {
    i0: u32,
    i1: u32,
    l0: f32,
    l1: f32,
}

fn taps(i: u32, n: u32, scale: f32) -> Taps {
    let src = max(scale * (f32(i) + 0.5) - 0.5, 0.0);
    let i0 = min(u32(src), n - 1u);
    let i1 = select(i0, i0 + 1u, i0 < n - 1u);
    let l1 = clamp(src - f32(i0), 0.0, 1.0);
    return Taps(i0, i1, 1.0 - l1, l1);
}

@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ox = gid.x;
    let oy = gid.y;
    if (ox >= p.keep_w || oy >= p.keep_h) {
        return;
    }
    let ty = taps(oy, p.in_h, p.scale_h);
    let tx = taps(ox, p.in_w, p.scale_w);
    let base = gid.z * p.in_h * p.in_w;
    let r0 = base + ty.i0 * p.in_w;
    let r1 = base + ty.i1 * p.in_w;
    let v = ty.l0 * (tx.l0 * x[r0 + tx.i0] + tx.l1 * x[r0 + tx.i1])
        + ty.l1 * (tx.l0 * x[r1 + tx.i0] + tx.l1 * x[r1 + tx.i1]);
    y[(gid.z * p.keep_h + oy) * p.keep_w + ox] = v;
}
