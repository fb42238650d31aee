// out[z] = act(alpha * a[z] @ b[z] + bias[z]), a: [M, K], b: [K, N] (or [N, K] when trans_b),
// bias: a row of N; batch z broadcast numpy-style through per-operand batch strides (0
// repeats a matrix or a bias row).
//
// Tiled through workgroup memory: WG_X x WG_Y threads, each computing 8x8 outputs of a
// (8 WG_Y) x (8 WG_X) output tile, BK values of K at a time. Tiles are stored K-major as
// vec4s; a thread owns rows 4 ty + {0..3} and 4 (ty + WG_Y) + {0..3}, and likewise two
// groups of 4 columns half a tile apart, so it reads 2 + 2 vec4s per k for 64 FMAs and
// neighbouring threads read neighbouring vec4s (no bank conflicts). The 64 sums live in
// named vec4s: arrays indexed at run time stay in memory on CPU drivers such as lavapipe.
// The launcher prepends `const WG_X: u32; const WG_Y: u32;`, the element types `w_t` (of b in
// memory) and `tile_t` (of the tiles and products), and writes the multiply loop's body at
// the markers: f32 sums a tile's 16 products in f32 partials, f16 (weights stored as f16,
// `enable f16`) every 2 in f16 partials, then adds them to the f32 accumulators.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_b: u32,
    has_bias: u32,
    act: u32,        // Activation::code
    alpha: f32,
    lda: u32,        // elements between rows of a (K, or more for a slice of K)
    batch_shape: vec4<u32>,  // output batch dims, padded in front with 1s
    a_bstride: vec4<u32>,    // elements between consecutive matrices of a, per batch dim
    b_bstride: vec4<u32>,
    bias_bstride: vec4<u32>, // elements between consecutive bias rows, per batch dim
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<w_t>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const THREADS: u32 = WG_X * WG_Y;
const BK: u32 = 16u;
const TM: u32 = 8u * WG_Y;
const TN: u32 = 8u * WG_X;
const TM4: u32 = TM / 4u;
const TN4: u32 = TN / 4u;

var<workgroup> a_tile: array<vec4<tile_t>, BK * TM4>;  // [k][m / 4]
var<workgroup> b_tile: array<vec4<tile_t>, BK * TN4>;  // [k][n / 4]

