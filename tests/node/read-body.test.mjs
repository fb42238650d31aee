// How the package reads a checkpoint's body: into one array of the announced length, and right
// when the length is missing, lies low (a compressed transfer's) or lies high (a cut transfer).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readBody } from '../../js/internal.js';

const body = Uint8Array.from({ length: 100000 }, (_, i) => (i * 31 + 7) % 251);

/** A response streaming `body` in chunks of `size`, announcing `length` (or none). */
function response(length, size = 4096) {
  let at = 0;
  const stream = new ReadableStream({
    pull(c) {
      if (at >= body.length) return c.close();
      c.enqueue(body.slice(at, at + size));
      at += size;
    },
  });
  const headers = length === undefined ? {} : { 'content-length': String(length) };
  return new Response(stream, { headers });
}

for (const [what, length] of [['announced', body.length], ['missing', undefined], ['low (compressed)', 30000], ['high', 250000]]) {
  test(`the body is read whole when its length is ${what}`, async () => {
    const events = [];
    const got = await readBody(response(length), 'download', (e) => events.push(e), 'test');
    assert.equal(got.byteLength, body.length);
    assert.deepEqual(got, body);
    assert.equal(events.at(-1).loaded, body.length);
    assert.ok(events.every((e, i) => i === 0 || e.loaded >= events[i - 1].loaded), 'progress never goes back');
  });
}

test('an announced length the browser cannot allocate falls back to chunks', async () => {
  const got = await readBody(response(2 ** 53), 'download', undefined, 'test');
  assert.deepEqual(got, body);
});
