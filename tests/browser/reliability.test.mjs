// The package's reliability in headless Chromium (docs/RELIABILITY.md): weights checked against
// their integrity and the Cache API checked on every read, a panic or a refused memory growth
// in the wasm module survived, overlapping calls answered in order, dispose during calls. The
// soak (bench/soak.mjs) runs the long version of the overlapping calls; a short one is here.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { serve } from '../../tools/serve.mjs';
import { launch, runInPage } from './browser.mjs';

const root = fileURLToPath(new URL('../../', import.meta.url));
let server;
let browser;

before(async () => {
  server = await serve(root);
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.close();
});

const HARNESS = '/tests/browser/reliability-harness.js';
const inPage = (fn, args) => runInPage(browser, server.url, HARNESS, fn, args);

const DECODER = 'tests/fixtures/sam_decoder.safetensors';
const sri = `sha256-${createHash('sha256').update(readFileSync(new URL(`../../${DECODER}`, import.meta.url))).digest('base64')}`;

for (const api of ['Sam', 'SamWorker']) {
  describe(api, () => {
    test('integrity: the right digest loads, a wrong one is refused naming both, before caching', async () => {
      const r = await inPage('integrity', [api, sri]);
      assert.equal(r.rightUrl, true);
      for (const name of ['wrongUrl', 'wrongFromCache', 'wrongBytes', 'strongestCounts']) {
        assert.equal(r[name].error, true, `${name}: ${JSON.stringify(r[name])}`);
        assert.match(r[name].message, /have integrity sha(256|512)-[A-Za-z0-9+/=]+, expected sha(256|512)-/, name);
      }
      // Both digests named: the bytes' own (the right one here) and the one asked for.
      for (const name of ['wrongUrl', 'wrongBytes']) {
        assert.ok(r[name].message.includes(`have integrity ${sri}, expected sha256-eHh4`), r[name].message);
      }
      assert.equal(r.cachedAfterWrong, false, 'bytes that failed their integrity were cached');
      assert.equal(r.malformed.name, 'TypeError');
      assert.match(r.malformed.message, /integrity "md5-abc"/);
    });

    for (const mode of ['flipped', 'no digest']) {
      test(`a cached checkpoint with ${mode === 'flipped' ? 'a flipped bit' : 'no stored digest'} is dropped and fetched again`, async () => {
        const path = `/${DECODER}`;
        const before = server.requests.get(path) ?? 0;
        const r = await inPage('corruptCache', [api, mode]);
        assert.equal((server.requests.get(path) ?? 0) - before, 2, 'the first load and the fetch again');
        assert.ok(r.restored, 'the fresh copy is cached with its digest');
      });
    }

    for (const kind of ['panic', 'oom']) {
      test(`a ${kind === 'panic' ? 'panic' : 'refused memory growth'} in the module rejects the call and the model goes on`, async () => {
        const r = await inPage('survivePanic', [api, kind]);
        assert.equal(r.failed.error, true, JSON.stringify(r.failed));
        assert.match(r.failed.message, /websam stopped on an internal error/);
        if (kind === 'panic') assert.match(r.failed.message, /a panic provoked for testing/);
        if (api === 'Sam') {
          assert.equal(r.queued.ok, 0, `the call queued behind ran on the reloaded model: ${JSON.stringify(r.queued)}`);
        } else {
          assert.match(r.queued.error ?? '', /the call was not run: websam stopped on an internal error/);
        }
        assert.equal(r.diff, 0, 'the reloaded model, with its embedding set again, answers as before');
        // The new instance (a new memory) has its relaxed-SIMD kernels again.
        assert.deepEqual(r.relaxedSimd, [true, true]);
        assert.equal(r.againMasks, 1);
        console.log(`${api} ${kind}: the next predict answered in ${r.reloadMs.toFixed(0)} ms`);
      });
    }

    test('overlapping predicts with setEmbedding and setImage interleaved: each answer is of the input current at its call', async () => {
      const r = await inPage('overlapping', [api, { calls: 80, inputs: 4, images: 2, seed: 7 }]);
      assert.deepEqual(r.rejected, []);
      assert.equal(r.results, r.predicts, 'no call lost');
      assert.ok(r.predicts >= 50, `${r.predicts} predicts`);
      assert.equal(r.worst, 0, `a result differs from its input's reference by ${r.worst}`);
      assert.ok(r.closest > 1e-3, `inputs too alike to tell apart (${r.closest})`);
    });

    test('dispose() during calls: the waiting calls reject cleanly, later ones are refused', async () => {
      const r = await inPage('disposeDuringCalls', [api]);
      assert.notEqual(r.timeout, true, 'a call never settled');
      assert.equal(r.fulfilled + r.rejected.length, 6);
      assert.ok(r.rejected.length >= 5, `${r.rejected.length} rejected`);
      for (const e of r.rejected) {
        assert.equal(e.error, true);
        assert.match(e.message, /disposed/);
      }
      assert.equal(r.later.error, true);
      assert.match(r.later.message, /disposed/);
    });
  });
}

// The soak's short version (bench/soak.mjs runs the long one): memory flat after warm-up.
describe('soak (short)', () => {
  let isolated;
  before(async () => {
    isolated = await serve(root, { isolated: true });
  });
  after(async () => {
    await isolated?.close();
  });

  test('SamWorker on the CPU: 150 predicts and 15 setEmbedding over 10 images, heap in use flat after warm-up', async () => {
    const r = await runInPage(browser, isolated.url, HARNESS, 'soak',
      ['SamWorker', { predicts: 150, sets: 15, inputs: 10, samples: 10, ua: false }]);
    const s = r.samples;
    assert.equal(s.at(-1).predicts, 150);
    // Linear memory only grows, in steps that fragmentation times (the long soak sees it settle
    // after some 500 predicts); the heap in use is what a leak grows, and it settles at once.
    const warm = s[2];
    const mb = (b) => (b / 1e6).toFixed(3);
    console.log(`soak (short): heap in use ${s.map((x) => mb(x.heapInUseBytes)).join(', ')} MB at predicts ` +
      `${s.map((x) => x.predicts).join(', ')}; wasm memory ${mb(s[0].wasmMemoryBytes)} -> ${mb(s.at(-1).wasmMemoryBytes)} MB; ` +
      `${(r.seconds ?? s.at(-1).seconds).toFixed(1)} s`);
    for (const x of s.slice(3)) {
      const growth = x.heapInUseBytes - warm.heapInUseBytes;
      assert.ok(growth <= 64 * 1024, `heap in use grew by ${growth} bytes from predict ${warm.predicts} to ${x.predicts}`);
    }
  });
});
