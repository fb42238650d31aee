// y = f(x), one thread per element.

struct Params {
    numel: u32,
    op: u32,      // 0: GELU (erf), 1: ReLU, 2: x * alpha + beta, 3: sigmoid
    alpha: f32,
    beta: f32,
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
    let v = x[i];
    switch p.op {
        case 0u: { y[i] = gelu_f32(v); }
        case 1u: { y[i] = relu_f32(v); }
        case 3u: { y[i] = sigmoid_f32(v); }
        default: { y[i] = v * p.alpha + p.beta; }
    }
}
