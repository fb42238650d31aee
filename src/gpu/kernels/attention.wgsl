// Fused attention: out = softmax(scale * q @ k^T + bias) @ v, for q [B, H, Nq, D],
// k and v [B, H, Nk, D], bias [H, Nq, Nk] shared over B (or SAM ViT's relative positions,
// bias_of); or, through the strides, for heads
// side by side in tokens [B, N, H * D]. Scores never reach memory: each
// output row keeps a running max m, a running sum l of exp(s - m) and the running weighted
// sum o of v, rescaled whenever m grows (online softmax).
//
// Two entry points:
// - `attn_rows`: a thread per query row, WG rows per workgroup; keys and values pass through
//   workgroup memory BK keys at a time, each read by every thread (broadcast). For many
//   queries (image -> token, TinyViT windows, self-attention).
// - `attn_split`: a workgroup per query row, its threads taking keys t, t + WG, ...; the
//   per-thread (m, l, o) are merged in a tree at the end. For a few queries over many keys
//   (token -> image, Nk = 4096), where a thread per query would leave the GPU idle.
//
// The launcher prepends `const D: u32;` (head dim; the key names it), `const WG: u32;`,
// `const BK: u32;` (keys per tile of attn_rows) and `const RED_D4: u32;` (D4 for attn_split).
// The entry point not built gets 1 for its sizes, so its workgroup arrays cost nothing
// against the 16 KiB WebGPU guarantees. Loops over D are of constant length, so q and o
// stay in registers.

struct Params {
    bh: u32,       // B * H
    h: u32,
    nq: u32,
    nk: u32,
    scale: f32,
    // 0: none; 1: a table [H, Nq, Nk]; 2: SAM ViT's decomposed relative positions
    // [B * H, Nq, kh + kw], kw = rel_kw (bias_of).
    has_bias: u32,
    q_tiles: u32,  // attn_rows: workgroups per (b, h)
    rel_kw: u32,
    // Elements between batches, heads and rows (x, y, z) of q, of k and v, and of out:
    // [B, H, N, D] or tokens [B, N, H * D].
    q_s: vec4<u32>,
    kv_s: vec4<u32>,
    o_s: vec4<u32>,
}

