// y = a op b with numpy broadcasting over up to 4 dims (a stride of 0 repeats a value).

struct Params {
    numel: u32,
    op: u32,      // 0: add, 1: sub, 2: mul, 3: max
    _pad0: u32,
    _pad1: u32,
    shape: vec4<u32>,      // output shape, padded in front with 1s
    a_strides: vec4<u32>,
    b_strides: vec4<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg, 256u);
    if (i >= p.numel) {
        return;
    }
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = 3; d >= 0; d--) {
        let c = rem % p.shape[d];
        rem = rem / p.shape[d];
        ia += c * p.a_strides[d];
        ib += c * p.b_strides[d];
    }
    let va = a[ia];
    let vb = b[ib];
    switch p.op {
        case 0u: { y[i] = va + vb; }
        case 1u: { y[i] = va - vb; }
        case 2u: { y[i] = va * vb; }
        default: { y[i] = max(va, vb); }
    }
}
