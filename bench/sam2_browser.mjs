// SAM 2.1 in headless Chromium on the CPU: websam (Sam on 1 thread, SamWorker on the machine's
// threads) on the official-format checkpoint beside onnxruntime-web's wasm backend (1 thread and
// the machine's) on the ONNX exports of the same weights (bench/sam2_export_onnx.py: the image
// encoder with the high-resolution features, and the prompt encoder and mask decoder), the same
// photograph (chelsea, 451x300). Prints each system's encode time and one click's decode time
// (three candidates), medians of RUNS after a warm-up, the ratios websam / onnxruntime-web, and
// how far each image_embed and mask is from websam's. Not in the tests.
//
// What is timed: websam's `setImage` (its own resize and normalisation, as the reference's, and
// the encoder) and `predict` (mask at the image size, thresholded); onnxruntime-web's canvas
// resize to 1024x1024, normalisation and `encoder.run`, and `decoder.run` plus picking and
// thresholding the best mask (bench/page/bench.js, `sam2Only`).
//
//   target/bench-venv/bin/python bench/sam2_native.py          (makes the seeded checkpoint; or)
//   target/bench-venv/bin/python bench/sam2_export_onnx.py     (makes it too if missing)
//   node bench/sam2_browser.mjs [t|s|b+|l]   (RUNS=3; needs pkg/ and bench/node_modules)
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { serve } from '../tools/serve.mjs';
import { launch } from '../tests/browser/browser.mjs';

const NAMES = { t: 'tiny', s: 'small', 'b+': 'base_plus', l: 'large' };
const root = fileURLToPath(new URL('../', import.meta.url));
const config = process.argv[2] ?? 't';
const name = NAMES[config];
if (!name) throw new Error(`unknown configuration ${config}: one of ${Object.keys(NAMES).join(', ')}`);
const runs = Number(process.env.RUNS ?? 3);
const systems = (process.env.SYSTEMS ?? 'websam-cpu,ort-wasm-1,websam-cpu-mt,ort-wasm-mt').split(',');
const ckpt = `sam2.1_hiera_${name}_seed0.pt`;
for (const [file, how] of [
  [join(root, 'target/sam2-bench', ckpt), 'bench/sam2_native.py'],
  [join(root, `bench/out/sam2_${name}_encoder.onnx`), 'bench/sam2_export_onnx.py'],
]) {
  if (!existsSync(file)) throw new Error(`no ${file}: make it with ${how}`);
}
const decoder = existsSync(join(root, `bench/out/sam2_${name}_decoder.onnx`)) ? `/onnx/sam2_${name}_decoder.onnx` : null;
const server = await serve({
  '/': join(root, 'bench/page'), '/pkg/': join(root, 'pkg'), '/fixtures/': join(root, 'tests/fixtures'),
  '/onnx/': join(root, 'bench/out'), '/sam2/': join(root, 'target/sam2-bench'),
  '/samples/': join(root, 'www/samples'), '/ort/': join(root, 'bench/node_modules/onnxruntime-web/dist'),
}, { isolated: true });
const browser = await launch({ webgpu: false });
const options = {
  weights: `/sam2/${ckpt}`, encoder: `/onnx/sam2_${name}_encoder.onnx`, decoder,
  image: '/samples/chelsea.png', prompt: { points: [[250, 170, 1]], multimask: true }, runs,
};
const results = {};
const s = (ms) => (ms / 1000).toFixed(2);
try {
  for (const sys of systems) {
    const context = await browser.newContext();
    const p = await context.newPage();
    p.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
    p.setDefaultTimeout(0);
    await p.goto(`${server.url}/`);
    const r = await p.evaluate(([n, o]) => import('/bench.js').then((b) => b.sam2Only(n, o)), [sys, options]);
    results[sys] = r;
    const e = r.encode;
    const d = r.decode;
    console.log(`${sys} (${r.info}): load ${s(r.loadMs)} s, SAM 2.1 ${name} encode median ${s(e.median)} s ` +
      `(min ${s(e.min)}, max ${s(e.max)}, n=${e.runs})` +
      (d ? `, click decode median ${d.median.toFixed(1)} ms (min ${d.min.toFixed(1)}, max ${d.max.toFixed(1)})` : ', no decoder'));
    await context.close();
  }
} finally {
  await browser.close();
  await server.close();
}
const ref = results['websam-cpu'] ?? Object.values(results)[0];
const peak = ref.sample.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
for (const [sys, r] of Object.entries(results)) {
  const d = r.sample.reduce((m, v, i) => Math.max(m, Math.abs(v - ref.sample[i])), 0);
  let line = `${sys}: image_embed within ${d.toExponential(2)} of ${ref.name}'s (every 97th value; its largest ` +
    `magnitude ${peak.toFixed(3)})`;
  if (r.mask && ref.mask) {
    const same = r.mask.pixels.reduce((n, v, i) => n + (v === ref.mask.pixels[i] ? 1 : 0), 0) / r.mask.pixels.length;
    line += `; best mask ${r.mask.best} of IoUs [${r.mask.iou.map((v) => v.toFixed(3)).join(', ')}], ` +
      `${r.mask.ones} pixels, ${(100 * same).toFixed(2)}% of every 7th pixel as ${ref.name}'s`;
  }
  console.log(line);
}
const ratio = (a, b, k) => (results[a]?.[k] && results[b]?.[k] ? (results[a][k].median / results[b][k].median).toFixed(2) : '-');
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model}; timed: websam setImage / predict, onnxruntime-web ` +
  'canvas resize + normalise + encoder.run / decoder.run + best mask thresholded');
for (const k of ['encode', 'decode']) {
  console.log(`${k}: websam / onnxruntime-web: 1 thread ${ratio('websam-cpu', 'ort-wasm-1', k)}, ` +
    `all threads ${ratio('websam-cpu-mt', 'ort-wasm-mt', k)}; second thread: websam ` +
    `${ratio('websam-cpu', 'websam-cpu-mt', k)}x, onnxruntime-web ${ratio('ort-wasm-1', 'ort-wasm-mt', k)}x`);
}
