// The long-session soak (not in the tests; a short version is in
// tests/browser/reliability.test.mjs): one SamWorker on the CPU path in headless Chromium takes
// PREDICTS predicts (every fifth followed by a refinement with its mask's logits) and SETS
// setImage / setEmbedding calls across 10 images, memory sampled as it goes; then Sam on WebGPU
// (SwiftShader here) with fewer calls, sampling the GPU buffer pool. Writes the samples to
// bench/out/soak.json and a plot to docs/soak.svg, and prints a summary.
//
// Then OVERLAP (1000) overlapping calls on Sam and on SamWorker, each answer checked.
//
//   node bench/soak.mjs            (after ./build.sh build; PREDICTS=10000 SETS=200 by default)
//   PREDICTS=1000 SETS=20 GPU_PREDICTS=40 OVERLAP=200 node bench/soak.mjs
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { serve } from '../tools/serve.mjs';
import { launch, open } from '../tests/browser/browser.mjs';

const root = fileURLToPath(new URL('../', import.meta.url));
const env = (name, fallback) => Number(process.env[name] ?? fallback);
const runs = [
  {
    name: 'SamWorker, CPU (2 threads), setImage and setEmbedding alternating',
    api: 'SamWorker',
    options: { backend: 'cpu', predicts: env('PREDICTS', 10000), sets: env('SETS', 200), images: true, samples: 50 },
  },
  {
    name: 'Sam, WebGPU (SwiftShader), setEmbedding',
    api: 'Sam',
    options: { backend: 'webgpu', predicts: env('GPU_PREDICTS', 100), sets: env('GPU_SETS', 20), samples: 10 },
  },
];

const server = await serve(root, { isolated: true });
const browser = await launch();
const results = [];
try {
  for (const run of runs) {
    if (run.options.predicts <= 0) continue;
    const page = await open(browser, `${server.url}/tests/browser/blank.html`);
    const t = Date.now();
    page.setDefaultTimeout(0);
    const r = await page.evaluate(async ([api, options]) => {
      const harness = await import('/tests/browser/reliability-harness.js');
      return harness.soak(api, options);
    }, [run.api, run.options]);
    await page.context().close();
    results.push({ ...run, ...r, minutes: (Date.now() - t) / 60000 });
    const s = r.samples;
    const warm = s[Math.floor(s.length / 10)];
    const last = s.at(-1);
    const mb = (b) => (b / 1e6).toFixed(1);
    console.log(`${run.name}: ${last.predicts} predicts, ${last.sets} sets, ${((Date.now() - t) / 60000).toFixed(1)} min`);
    console.log(`  wasm memory ${mb(warm.wasmMemoryBytes)} MB after ${warm.predicts} predicts, ${mb(last.wasmMemoryBytes)} MB at the end`);
    const heap = s.map((x) => x.heapInUseBytes).slice(s.indexOf(warm));
    console.log(`  heap in use ${(warm.heapInUseBytes / 1e6).toFixed(3)} MB after ${warm.predicts} predicts, ` +
      `${(Math.min(...heap) / 1e6).toFixed(3)} to ${(Math.max(...heap) / 1e6).toFixed(3)} MB from there to the end`);
    console.log(`  GPU pool ${mb(warm.gpuPoolBytes)} MB after warm-up, ${mb(last.gpuPoolBytes)} MB at the end`);
    const ua = s.filter((x) => x.uaBytes !== null);
    if (ua.length) console.log(`  page and workers (measureUserAgentSpecificMemory) ${ua.map((x) => `${mb(x.uaBytes)}@${x.predicts}`).join(', ')} MB`);
  }
} finally {
  await browser.close();
  await server.close();
}

// The concurrency check at full size: OVERLAP overlapping calls (predicts with setEmbedding and
// setImage interleaved at random), each answer checked against its input's reference.
const overlap = env('OVERLAP', 1000);
const overlapping = [];
if (overlap > 0) {
  const browser2 = await launch();
  const server2 = await serve(root);
  try {
    for (const api of ['Sam', 'SamWorker']) {
      const page = await open(browser2, `${server2.url}/tests/browser/blank.html`);
      page.setDefaultTimeout(0);
      const t = Date.now();
      const r = await page.evaluate(async ([a, calls]) => {
        const harness = await import('/tests/browser/reliability-harness.js');
        return harness.overlapping(a, { calls, inputs: 8, images: 2, seed: 11 });
      }, [api, overlap]);
      await page.context().close();
      overlapping.push({ api, ...r, minutes: (Date.now() - t) / 60000 });
      console.log(`${api}: ${overlap} overlapping calls, ${r.predicts} predicts answered ${r.results}, rejected ${r.rejected.length}, ` +
        `worst difference from the input's reference ${r.worst} (inputs at least ${r.closest.toFixed(2)} apart), ${((Date.now() - t) / 60000).toFixed(1)} min`);
    }
  } finally {
    await browser2.close();
    await server2.close();
  }
}

mkdirSync(new URL('out/', import.meta.url), { recursive: true });
writeFileSync(new URL('out/overlapping.json', import.meta.url), JSON.stringify(overlapping, null, 1));
writeFileSync(new URL('out/soak.json', import.meta.url), JSON.stringify(results, null, 1));

// The plot: memory (MB) against predicts, one panel per run.
const W = 720;
const H = 220;
const pad = 48;
const colors = { wasmMemoryBytes: '#1f77b4', heapInUseBytes: '#9467bd', gpuPoolBytes: '#d62728', uaBytes: '#2ca02c' };
const labels = { wasmMemoryBytes: 'wasm memory', heapInUseBytes: 'heap in use', gpuPoolBytes: 'GPU pool', uaBytes: 'page + workers (UA measure)' };
let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H * results.length}" font-family="sans-serif" font-size="11">`;
results.forEach((r, i) => {
  const y0 = i * H;
  const s = r.samples;
  const maxX = s.at(-1).predicts;
  const keys = Object.keys(colors).filter((k) => s.some((x) => x[k]));
  const maxY = Math.max(1, ...s.flatMap((x) => keys.map((k) => (x[k] ?? 0) / 1e6))) * 1.1;
  const px = (v) => pad + (v / maxX) * (W - 2 * pad);
  const py = (v) => y0 + H - pad + 10 - (v / maxY) * (H - 2 * pad);
  svg += `<text x="${pad}" y="${y0 + 16}" font-weight="bold">${r.name}</text>`;
  svg += `<line x1="${pad}" y1="${py(0)}" x2="${W - pad}" y2="${py(0)}" stroke="#888"/><line x1="${pad}" y1="${py(0)}" x2="${pad}" y2="${py(maxY)}" stroke="#888"/>`;
  svg += `<text x="${W - pad}" y="${py(0) + 14}" text-anchor="end">${maxX} predicts</text><text x="4" y="${py(maxY) + 4}">${maxY.toFixed(0)} MB</text><text x="4" y="${py(0)}">0</text>`;
  keys.forEach((k, j) => {
    const pts = s.filter((x) => x[k]).map((x) => `${px(x.predicts).toFixed(1)},${py(x[k] / 1e6).toFixed(1)}`).join(' ');
    svg += `<polyline fill="none" stroke="${colors[k]}" stroke-width="1.5" points="${pts}"/>`;
    svg += `<text x="${W - pad - 160}" y="${y0 + 30 + 14 * j}" fill="${colors[k]}">${labels[k]}</text>`;
  });
});
svg += '</svg>\n';
writeFileSync(new URL('../docs/soak.svg', import.meta.url), svg);
console.log('wrote bench/out/soak.json and docs/soak.svg');