// The first element of row `n` of head `bh` (= batch * H + head) in a tensor of strides `s`.
fn row(s: vec4<u32>, bh: u32, n: u32) -> u32 {
    return (bh / p.h) * s.x + (bh % p.h) * s.y + n * s.z;
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const D4: u32 = (D + 3u) / 4u;
// WGSL has no way to write -inf in a literal; the lowest finite f32 does the same job here.
// Written in hex: the decimal -3.4028235e38 rounds past f32 in Tint (Chromium) and is refused.
const NEG_MAX: f32 = -0x1.fffffep+127f;

// Where the bias terms of query `qi` of head `bh` start.
fn bias_row(bh: u32, qi: u32) -> u32 {
    if (p.has_bias == 2u) {
        return (bh * p.nq + qi) * (p.nk / p.rel_kw + p.rel_kw);
    }
    return ((bh % p.h) * p.nq + qi) * p.nk;
}

// What the bias adds to the score of key `key` of the row whose terms start at `base`: a
// table's entry, or the key's row term plus its column term (keys row-major on a
// (nk / rel_kw) x rel_kw grid; the row terms first, then the column terms).
fn bias_of(base: u32, key: u32) -> f32 {
    if (p.has_bias == 2u) {
        let kh = p.nk / p.rel_kw;
        return bias[base + key / p.rel_kw] + bias[base + kh + key % p.rel_kw];
    }
    return bias[base + key];
}

// Four values of a row from `base`, zero past D (the test folds away when D % 4 == 0).
fn q4(base: u32, i: u32) -> vec4<f32> {
    let at = base + 4u * i;
    if (D % 4u == 0u) {
        return vec4(q[at], q[at + 1u], q[at + 2u], q[at + 3u]);
    }
    var r = vec4(0.0);
    for (var c = 0u; c < 4u; c++) {
        if (4u * i + c < D) {
            r[c] = q[at + c];
        }
    }
    return r;
}

fn k4(base: u32, i: u32) -> vec4<f32> {
    let at = base + 4u * i;
    if (D % 4u == 0u) {
        return vec4(k[at], k[at + 1u], k[at + 2u], k[at + 3u]);
    }
    var r = vec4(0.0);
    for (var c = 0u; c < 4u; c++) {
        if (4u * i + c < D) {
            r[c] = k[at + c];
        }
    }
    return r;
}

fn v4(base: u32, i: u32) -> vec4<f32> {
    let at = base + 4u * i;
    if (D % 4u == 0u) {
        return vec4(v[at], v[at + 1u], v[at + 2u], v[at + 3u]);
    }
    var r = vec4(0.0);
    for (var c = 0u; c < 4u; c++) {
        if (4u * i + c < D) {
            r[c] = v[at + c];
        }
    }
    return r;
}

fn store_row(base: u32, o: array<vec4<f32>, D4>, inv_l: f32) {
    for (var i = 0u; i < D4; i++) {
        for (var c = 0u; c < 4u; c++) {
            if (4u * i + c < D) {
                out[base + 4u * i + c] = o[i][c] * inv_l;
            }
        }
    }
}

var<workgroup> k_tile: array<vec4<f32>, BK * D4>;
var<workgroup> v_tile: array<vec4<f32>, BK * D4>;

@compute @workgroup_size(WG)
fn attn_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let g = wid.x + wid.y * nwg.x;
    let bh = g / p.q_tiles;
    if (bh >= p.bh) {
        return;
    }
    let qi = (g - bh * p.q_tiles) * WG + t;
    // Threads past the last query compute a copy of it (they must still help load tiles
    // and meet the barriers) and write nothing.
    let qr = min(qi, p.nq - 1u);
    let q_base = row(p.q_s, bh, qr);
    let bias_base = bias_row(bh, qr);

    var qv: array<vec4<f32>, D4>;
    for (var i = 0u; i < D4; i++) {
        qv[i] = q4(q_base, i) * p.scale;
    }
    var o: array<vec4<f32>, D4>;
    var m = NEG_MAX;
    var l = 0.0;

    for (var k0 = 0u; k0 < p.nk; k0 += BK) {
        let n = min(BK, p.nk - k0);
        for (var e = t; e < BK * D4; e += WG) {
            let j = e / D4;
            var kv = vec4(0.0);
            var vv = vec4(0.0);
            if (j < n) {
                let base = row(p.kv_s, bh, k0 + j);
                kv = k4(base, e - j * D4);
                vv = v4(base, e - j * D4);
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
        }
        workgroupBarrier();
        for (var j = 0u; j < n; j++) {
            var s = 0.0;
            for (var i = 0u; i < D4; i++) {
                s += dot(qv[i], k_tile[j * D4 + i]);
            }
            if (p.has_bias != 0u) {
                s += bias_of(bias_base, k0 + j);
            }
            if (s > m) {
                let c = exp(m - s);
                l *= c;
                for (var i = 0u; i < D4; i++) {
                    o[i] *= c;
                }
                m = s;
            }
            let pj = exp(s - m);
            l += pj;
            for (var i = 0u; i < D4; i++) {
                o[i] = fma(vec4(pj), v_tile[j * D4 + i], o[i]);
            }
        }
        workgroupBarrier();
    }
    if (qi < p.nq) {
        store_row(row(p.o_s, bh, qr), o, 1.0 / l);
    }
}

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_l: array<f32, WG>;
var<workgroup> red_o: array<vec4<f32>, WG * RED_D4>;

@compute @workgroup_size(WG)
fn attn_split(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let g = wid.x + wid.y * nwg.x;
    let bh = g / p.nq;
    if (bh >= p.bh) {
        return;
    }
    let qi = g - bh * p.nq;
    let q_base = row(p.q_s, bh, qi);
    let bias_base = bias_row(bh, qi);

    var qv: array<vec4<f32>, D4>;
    for (var i = 0u; i < D4; i++) {
        qv[i] = q4(q_base, i) * p.scale;
    }
    var o: array<vec4<f32>, D4>;
    var m = NEG_MAX;
    var l = 0.0;
    for (var j = t; j < p.nk; j += WG) {
        let base = row(p.kv_s, bh, j);
        var s = 0.0;
        for (var i = 0u; i < D4; i++) {
            s += dot(qv[i], k4(base, i));
        }
        if (p.has_bias != 0u) {
            s += bias_of(bias_base, j);
        }
        if (s > m) {
            let c = exp(m - s);
            l *= c;
            for (var i = 0u; i < D4; i++) {
                o[i] *= c;
            }
            m = s;
        }
        let pj = exp(s - m);
        l += pj;
        for (var i = 0u; i < D4; i++) {
            o[i] = fma(vec4(pj), v4(base, i), o[i]);
        }
    }

    // The row's max, then every thread's share rescaled to it and summed.
    red_m[t] = m;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (t < stride) {
            red_m[t] = max(red_m[t], red_m[t + stride]);
        }
        workgroupBarrier();
    }
    let f = exp(m - red_m[0]);
    red_l[t] = l * f;
    for (var i = 0u; i < D4; i++) {
        red_o[t * D4 + i] = o[i] * f;
    }
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (t < stride) {
            red_l[t] += red_l[t + stride];
            for (var i = 0u; i < D4; i++) {
                red_o[t * D4 + i] += red_o[(t + stride) * D4 + i];
            }
        }
        workgroupBarrier();
    }
    if (t < D4) {
        let r = red_o[t] / red_l[0];
        let o_base = row(p.o_s, bh, qi);
        for (var c = 0u; c < 4u; c++) {
            if (4u * t + c < D) {
                out[o_base + 4u * t + c] = r[c];
            }
        }
    }
}
