// The npm package (pkg/) in headless Chromium with the trained MobileSAM checkpoint on real
// photographs, against the official code (tests/fixtures/real, tools/golden/make_real.py), on
// both backends. The tolerances of the native tests (tests/real.rs): low-res logits and IoU within
// 2e-4 of the reference from its embedding, the embedding within 1e-3, no mask pixel different
// where the reference's logit is 0.01 (from its embedding) or 0.05 (from ours) or more from 0, the
// reference's best candidate.
// WebGPU here is SwiftShader (seconds per decode, no shader-f16): it decodes one case per photo
// from the reference's embedding; the CPU path runs everything, the encoder included.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { serve } from '../../tools/serve.mjs';
import { launch, runInPage } from './browser.mjs';

const root = fileURLToPath(new URL('../../', import.meta.url));
let server;
let browser;

before(async () => {
  assert.ok(existsSync(new URL('../../models/mobile_sam.pt', import.meta.url)),
    'models/mobile_sam.pt is missing: `./build.sh setup` fetches the trained checkpoint');
  server = await serve(root, { isolated: true });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.close();
});

const inPage = (fn, args) => runInPage(browser, server.url, '/tests/browser/real-harness.js', fn, args);

const TOLERANCE = 2e-4;
const EMBEDDING_TOLERANCE = 1e-3;

function check(where, cases, { exactLowRes = true } = {}) {
  for (const [name, c] of Object.entries(cases)) {
    const what = `${where} ${name}`;
    if (exactLowRes) {
      assert.ok(c.logits <= TOLERANCE, `${what}: low-res logits differ by ${c.logits}`);
      assert.ok(c.iou <= TOLERANCE, `${what}: IoU differs by ${c.iou}`);
    }
    assert.ok(c.shapes, `${what}: masks not at the photograph's size`);
    assert.equal(c.best, c.referenceBest, `${what}: best candidate`);
    assert.equal(c.mask.outside, 0, `${what}: ${c.mask.outside} pixels differ outside the band`);
  }
}

function report(label, r) {
  for (const [photo, p] of Object.entries(r.photos)) {
    const all = [...Object.values(p.fromEmbedding), ...Object.values(p.fromImage ?? {})];
    const worst = Math.max(...Object.values(p.fromEmbedding).map((c) => c.logits));
    const iou = Math.min(...all.map((c) => c.mask.iou));
    const ms = Object.values(p.fromEmbedding).map((c) => c.ms.toFixed(0)).join('/');
    console.log(`${label} ${photo}: ${p.setImageMs ? `setImage ${p.setImageMs.toFixed(0)} ms, embedding within ${p.embedding.toExponential(2)}, ` : ''}` +
      `predict ${ms} ms; from the reference's embedding low-res logits within ${worst.toExponential(2)}; lowest mask IoU ${iou.toFixed(5)}`);
  }
}

test('CPU (SamWorker, threads): every case from the reference embedding and from the photograph', async () => {
  const r = await inPage('realParity', ['SamWorker', 'cpu', { encode: true }]);
  assert.equal(r.backend, 'cpu');
  assert.deepEqual(Object.keys(r.photos).sort(), ['astronaut', 'chelsea', 'coffee']);
  for (const [photo, p] of Object.entries(r.photos)) {
    check(`${photo} from the embedding`, p.fromEmbedding);
    assert.ok(p.embedding <= EMBEDDING_TOLERANCE, `${photo}: embedding differs by ${p.embedding}`);
    // From our own embedding the low-res logits carry the encoder's difference too: masks only.
    check(`${photo} from the photograph`, p.fromImage, { exactLowRes: false });
  }
  report('SamWorker cpu', r);
});

test('WebGPU (Sam): one click per photograph from the reference embedding', async () => {
  const r = await inPage('realParity', ['Sam', 'webgpu', { encode: false, names: ['point_multimask'] }]);
  assert.equal(r.backend, 'webgpu');
  for (const [photo, p] of Object.entries(r.photos)) {
    assert.equal(Object.keys(p.fromEmbedding).length, 1);
    check(`${photo} from the embedding`, p.fromEmbedding);
  }
  report('Sam webgpu', r);
});
