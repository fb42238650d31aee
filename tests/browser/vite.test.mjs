// The packed npm tarball installed into a fresh Vite 7 project, built, served by `vite preview`
// and run in headless Chromium: `import { Sam } from 'websam'` and `import { SamWorker } from
// 'websam/worker'` both give the golden mask with the bundler's own handling of the wasm and
// worker URLs and no configuration; then the same app on `vite` (dev server) with the one line
// of configuration docs/API.md gives.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch, open } from './browser.mjs';
import { npy } from '../support/fixtures.mjs';

const root = fileURLToPath(new URL('../../', import.meta.url));
const fixtures = join(root, 'tests/fixtures');
const rootPackage = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));

const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });

/** Starts `vite <args>` on a free port; resolves to its URL and the process. */
function vite(app, args) {
  const child = spawn(join(app, 'node_modules/.bin/vite'), [...args, '--host', '127.0.0.1', '--port', '0'], { cwd: app });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`vite ${args[0] ?? 'dev'} did not start: ${out}`)), 30000);
    child.stdout.on('data', (d) => {
      out += d;
      // eslint-disable-next-line no-control-regex
      const m = out.replace(/\x1b\[[0-9;]*m/g, '').match(/http:\/\/127\.0\.0\.1:\d+\//);
      if (m) {
        clearTimeout(timer);
        resolve({ url: m[0], child });
      }
    });
    child.on('exit', (code) => reject(new Error(`vite ${args[0] ?? 'dev'} exited with ${code}: ${out}`)));
  });
}

async function appResult(browser, url) {
  const page = await open(browser, url);
  try {
    return await page.evaluate(() => window.result);
  } finally {
    await page.context().close();
  }
}

function check(how, result) {
  const want = npy('case_predictor_box_low_res_logits.npy').data;
  const wantOnes = npy('case_predictor_box_logits.npy').data.reduce((n, v) => n + (v > 0 ? 1 : 0), 0);
  for (const [api, r] of Object.entries(result)) {
    // Backend auto: WebGPU on a hardware adapter, else the CPU (SwiftShader here): both give
    // the golden; what it chose is printed.
    assert.ok(['webgpu', 'cpu'].includes(r.backend), `${how}, ${api}: backend ${r.backend}`);
    assert.equal(r.width, 640);
    assert.equal(r.height, 480);
    // Chromium has relaxed SIMD: the app's bundle carries the kernels module and loads it.
    assert.equal(r.relaxedSimd, true, `${how}, ${api}: the relaxed-SIMD kernels did not load`);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(r.lowResLogits[i] - want[i]));
    assert.ok(worst <= 1e-3, `${how}, ${api}: low-res logits differ by ${worst}`);
    assert.ok(Math.abs(r.ones - wantOnes) <= wantOnes * 1e-3, `${how}, ${api}: ${r.ones} mask pixels, PyTorch ${wantOnes}`);
    console.log(`${how}, ${api} (${r.backend}): low-res logits within ${worst.toExponential(2)}, mask of ${r.ones} pixels (PyTorch ${wantOnes})`);
  }
}

test('the packed tarball works in a fresh Vite 7 app (build + preview, and dev)', async () => {
  const work = mkdtempSync(join(tmpdir(), 'websam-vite-'));
  let server;
  let browser;
  try {
    const tarball = run('npm', ['pack', join(root, 'pkg'), '--pack-destination', work, '--silent'], root).trim().split('\n').at(-1);
    const app = join(work, 'app');
    cpSync(new URL('./vite-app/', import.meta.url), app, { recursive: true });
    mkdirSync(join(app, 'public'));
    for (const f of ['sam_decoder.safetensors', 'embedding.npy']) cpSync(join(fixtures, f), join(app, 'public', f));
    writeFileSync(join(app, 'package.json'), JSON.stringify({
      name: 'websam-vite-app',
      private: true,
      type: 'module',
      dependencies: { websam: `file:../${tarball}` },
      devDependencies: { vite: rootPackage.devDependencies.vite },
    }, null, 2));
    run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'], app);
    run(join(app, 'node_modules/.bin/vite'), ['build', '--logLevel', 'warn'], app);
    const assets = readdirSync(join(app, 'dist/assets'));
    assert.ok(assets.some((f) => f.endsWith('.wasm')), `the wasm is an asset of the build: ${assets}`);
    server = await vite(app, ['preview']);
    browser = await launch();
    check('vite build + preview', await appResult(browser, server.url));
    server.child.kill();
    // The dev server, configured as docs/API.md says: websam kept out of dependency pre-bundling.
    writeFileSync(join(app, 'vite.config.js'), "export default { optimizeDeps: { exclude: ['websam'] } };\n");
    server = await vite(app, []);
    check('vite dev', await appResult(browser, server.url));
  } finally {
    await browser?.close();
    server?.child.kill();
    rmSync(work, { recursive: true, force: true });
  }
});
