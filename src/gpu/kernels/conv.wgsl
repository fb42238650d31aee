// Convolutions as one tiled GEMM per (batch, group): Y[m, n] = sum_k A[m, k] * B[k, n], then
// bias, residual and activation in the epilogue. `MODE` (a const prepended by conv.rs) picks
// how A, B and Y lie in memory:
//   MODE_IM2COL      A = weight [M, K] (K = Cin/g * kh * kw), B = the input's patches gathered
//                    on the fly (implicit GEMM), Y = NCHW output, n = oy * out_w + ox.
//   MODE_POINTWISE   1x1, stride 1, padding 0: B = the input [Cin, H*W] as it lies.
//   MODE_TRANSPOSE   ConvTranspose2d k2 s2: A = weight^T (weight [Cin, Cout*4]), B = the input
//                    [Cin, H*W], Y scattered to pixel (2iy + dy, 2ix + dx), m = co*4 + dy*2 + dx.
//
// A workgroup of 256 threads computes a BM x BN = 64 x 64 tile of Y, 4 x 4 values a thread,
// stepping over K by BK = 16 through workgroup memory. Integer divisions happen once per
// thread per K step while loading (one k index), never in the multiply loop.
//
// The launcher prepends `const MODE: u32;` and the element types `w_t` (weights in memory) and
// `tile_t` (tiles and products), and writes the multiply loop's body at the markers (see
// `gemm_source` in kernels/mod.rs: f32, or f16 weights with f16 partial sums).

const MODE_IM2COL: u32 = 0u;
const MODE_POINTWISE: u32 = 1u;
const MODE_TRANSPOSE: u32 = 2u;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

const HAS_BIAS: u32 = 1u;
const HAS_RESIDUAL: u32 = 2u;

struct Params {
    m: u32,          // rows of one group's GEMM (output channels per group; Cout*4 transposed)
    n: u32,          // columns (output pixels; input pixels transposed)
    k: u32,          // reduction (Cin/g * kh * kw; Cin transposed)
    groups: u32,
    c_in: u32,       // input channels, all groups
    h: u32,
    w: u32,
    c_out: u32,      // output channels, all groups
    out_h: u32,
    out_w: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    flags: u32,      // HAS_BIAS | HAS_RESIDUAL
    act: u32,        // Activation::code
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<w_t>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

// [BK][BM / 4] and [BK][BN / 4]: a thread reads its 4 rows (columns) as one vec4.
var<workgroup> a_tile: array<vec4<tile_t>, 256>;
var<workgroup> b_tile: array<vec4<tile_t>, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let n0 = wg.x * BN;
    let m0 = wg.y * BM;
    let bi = wg.z / p.groups;
    let g = wg.z % p.groups;
    let tx = t % 16u;     // output columns n0 + tx*4 .. +3
    let ty = t / 16u;     // output rows m0 + ty*4 .. +3

    // Loading B: row kb = t / 16 of the tile, columns nb .. nb+3; their geometry is fixed.
    let kb = t / 16u;
    let nb = n0 + tx * 4u;
    let c_per_group = p.c_in / p.groups;
    let x_base = (bi * p.c_in + g * c_per_group) * p.h * p.w;
    var iy0: vec4<i32>;
    var ix0: vec4<i32>;
    if (MODE == MODE_IM2COL) {
        for (var j = 0u; j < 4u; j++) {
            let n = nb + j;
            let oy = n / p.out_w;
            let ox = n - oy * p.out_w;
            iy0[j] = i32(oy * p.stride) - i32(p.pad);
            ix0[j] = i32(ox * p.stride) - i32(p.pad);
        }
    }
    let w_base = g * p.m * p.k;
    let khw = p.kh * p.kw;

    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // A tile.
        if (MODE == MODE_TRANSPOSE) {
            // weight [K, M]: contiguous along m.
            let k = k0 + t / 16u;
            for (var j = 0u; j < 4u; j++) {
                let m = m0 + tx * 4u + j;
                var v = 0.0;
                if (k < p.k && m < p.m) {
                    v = f32(wt[k * p.m + m]);
                }
                a_tile[(t / 16u) * 16u + tx][j] = tile_t(v);
            }
        } else {
            // weight [M, K]: contiguous along k.
            let m = m0 + t / 4u;
            for (var j = 0u; j < 4u; j++) {
                let kr = (t % 4u) * 4u + j;
                let k = k0 + kr;
                var v = 0.0;
                if (k < p.k && m < p.m) {
                    v = f32(wt[w_base + m * p.k + k]);
                }
                a_tile[kr * 16u + (t / 4u) / 4u][(t / 4u) % 4u] = tile_t(v);
            }
        }
        // B tile.
        let k = k0 + kb;
        var bv = vec4<f32>(0.0);
        if (k < p.k) {
            if (MODE == MODE_IM2COL) {
                let ci = k / khw;
                let r = k - ci * khw;
                let ky = r / p.kw;
                let kx = r - ky * p.kw;
                let plane = x_base + ci * p.h * p.w;
                for (var j = 0u; j < 4u; j++) {
                    let iy = iy0[j] + i32(ky);
                    let ix = ix0[j] + i32(kx);
                    if (nb + j < p.n && iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
                        bv[j] = x[plane + u32(iy) * p.w + u32(ix)];
                    }
                }
            } else {
                let row = x_base + k * p.n;
                for (var j = 0u; j < 4u; j++) {
                    if (nb + j < p.n) {
                        bv[j] = x[row + nb + j];
                    }
                }
            }
        }
        b_tile[kb * 16u + tx] = vec4<tile_t>(bv);
        workgroupBarrier();

        /*PARTIALS*/
        for (var kk = 0u; kk < BK; kk++) {
            let a = a_tile[kk * 16u + ty];
            let b = b_tile[kk * 16u + tx];
            /*PRODUCTS*/
        }
        /*FLUSH*/
        workgroupBarrier();
    }

    // Epilogue: bias, residual, activation, store.
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty * 4u + i;
        if (m >= p.m) {
            break;
        }
        var b = 0.0;
        var row_base = 0u;
        if (MODE == MODE_TRANSPOSE) {
            if ((p.flags & HAS_BIAS) != 0u) {
                b = bias[m / 4u];
            }
        } else {
            let co = g * p.m + m;
            if ((p.flags & HAS_BIAS) != 0u) {
                b = bias[co];
            }
            row_base = (bi * p.c_out + co) * p.n;
        }
        for (var j = 0u; j < 4u; j++) {
            let n = nb + j;
            if (n >= p.n) {
                break;
            }
            var idx = row_base + n;
            if (MODE == MODE_TRANSPOSE) {
                let co = m / 4u;
                let dy = (m / 2u) % 2u;
                let dx = m % 2u;
                let iy = n / p.w;
                let ix = n - iy * p.w;
                idx = ((bi * p.c_out + co) * p.out_h + 2u * iy + dy) * p.out_w + 2u * ix + dx;
            }
            var v = acc[i][j] + b;
            if ((p.flags & HAS_RESIDUAL) != 0u) {
                v += residual[idx];
            }
            y[idx] = activate(v, p.act);
        }
    }
}
