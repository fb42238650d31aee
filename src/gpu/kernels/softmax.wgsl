// y = softmax(x) over the last dim: one workgroup per row. Each thread keeps a running
// (max, sum of exp(x - max)) over its strided share of the row, so the row is read twice
// (once here, once to write), then the pairs are merged in a tree in workgroup memory.
// The launcher prepends `const WG: u32;` (threads per workgroup, a power of two).

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// WGSL has no way to write -inf in a literal; the lowest finite f32 does the same job here.
// Written in hex: the decimal -3.4028235e38 rounds past f32 in Tint (Chromium) and is refused.
const NEG_MAX: f32 = -0x1.fffffep+127f;

var<workgroup> red_max: array<f32, WG>;
var<workgroup> red_sum: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var m = NEG_MAX;
    var s = 0.0;
    for (var i = t; i < p.cols; i += WG) {
        let v = x[base + i];
        if (v > m) {
            s *= exp(m - v);
            m = v;
        }
        s += exp(v - m);
    }
    red_max[t] = m;
    red_sum[t] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (t < stride) {
            let m2 = red_max[t + stride];
            let s2 = red_sum[t + stride];
            let mm = max(m, m2);
            s = s * exp(m - mm) + s2 * exp(m2 - mm);
            m = mm;
            red_max[t] = m;
            red_sum[t] = s;
        }
        workgroupBarrier();
    }
    let mx = red_max[0];
    let inv = 1.0 / red_sum[0];
    for (var i = t; i < p.cols; i += WG) {
        y[base + i] = exp(x[base + i] - mx) * inv;
    }
}