@compute @workgroup_size(WG_X, WG_Y)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let m0 = wid.y * TM;
    let n0 = wid.x * TN;

    // Batch offsets, once per workgroup.
    var z = wid.z;
    var a_off = 0u;
    var b_off = 0u;
    var bias_off = 0u;
    for (var d = 3i; d >= 0i; d--) {
        let c = z % p.batch_shape[d];
        z = z / p.batch_shape[d];
        a_off += c * p.a_bstride[d];
        b_off += c * p.b_bstride[d];
        bias_off += c * p.bias_bstride[d];
    }
    let o_off = wid.z * p.m * p.n;

    var acc00 = vec4<f32>(0.0);
    var acc01 = vec4<f32>(0.0);
    var acc10 = vec4<f32>(0.0);
    var acc11 = vec4<f32>(0.0);
    var acc20 = vec4<f32>(0.0);
    var acc21 = vec4<f32>(0.0);
    var acc30 = vec4<f32>(0.0);
    var acc31 = vec4<f32>(0.0);
    var acc40 = vec4<f32>(0.0);
    var acc41 = vec4<f32>(0.0);
    var acc50 = vec4<f32>(0.0);
    var acc51 = vec4<f32>(0.0);
    var acc60 = vec4<f32>(0.0);
    var acc61 = vec4<f32>(0.0);
    var acc70 = vec4<f32>(0.0);
    var acc71 = vec4<f32>(0.0);
    let tx = lid.x;
    let ty = lid.y;

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // A tile: consecutive threads read consecutive k of one row (coalesced).
        for (var r = 0u; r < TM * BK / THREADS; r++) {
            let e = tid + THREADS * r;
            let kk = e % BK;
            let mm = e / BK;
            let gm = m0 + mm;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < p.m && gk < p.k) {
                v = a[a_off + gm * p.lda + gk];
            }
            a_tile[kk * TM4 + mm / 4u][mm % 4u] = tile_t(v);
        }
        // B tile: read along whichever axis is contiguous in memory.
        if (p.trans_b == 0u) {
            for (var r = 0u; r < TN * BK / THREADS; r++) {
                let e = tid + THREADS * r;
                let nn = e % TN;
                let kk = e / TN;
                let gn = n0 + nn;
                let gk = k0 + kk;
                var v = 0.0;
                if (gn < p.n && gk < p.k) {
                    v = f32(b[b_off + gk * p.n + gn]);
                }
                b_tile[kk * TN4 + nn / 4u][nn % 4u] = tile_t(v);
            }
        } else {
            for (var r = 0u; r < TN * BK / THREADS; r++) {
                let e = tid + THREADS * r;
                let kk = e % BK;
                let nn = e / BK;
                let gn = n0 + nn;
                let gk = k0 + kk;
                var v = 0.0;
                if (gn < p.n && gk < p.k) {
                    v = f32(b[b_off + gn * p.k + gk]);
                }
                b_tile[kk * TN4 + nn / 4u][nn % 4u] = tile_t(v);
            }
        }
        workgroupBarrier();

        /*PARTIALS*/
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = a_tile[kk * TM4 + ty];
            let a1 = a_tile[kk * TM4 + ty + WG_Y];
            let b0 = b_tile[kk * TN4 + tx];
            let b1 = b_tile[kk * TN4 + tx + WG_X];
            /*PRODUCTS*/
        }
        /*FLUSH*/
        workgroupBarrier();
    }

    // Epilogue: scale, bias, activation.
    let r0 = m0 + 4u * ty;
    let r1 = m0 + 4u * (ty + WG_Y);
    let c0 = n0 + 4u * tx;
    let c1 = n0 + 4u * (tx + WG_X);
    let bias0 = bias4(bias_off, c0);
    let bias1 = bias4(bias_off, c1);
    store_row(o_off, r0 + 0u, c0, acc00, bias0);
    store_row(o_off, r0 + 0u, c1, acc01, bias1);
    store_row(o_off, r0 + 1u, c0, acc10, bias0);
    store_row(o_off, r0 + 1u, c1, acc11, bias1);
    store_row(o_off, r0 + 2u, c0, acc20, bias0);
    store_row(o_off, r0 + 2u, c1, acc21, bias1);
    store_row(o_off, r0 + 3u, c0, acc30, bias0);
    store_row(o_off, r0 + 3u, c1, acc31, bias1);
    store_row(o_off, r1 + 0u, c0, acc40, bias0);
    store_row(o_off, r1 + 0u, c1, acc41, bias1);
    store_row(o_off, r1 + 1u, c0, acc50, bias0);
    store_row(o_off, r1 + 1u, c1, acc51, bias1);
    store_row(o_off, r1 + 2u, c0, acc60, bias0);
    store_row(o_off, r1 + 2u, c1, acc61, bias1);
    store_row(o_off, r1 + 3u, c0, acc70, bias0);
    store_row(o_off, r1 + 3u, c1, acc71, bias1);
}

// bias[off + col..off + col + 4], zero past N or without a bias.
fn bias4(off: u32, col: u32) -> vec4<f32> {
    var r = vec4(0.0);
    if (p.has_bias != 0u) {
        for (var c = 0u; c < 4u; c++) {
            if (col + c < p.n) {
                r[c] = bias[off + col + c];
            }
        }
    }
    return r;
}

fn store_row(o_off: u32, row: u32, col0: u32, acc: vec4<f32>, bias4: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    let v = p.alpha * acc + bias4;
    for (var c = 0u; c < 4u; c++) {
        if (col0 + c < p.n) {
            out[o_off + row * p.n + col0 + c] = activate(v[c], p.act);
        }
    }
}
