// SAM's ViT encoder in headless Chromium on the CPU: websam (Sam on 1 thread, SamWorker on the
// machine's threads) beside onnxruntime-web's wasm backend (1 thread and the machine's) on the
// official image encoder's ONNX export of the same weights, the same photograph. Prints each
// system's encode time (median of RUNS after a warm-up), the ratios websam / onnxruntime-web,
// and how far each embedding is from websam's. Not in the tests.
//
//   ./build.sh bench-vit b             (the seeded weights, natively; then)
//   python bench/export_onnx.py bench/out --vit bench/out/sam_vit_b_seeded.safetensors
//   node bench/vit_browser.mjs [b|l|h]  (RUNS=3; needs pkg/ and bench/node_modules)
import { join } from 'node:path';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { serve } from '../tools/serve.mjs';
import { launch } from '../tests/browser/browser.mjs';

const root = fileURLToPath(new URL('../', import.meta.url));
const variant = process.argv[2] ?? 'b';
const runs = Number(process.env.RUNS ?? 3);
const systems = ['websam-cpu', 'ort-wasm-1', 'websam-cpu-mt', 'ort-wasm-mt'];
const server = await serve({
  '/': join(root, 'bench/page'), '/pkg/': join(root, 'pkg'), '/fixtures/': join(root, 'tests/fixtures'),
  '/onnx/': join(root, 'bench/out'), '/out/': join(root, 'bench/out'),
  '/ort/': join(root, 'bench/node_modules/onnxruntime-web/dist'),
}, { isolated: true });
const browser = await launch({ webgpu: false });
const results = {};
try {
  for (const name of systems) {
    const context = await browser.newContext();
    const p = await context.newPage();
    p.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
    p.setDefaultTimeout(0);
    await p.goto(`${server.url}/`);
    const options = { weights: `/out/sam_vit_${variant}_seeded.safetensors`, encoder: `/onnx/vit_${variant}_encoder.onnx`, runs };
    const r = await p.evaluate(([n, o]) => import('/bench.js').then((b) => b.encodeOnly(n, o)), [name, options]);
    results[name] = r;
    const s = r.encode;
    console.log(`${name} (${r.info}): load ${(r.loadMs / 1000).toFixed(1)} s, ViT-${variant.toUpperCase()} encode median ` +
      `${(s.median / 1000).toFixed(2)} s (min ${(s.min / 1000).toFixed(2)}, max ${(s.max / 1000).toFixed(2)}, n=${s.runs})`);
    await context.close();
  }
} finally {
  await browser.close();
  await server.close();
}
const ref = results['websam-cpu'].sample;
for (const [name, r] of Object.entries(results)) {
  const d = r.sample.reduce((m, v, i) => Math.max(m, Math.abs(v - ref[i])), 0);
  console.log(`${name}: embedding within ${d.toExponential(2)} of websam-cpu's (every 97th value)`);
}
const ratio = (a, b) => (results[a].encode.median / results[b].encode.median).toFixed(2);
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model}; websam / onnxruntime-web: 1 thread ${ratio('websam-cpu', 'ort-wasm-1')}, ` +
  `all threads ${ratio('websam-cpu-mt', 'ort-wasm-mt')}; second thread: websam ${ratio('websam-cpu', 'websam-cpu-mt')}x, ` +
  `onnxruntime-web ${ratio('ort-wasm-1', 'ort-wasm-mt')}x`);
