// y[b, s, r] = x[b, r, s]: a batched 2-D transpose through a 16 x 17 workgroup tile, so
// that both the reads (along s) and the writes (along r) are contiguous. The permutes of
// TinyViT (tokens [B, HW, C] <-> NCHW) all reduce to this.

struct Params {
    rows: u32,   // r extent
    cols: u32,   // s extent
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const TILE: u32 = 16u;
// One padding column: the transposed reads of a column hit distinct banks.
var<workgroup> tile: array<array<f32, 17>, 16>;

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let base = wg.z * p.rows * p.cols;
    let r0 = wg.y * TILE;
    let s0 = wg.x * TILE;
    let r = r0 + lid.y;
    let s = s0 + lid.x;
    if (r < p.rows && s < p.cols) {
        tile[lid.y][lid.x] = x[base + r * p.cols + s];
    }
    workgroupBarrier();
    let ro = r0 + lid.x;
    let so = s0 + lid.y;
    if (ro < p.rows && so < p.cols) {
        y[base + so * p.rows + ro] = tile[lid.x][lid.y];
    }
}
