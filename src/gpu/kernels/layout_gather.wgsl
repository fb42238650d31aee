// Strided gather, serving permute, pad and slice: over output coordinates o,
// y[o] = x[sum_d (o[d] + offset[d]) * src_strides[d]], or `value` where a source coordinate
// falls outside [0, src_dims[d]). Up to 8 dims (the Rust side uses 6). One thread per output
// value; the divisions rebuild its coordinates once, there is no inner loop over data.

struct Params {
    numel: u32,
    rank: u32,
    value: f32,
    _pad0: u32,
    out_shape: array<vec4<u32>, 2>,
    src_dims: array<vec4<u32>, 2>,     // source extent seen from each output dim
    src_strides: array<vec4<u32>, 2>,  // source stride of each output dim
    offset: array<vec4<i32>, 2>,       // source coordinate - output coordinate
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg, 256u);
    if (i >= p.numel) {
        return;
    }
    var rem = i;
    var src = 0u;
    var inside = true;
    for (var d = i32(p.rank) - 1; d >= 0; d--) {
        let q = u32(d) >> 2u;
        let r = u32(d) & 3u;
        let n = p.out_shape[q][r];
        let o = rem % n;
        rem = rem / n;
        let s = i32(o) + p.offset[q][r];
        inside = inside && s >= 0 && s < i32(p.src_dims[q][r]);
        src += u32(s) * p.src_strides[q][r];
    }
    var v = p.value;
    if (inside) {
        v = x[src];
    }
    y[i] = v;
}
