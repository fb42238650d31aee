// Where the CPU path's time goes in the browser: a sampling profile (Chromium's DevTools
// profiler) of `Sam.setImage` and `Sam.predict` on one thread, by wasm function, from a build of
// the package that keeps its function names (wasm-opt -O2 -g, the package's level). Not part of the tests.
//   node bench/profile.mjs [--runs 2] [--top 25] [--wasm PATH] [--weights FILE]   (after ./build.sh build, whose
//   pkg/ gives the threaded glue websam.js imports; --wasm: another cargo-built websam.wasm, e.g.
//   a copy from before a change; --weights: another checkpoint, e.g. bench/out's seeded ViT-B; writes
//   target/profile-pkg/ and bench/out/profile.json)
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { serve } from '../tools/serve.mjs';
import { launch } from '../tests/browser/browser.mjs';

const root = fileURLToPath(new URL('../', import.meta.url));
const { values: opts } = parseArgs({
  options: { runs: { type: 'string', default: '2' }, top: { type: 'string', default: '25' }, wasm: { type: 'string' }, weights: { type: 'string' } },
});
const runs = Number(opts.runs);
const top = Number(opts.top);

// The package with names: wasm-bindgen keeps the name section, wasm-opt keeps it with -g.
const pkg = join(root, 'target/profile-pkg');
rmSync(pkg, { recursive: true, force: true });
mkdirSync(pkg, { recursive: true });
const raw = opts.wasm ?? join(root, 'target/wasm32-unknown-unknown/release/websam.wasm');
execFileSync('wasm-bindgen', ['--target', 'web', '--experimental-reset-state-function', '--out-dir', pkg, '--out-name', 'websam_core', raw], { stdio: 'inherit' });
execFileSync(join(root, 'node_modules/.bin/wasm-opt'), ['-O2', '-g', join(pkg, 'websam_core_bg.wasm'), '-o', join(pkg, 'websam_core_bg.wasm')], { stdio: 'inherit' });
for (const f of ['websam.js', 'worker.js', 'worker-entry.js', 'internal.js', 'thread-entry.js']) cpSync(join(root, 'js', f), join(pkg, f));
// websam.js imports the threaded glue statically; the one-thread profile never instantiates it.
cpSync(join(root, 'pkg/websam_core_mt.js'), join(pkg, 'websam_core_mt.js'));
// The relaxed-SIMD kernels module, which the package runs where the browser has relaxed SIMD.
cpSync(join(root, 'pkg/websam_kernels_bg.wasm'), join(pkg, 'websam_kernels_bg.wasm'));

const weightsDir = opts.weights ? dirname(resolve(opts.weights)) : join(root, 'tests/fixtures');
const weights = `/weights/${opts.weights ? basename(opts.weights) : 'mobile_sam.pth'}`;
const server = await serve({
  '/': join(root, 'tests/browser'), '/pkg/': pkg, '/fixtures/': join(root, 'tests/fixtures'), '/weights/': weightsDir,
});
const browser = await launch();
const page = await browser.newPage();
await page.goto(`${server.url}/blank.html`);
const cdp = await page.context().newCDPSession(page);
await cdp.send('Profiler.enable');
await cdp.send('Profiler.setSamplingInterval', { interval: 200 });

const encoder = opts.weights ? basename(opts.weights) : 'TinyViT';
const relaxed = await page.evaluate(async (weights) => {
  const { Sam } = await import('/pkg/websam.js');
  const blob = await (await fetch('/fixtures/image.png')).blob();
  globalThis.image = await createImageBitmap(blob);
  globalThis.sam = await Sam.load({ weights, backend: 'cpu', cache: false });
  await globalThis.sam.setImage(globalThis.image); // warm-up
  await globalThis.sam.predict({ points: [[320, 240, 1]] });
  return globalThis.sam.relaxedSimd;
}, weights);
console.log(`relaxed-SIMD kernels: ${relaxed}`);

/** Profiles `runs` calls of `call` (an expression evaluated in the page); self time by function. */
async function profile(what, call) {
  await cdp.send('Profiler.start');
  const ms = await page.evaluate(async ([call, runs]) => {
    const t = performance.now();
    for (let i = 0; i < runs; i++) await (0, eval)(call);
    return (performance.now() - t) / runs;
  }, [call, runs]);
  const { profile: p } = await cdp.send('Profiler.stop');
  const dt = new Map();
  // Sample durations: timeDeltas[i] is the time before sample i.
  p.samples.forEach((id, i) => dt.set(id, (dt.get(id) ?? 0) + (p.timeDeltas[i + 1] ?? 0)));
  const byName = new Map();
  let total = 0;
  for (const node of p.nodes) {
    const t = (dt.get(node.id) ?? 0) / 1000 / runs;
    const name = node.callFrame.functionName || `(${node.callFrame.url ? 'anonymous' : 'program'})`;
    byName.set(name, (byName.get(name) ?? 0) + t);
    total += t;
  }
  const rows = [...byName].sort((a, b) => b[1] - a[1]);
  console.log(`\n${what}: ${ms.toFixed(1)} ms per call (${runs} calls profiled); self time by function, ms per call:`);
  for (const [name, t] of rows.slice(0, top)) {
    console.log(`${t.toFixed(1).padStart(9)}  ${(100 * t / total).toFixed(1).padStart(5)}%  ${name.slice(0, 110)}`);
  }
  return { what, ms, rows: rows.map(([name, t]) => ({ name, ms: t })) };
}

const results = [
  await profile(`setImage (${encoder}, 1 thread)`, 'globalThis.sam.setImage(globalThis.image)'),
  await profile('predict (1 point, 3 masks at 640x480, 1 thread)', 'globalThis.sam.predict({ points: [[320, 240, 1]] })'),
];
mkdirSync(join(root, 'bench/out'), { recursive: true });
writeFileSync(join(root, 'bench/out/profile.json'), JSON.stringify(results, null, 1));
await browser.close();
server.close();
