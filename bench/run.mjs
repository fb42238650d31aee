// The browser half of `./build.sh bench`: websam, onnxruntime-web and candle-transformers' SAM
// on the same weights, image and prompts in headless Chromium (cross-origin isolated, so that
// onnxruntime-web's threads and the memory measurement work), one system per browser context.
// Writes bench/out/results.json and the table between the bench markers of docs/PERFORMANCE.md.
//   node bench/run.mjs [system ...]   (default: all; needs pkg/, bench/out/*.onnx,
//   bench/node_modules, and for candle-wasm bench/out/candle-peer/ and
//   bench/out/mobile_sam_candle.safetensors). With BENCH_KEEP=1 the systems not named keep
//   their rows from the last run's bench/out/results.json.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { serve } from '../tools/serve.mjs';
import { launch } from '../tests/browser/browser.mjs';

const root = fileURLToPath(new URL('../', import.meta.url));
const ALL = ['websam-cpu', 'websam-cpu-mt', 'ort-wasm-1', 'ort-wasm-mt', 'candle-wasm', 'websam-webgpu', 'ort-webgpu'];
const systems = process.argv.slice(2).length ? process.argv.slice(2) : ALL;
const ortDist = join(root, 'bench/node_modules/onnxruntime-web/dist');

const server = await serve({
  '/': join(root, 'bench/page'), '/pkg/': join(root, 'pkg'), '/fixtures/': join(root, 'tests/fixtures'),
  '/onnx/': join(root, 'bench/out'), '/out/': join(root, 'bench/out'), '/ort/': ortDist,
}, { isolated: true });
const browser = await launch({ extraArgs: ['--enable-blink-features=ForceEagerMeasureMemory'] });

async function page(context) {
  const p = await context.newPage();
  p.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
  await p.goto(`${server.url}/`);
  return p;
}

const resultsPath = join(root, 'bench/out/results.json');
const rev = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
// BENCH_KEEP=1: the systems not run now keep their rows from the last results.json.
const kept = process.env.BENCH_KEEP && existsSync(resultsPath)
  ? JSON.parse(readFileSync(resultsPath, 'utf8')).results.filter((r) => !systems.includes(r.name))
  : [];
const measured = [];
let adapter = null;
try {
  for (const name of systems) {
    const context = await browser.newContext();
    const p = await page(context);
    adapter ??= await p.evaluate(async () => {
      const a = await navigator.gpu?.requestAdapter();
      return a ? { vendor: a.info.vendor, architecture: a.info.architecture, fallback: a.info.isFallbackAdapter ?? null } : null;
    });
    // A software WebGPU adapter (SwiftShader) takes minutes per encode: one run of each there.
    const slow = name.endsWith('webgpu') && (adapter?.architecture === 'swiftshader' || adapter?.fallback);
    const options = slow ? { encodeRuns: 1, decodeRuns: 1, hoverMs: 0 } : {};
    console.error(`${name}: measuring${slow ? ' (software WebGPU adapter: one run each)' : ''}`);
    // A bound per system (BENCH_LIMIT_S, default 600 s): a system that does not finish in it
    // gets a row saying so instead of holding the whole run.
    const limit = Number(process.env.BENCH_LIMIT_S ?? 600) * 1000;
    const started = Date.now();
    const within = (promise) => Promise.race([promise, new Promise((_, no) => {
      // unref: a pending bound must not keep Node alive after the last system finished.
      setTimeout(() => no(new Error(`did not finish in ${limit / 1000} s`)), limit - (Date.now() - started)).unref();
    })]);
    try {
      const r = await within(p.evaluate(([n, o]) => import('/bench.js').then((b) => b.measure(n, o)), [name, options]));
      const fresh = await page(context);
      r.firstMaskMs = await within(fresh.evaluate((n) => import('/bench.js').then((b) => b.firstMask(n)), name));
      console.error(JSON.stringify(r));
      measured.push({ ...r, rev });
    } catch (e) {
      console.error(`${name}: ${e.message}`);
      measured.push({ name, failed: e.message, rev });
    }
    await context.close();
  }
} finally {
  await browser.close();
  await server.close();
}

