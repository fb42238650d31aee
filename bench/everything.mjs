// "Segment everything" in headless Chromium through the package (pkg/), on the trained
// MobileSAM and a photograph: SamWorker on the CPU path with 1 and 2 threads, and Sam on WebGPU
// (SwiftShader here: a small grid only). Prints one JSON row per measurement: the grid, the
// records found, setImage and generate wall times (generate alone, the image already set).
//   node bench/everything.mjs [grids, default "32,16"] [webgpu grid, default 2; 0 skips]
import { fileURLToPath } from 'node:url';
import { serve } from '../tools/serve.mjs';
import { launch } from '../tests/browser/browser.mjs';

const root = fileURLToPath(new URL('../', import.meta.url));
const grids = (process.argv[2] ?? '32,16').split(',').map(Number);
const webgpuGrid = Number(process.argv[3] ?? 2);
const server = await serve(root, { isolated: true });
const browser = await launch();

async function measure(api, backend, threads, grid) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
  await page.goto(`${server.url}/tests/browser/blank.html`);
  try {
    return await page.evaluate(async ([a, b, t, n]) => {
      const { Sam } = await import('/pkg/websam.js');
      const { SamWorker } = await import('/pkg/worker.js');
      const sam = await (a === 'Sam' ? Sam : SamWorker).load({ weights: '/models/mobile_sam.pt', backend: b, threads: t, cache: false });
      const img = new Image();
      img.src = '/www/samples/chelsea.png';
      await img.decode();
      let t0 = performance.now();
      await sam.setImage(img);
      const setImageMs = performance.now() - t0;
      t0 = performance.now();
      const records = await sam.generate({ pointsPerSide: n });
      const generateMs = performance.now() - t0;
      const row = { api: a, backend: sam.backend, threads: sam.threads, adapter: sam.adapterName, grid: n, records: records.length, setImageMs, generateMs };
      sam.dispose();
      return row;
    }, [api, backend, threads, grid]);
  } finally {
    await context.close();
  }
}

try {
  for (const grid of grids) {
    for (const threads of [1, 2]) console.log(JSON.stringify(await measure('SamWorker', 'cpu', threads, grid)));
  }
  if (webgpuGrid > 0) console.log(JSON.stringify(await measure('Sam', 'webgpu', 1, webgpuGrid)));
} finally {
  await browser.close();
  await server.close();
}
