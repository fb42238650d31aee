// Memory of loading (and optionally encoding with) a checkpoint in headless Chromium: the wasm
// module's linear memory and the most its heap has held, after Sam.load and after setImage,
// beside the file's size (the CPU model keeps its tensors as f32). Not in the tests (full-size
// checkpoints are not in the repository).
//
//   node bench/load_memory.mjs FILE...          (FILE under the repository, after ./build.sh build)
//   ENCODE=1 THREADS=2 node bench/load_memory.mjs bench/out/sam_vit_b_seeded_f16.safetensors
//   BACKEND=webgpu node bench/load_memory.mjs bench/out/sam_vit_b_seeded.pth   (SwiftShader here)
import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { relative, resolve } from 'node:path';
import { serve } from '../tools/serve.mjs';
import { launch, open } from '../tests/browser/browser.mjs';

const root = fileURLToPath(new URL('../', import.meta.url));
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node bench/load_memory.mjs FILE...');
  process.exit(2);
}
const encode = process.env.ENCODE === '1';
const threads = Number(process.env.THREADS ?? 1);
const backend = process.env.BACKEND ?? 'cpu';
const mb = (b) => `${(b / 1e6).toFixed(1)} MB`;

const server = await serve(root, { isolated: true });
const browser = await launch({ webgpu: backend === 'webgpu' });
try {
  for (const file of files) {
    const path = relative(root, resolve(file));
    const size = statSync(resolve(file)).size;
    const page = await open(browser, `${server.url}/tests/browser/blank.html`);
    page.setDefaultTimeout(0);
    const r = await page.evaluate(async ([url, encode, threads, backend]) => {
      const { apis, fixtureImage } = await import('/tests/browser/harness.js');
      const api = threads > 1 ? apis.SamWorker : apis.Sam;
      const t0 = performance.now();
      const sam = await api.load({ weights: url, backend, cache: false, threads });
      const out = { loadMs: performance.now() - t0, afterLoad: await sam.memoryStats() };
      if (encode) {
        const img = await fixtureImage();
        const t = performance.now();
        await sam.setImage(img);
        out.encodeMs = performance.now() - t;
        out.afterEncode = await sam.memoryStats();
      }
      sam.dispose();
      return out;
    }, [`/${path}`, encode, threads, backend]);
    await page.context().close();
    const a = r.afterLoad;
    console.log(`${path} (${mb(size)}), ${backend === 'cpu' ? `CPU path, ${threads} thread(s)` : 'WebGPU'}: load ${(r.loadMs / 1000).toFixed(1)} s, ` +
      `wasm memory ${mb(a.wasmMemoryBytes)} (${(a.wasmMemoryBytes / size).toFixed(2)}x the file), ` +
      `heap peak ${mb(a.heapPeakBytes)}, heap in use ${mb(a.heapInUseBytes)}, GPU buffers ${mb(a.gpuPoolBytes)}`);
    if (r.afterEncode) {
      const e = r.afterEncode;
      console.log(`  after setImage (${(r.encodeMs / 1000).toFixed(1)} s): wasm memory ${mb(e.wasmMemoryBytes)}, ` +
        `heap peak ${mb(e.heapPeakBytes)}, heap in use ${mb(e.heapInUseBytes)}`);
    }
  }
} finally {
  await browser.close();
  await server.close();
}
