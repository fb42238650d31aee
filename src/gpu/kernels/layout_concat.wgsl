// Concat, one dispatch per input: the input seen as [outer, len * inner] goes to columns
// [offset * inner, (offset + len) * inner) of the output seen as [outer, out_len * inner].

struct Params {
    numel: u32,      // values of this input
    span: u32,       // len * inner
    out_span: u32,   // out_len * inner
    start: u32,      // offset * inner
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
    let outer = i / p.span;
    y[outer * p.out_span + p.start + (i - outer * p.span)] = x[i];
}
