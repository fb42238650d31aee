// out[z] = act(alpha * a[z] @ b[z] + bias), a: [M, K], b: [K, N] (or [N, K] when trans_b),
// batch z broadcast numpy-style through per-operand batch strides (0 repeats a matrix).
//
// Tiled through workgroup memory: 16x16 threads, each computing RM x RN outputs of a
// (16 RM) x (16 RN) output tile, BK values of K at a time. A thread owns rows ty + 16 i and
// columns tx + 16 j (strided, not blocked), so neighbouring threads read neighbouring words
// of the B tile (no bank conflicts) and write neighbouring words of the output (coalesced).
// The launcher prepends `const RM: u32; const RN: u32;`.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_b: u32,
    has_bias: u32,
    act: u32,        // Activation::code
    alpha: f32,
    _pad: u32,
    batch_shape: vec4<u32>,  // output batch dims, padded in front with 1s
    a_bstride: vec4<u32>,    // elements between consecutive matrices of a, per batch dim
    b_bstride: vec4<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 16u;
const THREADS: u32 = WG * WG;
const BK: u32 = 16u;
const TM: u32 = WG * RM;
const TN: u32 = WG * RN;
// Tiles are stored K-major with one word of padding per row: the transposing stores
// (consecutive threads walk K) then land in different banks.
const AS: u32 = TM + 1u;
const BS: u32 = TN + 1u;

var<workgroup> a_tile: array<f32, BK * AS>;
var<workgroup> b_tile: array<f32, BK * BS>;

@compute @workgroup_size(16, 16)
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
    for (var d = 3i; d >= 0i; d--) {
        let c = z % p.batch_shape[d];
        z = z / p.batch_shape[d];
        a_off += c * p.a_bstride[d];
        b_off += c * p.b_bstride[d];
    }
    let o_off = wid.z * p.m * p.n;

    var acc: array<f32, RM * RN>;
    let tx = lid.x;
    let ty = lid.y;

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // A tile: consecutive threads read consecutive k of one row.
        for (var r = 0u; r < TM * BK / THREADS; r++) {
            let e = tid + THREADS * r;
            let kk = e % BK;
            let mm = e / BK;
            let gm = m0 + mm;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < p.m && gk < p.k) {
                v = a[a_off + gm * p.k + gk];
            }
            a_tile[kk * AS + mm] = v;
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
                    v = b[b_off + gk * p.n + gn];
                }
                b_tile[kk * BS + nn] = v;
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
                    v = b[b_off + gn * p.k + gk];
                }
                b_tile[kk * BS + nn] = v;
            }
        }
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, RM>;
            var bv: array<f32, RN>;
            for (var i = 0u; i < RM; i++) {
                av[i] = a_tile[kk * AS + ty + WG * i];
            }
            for (var j = 0u; j < RN; j++) {
                bv[j] = b_tile[kk * BS + tx + WG * j];
            }
            for (var i = 0u; i < RM; i++) {
                for (var j = 0u; j < RN; j++) {
                    acc[i * RN + j] = fma(av[i], bv[j], acc[i * RN + j]);
                }
            }
        }
        workgroupBarrier();
    }

    // Epilogue: scale, bias, activation.
    for (var i = 0u; i < RM; i++) {
        let row = m0 + ty + WG * i;
        if (row >= p.m) {
            break;
        }
        for (var j = 0u; j < RN; j++) {
            let col = n0 + tx + WG * j;
            if (col < p.n) {
                var v = p.alpha * acc[i * RN + j];
                if (p.has_bias != 0u) {
                    v += bias[col];
                }
                out[o_off + row * p.n + col] = activate(v, p.act);
            }
        }
    }
}
