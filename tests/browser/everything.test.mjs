// "Segment everything" through the npm package (pkg/) in headless Chromium: Sam.generate and
// SamWorker.generate against the official SamAutomaticMaskGenerator (tests/fixtures/amg): the
// same records in the same order, masks identical outside the band of pixels whose reference
// logit is near 0, bbox and area exact there, scores within 1e-4 on the CPU path and 1e-3 on
// WebGPU (SwiftShader: a 2x2 grid from the reference's embedding). Also progress, abort and
// misuse.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { serve } from '../../tools/serve.mjs';
import { launch, runInPage } from './browser.mjs';

const root = fileURLToPath(new URL('../../', import.meta.url));
let server;
let browser;

before(async () => {
  server = await serve(root, { isolated: true });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.close();
});

const inPage = (fn, args) => runInPage(browser, server.url, '/tests/browser/everything-harness.js', fn, args);

function check(label, r, scoreTolerance) {
  console.log(`${label}: ${r.count} records (reference ${r.reference}), ${r.flips} pixels differ in the band, `
    + `predicted_iou within ${r.worstIou.toExponential(2)}, stability within ${r.worstStability.toExponential(2)}; `
    + `setImage ${r.setImageMs?.toFixed(0)} ms, generate ${r.generateMs?.toFixed(0)} ms`);
  assert.deepEqual(r.bad, [], `${label}:\n${r.bad.join('\n')}`);
  assert.ok(r.worstIou <= scoreTolerance, `${label}: predicted_iou off by ${r.worstIou}`);
  assert.ok(r.worstStability <= scoreTolerance, `${label}: stability_score off by ${r.worstStability}`);
}

function checkProgress(label, r) {
  assert.ok(r.progress.length > 0, `${label}: no progress`);
  const last = r.progress.at(-1);
  assert.equal(last.done, last.total, `${label}: the last progress is not complete`);
  r.progress.forEach((p, i) => assert.equal(p.done, i + 1, `${label}: progress ${i}`));
}

test('SamWorker on the CPU (threads): a crop layer on a photograph', async () => {
  // The image and its four crops, each encoded and prompted by a grid. The default 32x32 grid
  // (1024 decodes: about a minute here) is compared natively, on the same code
  // (tests/everything.rs, cpu_real_default_grid).
  const crop = await inPage('everythingParity', ['SamWorker', 'cpu', 'real_crop_small']);
  assert.equal(crop.backend, 'cpu');
  check('SamWorker cpu real_crop_small', crop, 1e-4);
  checkProgress('real_crop_small', crop);
  assert.equal(crop.progress.at(-1).crops, 5);
});

test('Sam on the CPU (one thread): small regions removed', async () => {
  const r = await inPage('everythingParity', ['Sam', 'cpu', 'fixture_min_region']);
  check('Sam cpu fixture_min_region', r, 1e-4);
});

test('Sam on WebGPU: a 2x2 grid from the reference embedding', async () => {
  // SwiftShader takes about 12 s per decode here: the native GPU tests (tests/everything.rs, on
  // lavapipe) run the larger cases through the same kernels.
  const r = await inPage('everythingParity', ['Sam', 'webgpu', 'real_tiny', { fromEmbedding: '/tests/fixtures/real/chelsea_embedding.npy' }]);
  assert.equal(r.backend, 'webgpu');
  check('Sam webgpu real_tiny', r, 1e-3);
});

for (const api of ['Sam', 'SamWorker']) {
  test(`${api}: abort half-way leaves the model usable; misuse is refused`, async () => {
    const r = await inPage('everythingAbort', [api, 'cpu']);
    assert.equal(r.errors.noImage?.includes('no image set'), true, r.errors.noImage);
    assert.match(r.errors.aborted, /^AbortError/);
    // Aborted when the third crop began: it stops there (a worker may finish the step under way).
    assert.ok(r.steps <= 4 && r.steps < r.total, `${r.steps} of ${r.total} steps ran after the abort`);
    assert.match(r.errors.alreadyAborted, /^AbortError/);
    assert.match(r.errors.pointsPerSide0, /pointsPerSide must be at least 1/);
    assert.match(r.errors.both, /exactly one of pointsPerSide and pointGrids/);
    assert.match(r.errors.threshold, /predIouThresh must be in \[0, 1\]/);
    assert.match(r.errors.unknown, /unknown field `pointsPerSides`/);
    assert.match(r.errors.outputMode, /^TypeError: generate: outputMode/);
    assert.equal(r.samePrediction, true, 'the click after the abort differs');
    assert.equal(r.sameBinary, true);
    assert.equal(r.sameCounts, true);
    check(`${api} cpu fixture_min_region after an abort`, r, 1e-4);
  });
}
