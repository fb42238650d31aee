// TinyViT's window partition and reverse, one pass each.
//   partition: tokens [B, H*W, C] -> windows [B * nH * nW, ws * ws, C], the grid padded with
//              zeros at the bottom and right to (nH * ws) x (nW * ws) (F.pad + view + transpose).
//   reverse:   windows -> tokens [B, H*W, C], the padding cropped, plus an optional residual
//              of the tokens' shape (TinyViTBlock's `res_x + attn(x)`).
// One thread per output value; c is the fastest index, so reads and writes are contiguous
// runs of C values.

struct Params {
    numel: u32,
    c: u32,
    h: u32,
    w: u32,
    ws: u32,
    n_h: u32,
    n_w: u32,
    has_residual: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> residual: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn window_partition(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg, 256u);
    if (i >= p.numel) {
        return;
    }
    // i = ((((b * nH + wy) * nW + wx) * ws + py) * ws + px) * C + c
    let token = i / p.c;
    let c = i - token * p.c;
    let win = token / (p.ws * p.ws);
    let in_win = token - win * p.ws * p.ws;
    let py = in_win / p.ws;
    let px = in_win - py * p.ws;
    let bwy = win / p.n_w;
    let wx = win - bwy * p.n_w;
    let b = bwy / p.n_h;
    let wy = bwy - b * p.n_h;
    let row = wy * p.ws + py;
    let col = wx * p.ws + px;
    var v = 0.0;
    if (row < p.h && col < p.w) {
        v = x[((b * p.h + row) * p.w + col) * p.c + c];
    }
    y[i] = v;
}

@compute @workgroup_size(256)
fn window_reverse(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg, 256u);
    if (i >= p.numel) {
        return;
    }
    // i = ((b * H + row) * W + col) * C + c
    let token = i / p.c;
    let c = i - token * p.c;
    let brow = token / p.w;
    let col = token - brow * p.w;
    let b = brow / p.h;
    let row = brow - b * p.h;
    let wy = row / p.ws;
    let py = row - wy * p.ws;
    let wx = col / p.ws;
    let px = col - wx * p.ws;
    let src = ((((b * p.n_h + wy) * p.n_w + wx) * p.ws + py) * p.ws + px) * p.c + c;
    var v = x[src];
    if (p.has_residual != 0u) {
        v += residual[i];
    }
    y[i] = v;
}