const version = browser.version();
const order = (r) => (ALL.includes(r.name) ? ALL.indexOf(r.name) : ALL.length);
const results = [...measured, ...kept].sort((a, b) => order(a) - order(b));
const done = results.filter((r) => !r.failed);
const by = Object.fromEntries(done.map((r) => [r.name, r]));
const fmt = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 1 : 0)} ms`);
const cell = (s) => `${fmt(s.median)} (${fmt(s.min)}-${fmt(s.max)}, ${s.runs})`;
const size = (f) => statSync(f).size;
const gz = (f) => gzipSync(readFileSync(f), { level: 9 }).length;
const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

const rows = results.map((r) => (r.failed ? `| ${r.name} | ${r.failed} | | | | | | | | |` : `| ${r.name} | ${r.info.trim()} | ${fmt(r.loadMs)} | ${cell(r.encode)} | ${cell(r.decode.point)} | ${cell(r.decode.box)} | ${cell(r.decode.points5)} | ${r.hover ? r.hover.toFixed(1) : '-'} | ${fmt(r.firstMaskMs)} | ${r.memory ? mb(r.memory) : '-'} |`));
const ratio = (a, b, f) => (by[a] && by[b] ? (f(by[a]) / f(by[b])).toFixed(2) : '-');
const pairs = [['websam-cpu', 'ort-wasm-1'], ['websam-cpu', 'candle-wasm'], ['websam-cpu', 'ort-wasm-mt'], ['websam-cpu-mt', 'ort-wasm-mt'], ['websam-webgpu', 'ort-webgpu']];
const ratioRows = pairs.filter(([a, b]) => by[a] && by[b]).map(([a, b]) => `| ${a} / ${b} | ${ratio(a, b, (r) => r.encode.median)} | ${ratio(a, b, (r) => r.decode.point.median)} | ${ratio(a, b, (r) => r.decode.box.median)} | ${ratio(a, b, (r) => r.decode.points5.median)} | ${ratio(a, b, (r) => r.firstMaskMs)} |`);

const cpu = cpus()[0]?.model ?? 'unknown CPU';
const wasm = join(root, 'pkg/websam_core_bg.wasm');
const ortWasm = join(ortDist, 'ort-wasm-simd-threaded.jsep.wasm');
const onnxBytes = size(join(root, 'bench/out/encoder.onnx')) + size(join(root, 'bench/out/decoder.onnx'));
// candle-transformers' SAM (bench/candle-peer): its wasm after wasm-bindgen, its f32 weights, and
// the version its lock file resolved.
const candleWasm = join(root, 'bench/out/candle-peer/candle_peer_bg.wasm');
const candleWeights = join(root, 'bench/out/mobile_sam_candle.safetensors');
const candleLock = join(root, 'bench/candle-peer/Cargo.lock');
const candleVersion = existsSync(candleLock)
  ? /name = "candle-transformers"\nversion = "([^"]+)"/.exec(readFileSync(candleLock, 'utf8'))?.[1] ?? '?' : '?';
const candleSizes = existsSync(candleWasm) && existsSync(candleWeights)
  ? `; candle-transformers wasm ${mb(size(candleWasm))} (${mb(gz(candleWasm))} gzipped) + weights ${mb(size(candleWeights))} (safetensors, f32)`
  : '';
const keptNote = kept.length ? ` Rows kept from an earlier run (BENCH_KEEP): ${kept.map((r) => `${r.name} (websam ${r.rev ?? '?'})`).join(', ')}.` : '';
const table = `<!-- bench:begin (written by ./build.sh bench; edits here are overwritten) -->
Machine: ${cpus().length} x ${cpu}; headless Chromium ${version} (Debian), WebGPU adapter: ${adapter ? `${adapter.vendor} ${adapter.architecture}` : 'none'}${adapter && (adapter.architecture === 'swiftshader' || adapter.fallback) ? ' (software, on the CPU: WebGPU rows prove the path, not GPU speed)' : ''}. websam ${rev}, onnxruntime-web ${JSON.parse(readFileSync(join(root, 'bench/node_modules/onnxruntime-web/package.json'))).version}, candle-transformers ${candleVersion}. Command: \`./build.sh bench\` (\`node bench/run.mjs\`). Same weights (the fixture MobileSAM; ONNX by segment_anything's SamOnnxModel export; f32 safetensors for candle), same 640x480 image, same prompts; every decode gives masks at 640x480 (candle upsamples its masks with nearest-neighbour, the others bilinearly). Cells: median (min-max, runs).${keptNote}

| system | runs on | load | encode (TinyViT, incl. preprocessing) | decode: 1 point, 3 masks | decode: box | decode: 5 points | hover decodes/s | page load to first mask (cached weights) | page memory |
|---|---|---|---|---|---|---|---|---|---|
${rows.join('\n')}

Ratios websam / peer (below 1: websam faster):

| pair | encode | decode 1 point | decode box | decode 5 points | first mask |
|---|---|---|---|---|---|
${ratioRows.join('\n')}

Download sizes: websam wasm ${mb(size(wasm))} (${mb(gz(wasm))} gzipped) + weights ${mb(size(join(root, 'tests/fixtures/mobile_sam.pth')))} (.pth, f16); onnxruntime-web wasm ${mb(size(ortWasm))} (${mb(gz(ortWasm))} gzipped) + ONNX models ${mb(onnxBytes)} (f32)${candleSizes}.
<!-- bench:end -->`;

writeFileSync(resultsPath, JSON.stringify({ version, adapter, results }, null, 1));
const perfPath = join(root, 'docs/PERFORMANCE.md');
const perf = readFileSync(perfPath, 'utf8');
const begin = perf.indexOf('<!-- bench:begin');
const end = perf.indexOf('<!-- bench:end -->');
writeFileSync(perfPath, begin >= 0 && end > begin
  ? perf.slice(0, begin) + table + perf.slice(end + '<!-- bench:end -->'.length)
  : `${perf.trimEnd()}\n\n## Side by side in headless Chromium\n\n${table}\n`);
console.log(table);
