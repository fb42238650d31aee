// SAM's ViT encoder in headless Chromium, through the package's public API: the checkpoint of
// tests/fixtures/vit/ (ViT-B's structure, two blocks; weights generated from its manifest by
// `cargo run --example fixture_checkpoint -- vit`, run here when target/fixtures/ lacks it) encodes the
// 640x480 fixture on WebGPU and on the CPU path, against the PyTorch goldens.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { serve } from '../../tools/serve.mjs';
import { launch, runInPage } from './browser.mjs';

const root = fileURLToPath(new URL('../../', import.meta.url));
const HARNESS = '/tests/browser/vit-harness.js';
let server;
let isolated;
let browser;

before(async () => {
  const checkpoint = `${root}target/fixtures/vit_b2.safetensors`;
  if (!existsSync(checkpoint)) {
    execFileSync('cargo', ['run', '-q', '--example', 'fixture_checkpoint', '--', 'vit', checkpoint], { cwd: root, stdio: 'inherit' });
  }
  server = await serve(root);
  isolated = await serve(root, { isolated: true });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.close();
  await isolated?.close();
});

const mb = (b) => `${(b / 1e6).toFixed(1)} MB`;

function check(r, label, tolerance) {
  console.log(`${label}: load ${r.loadMs.toFixed(0)} ms, setImage ${r.setImageMs.toFixed(0)} ms; embedding within ` +
    `${r.embedding.toExponential(2)}; wasm memory ${mb(r.afterLoad.wasmMemoryBytes)} after load, ` +
    `${mb(r.afterEncode.wasmMemoryBytes)} after the encode; GPU pool ${mb(r.afterEncode.gpuPoolBytes)}`);
  assert.ok(r.embedding <= tolerance, `${label}: embedding differs by ${r.embedding}`);
  // The encode's progress, block by block.
  assert.deepEqual(r.progress, [[1, 2], [2, 2]], `${label}: progress`);
  for (const [name, c] of Object.entries(r.cases)) {
    console.log(`  ${name}: low-res logits within ${c.logits.toExponential(2)}, IoU ${c.iou.toExponential(2)}, ${c.differ} mask pixels off the band`);
    assert.ok(c.logits <= 1e-3 && c.iou <= 1e-3, `${label} ${name}: logits ${c.logits}, IoU ${c.iou}`);
    assert.equal(c.differ, 0, `${label} ${name}: mask pixels differ`);
  }
}

// The encode takes about 3.5 minutes on SwiftShader (the same kernels run natively in
// tests/vit.rs on lavapipe in 40 s): out of the test command unless WEBSAM_SLOW_TESTS=1.
const SLOW = process.env.WEBSAM_SLOW_TESTS === '1';

describe('SAM ViT encoder', () => {
  test('Sam on WebGPU: embedding within 2e-3 of PyTorch, the masks as the reference', {
    skip: SLOW ? false : 'about 3.5 minutes on SwiftShader: WEBSAM_SLOW_TESTS=1 runs it',
  }, async () => {
    const r = await runInPage(browser, server.url, HARNESS, 'vitParity', ['Sam', 'webgpu']);
    assert.equal(r.backend, 'webgpu');
    check(r, 'Sam webgpu', 2e-3);
  });

  test('SamWorker on the CPU path (2 threads): embedding within 1e-4 of PyTorch, the masks as the reference', async () => {
    const r = await runInPage(browser, isolated.url, HARNESS, 'vitParity', ['SamWorker', 'cpu', 2]);
    assert.equal(r.backend, 'cpu');
    assert.equal(r.threads, 2);
    check(r, 'SamWorker cpu, 2 threads', 1e-4);
  });
});
