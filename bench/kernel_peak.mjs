// The CPU path's ceiling in the browser: the GEMM kernel's throughput with its operands in cache
// (pkg/websam_kernels_bg.wasm, the relaxed-SIMD kernel the package runs in Chromium), on one
// thread and on every core at once (one worker each), against the multiply-adds of a SAM ViT
// encode: the shortest encode this kernel allows, however well everything around it is done.
// Not part of the tests.
//   node bench/kernel_peak.mjs [--seconds 2]        (after ./build.sh build)
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { serve } from '../tools/serve.mjs';
import { launch } from '../tests/browser/browser.mjs';

const root = fileURLToPath(new URL('../', import.meta.url));
const { values: opts } = parseArgs({ options: { seconds: { type: 'string', default: '2' } } });

/** Multiply-adds of ImageEncoderViT on a 1024x1024 input (64x64 tokens): patch embedding, per
 * block qkv / proj / MLP, attention (windows of 14 over the grid padded to 70, or global), the
 * relative-position terms, and the neck. */
function vitMacs({ dim, depth, globals }) {
  const t = 64 * 64;
  const hd = 64;
  let macs = t * dim * 3 * 16 * 16; // patch embedding
  for (let i = 0; i < depth; i++) {
    const [tokens, n, side] = globals.includes(i) ? [t, t, 64] : [70 * 70, 14 * 14, 14];
    macs += tokens * dim * (3 * dim + dim + 2 * 4 * dim); // qkv, proj, MLP
    macs += 2 * tokens * n * dim; // q.k and attn.v over every head
    macs += 2 * tokens * side * dim; // rel_h, rel_w
  }
  macs += t * dim * 256 + t * 256 * 256 * 9; // neck
  return macs;
}
const VITS = {
  'ViT-B': { dim: 768, depth: 12, globals: [2, 5, 8, 11] },
  'ViT-L': { dim: 1024, depth: 24, globals: [5, 11, 17, 23] },
  'ViT-H': { dim: 1280, depth: 32, globals: [7, 15, 23, 31] },
};

// Runs in the page and in each worker: packed panels of one block (the GEMM's own block sizes,
// KC 256, MC 64, NC 512: A 64 KiB, B 512 KiB, in L2), `tiles` called until `seconds` passed.
const RUN = `async (bytes, seconds) => {
  const memory = new WebAssembly.Memory({ initial: 128 });
  const { instance: { exports } } = await WebAssembly.instantiate(bytes, { env: { memory } });
  const [kc, mc, nc] = [256, 64, 512];
  const base = 4 << 20;
  const f = new Float32Array(memory.buffer);
  for (let i = base / 4; i < base / 4 + kc * (mc + nc) + mc * nc; i++) f[i] = Math.random() - 0.5;
  const a = base, b = a + 4 * kc * mc, c = b + 4 * kc * nc;
  exports.tiles(kc, a, mc, b, nc, c, nc, 1);
  let calls = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    for (let i = 0; i < 8; i++) exports.tiles(kc, a, mc, b, nc, c, nc, 1);
    calls += 8;
  }
  const s = (performance.now() - t0) / 1000;
  return (2 * kc * mc * nc * calls) / s / 1e9;
}`;

const server = await serve({ '/': join(root, 'tests/browser'), '/pkg/': join(root, 'pkg') });
const browser = await launch();
const page = await browser.newPage();
await page.goto(`${server.url}/blank.html`);
const seconds = Number(opts.seconds);
const result = await page.evaluate(async ([run, seconds]) => {
  const bytes = await (await fetch('/pkg/websam_kernels_bg.wasm')).arrayBuffer();
  const relaxed = WebAssembly.validate(new Uint8Array(bytes));
  const one = await (0, eval)(run)(bytes, seconds);
  const cores = navigator.hardwareConcurrency;
  const src = `onmessage = async (e) => postMessage(await (${run})(e.data, ${seconds}));`;
  const url = URL.createObjectURL(new Blob([src], { type: 'text/javascript' }));
  const each = await Promise.all(Array.from({ length: cores }, () => new Promise((resolve, reject) => {
    const w = new Worker(url);
    w.onmessage = (e) => { resolve(e.data); w.terminate(); };
    w.onerror = (e) => reject(new Error(e.message));
    w.postMessage(bytes);
  })));
  return { relaxed, one, cores, each };
}, [RUN, seconds]);
await browser.close();
server.close();

const all = result.each.reduce((s, x) => s + x, 0);
console.log(`relaxed-SIMD kernel (f32x4.relaxed_madd, 4x8 tiles), operands in cache, Chromium:`);
console.log(`  1 thread: ${result.one.toFixed(1)} GFLOP/s; ${result.cores} threads at once: ${all.toFixed(1)} GFLOP/s (${result.each.map((x) => x.toFixed(1)).join(' + ')})`);
console.log(`\nthe shortest encode at that rate (every multiply-add in the kernel at its in-cache speed):`);
for (const [name, cfg] of Object.entries(VITS)) {
  const gflop = (2 * vitMacs(cfg)) / 1e9;
  console.log(`  ${name}: ${gflop.toFixed(0)} GFLOP; ${(gflop / result.one).toFixed(1)} s on 1 thread, ${(gflop / all).toFixed(1)} s on ${result.cores}`);
}
