// Runs in the test page: the package's promises of reliability (docs/RELIABILITY.md), through
// its public API: integrity of weights and of the Cache API, a panic survived, overlapping calls
// kept in order, dispose during calls, and a soak of many calls with memory sampled.
// reliability.test.mjs calls these functions and asserts on what they return.
import { apis, failure, FIXTURES, npy, maxAbsDiff } from './harness.js';
import { clearWeightsCache } from '/pkg/websam.js';

const DECODER = FIXTURES + 'sam_decoder.safetensors';
const CACHE = 'websam-weights-v1';

/** `integrity` right and wrong, by URL (network and cache) and from bytes. */
export async function integrity(api, good) {
  const A = apis[api];
  await clearWeightsCache();
  const bad = 'sha256-' + btoa('x'.repeat(32));
  const out = {};
  out.wrongUrl = await failure(() => A.load({ weights: DECODER, backend: 'cpu', integrity: bad }));
  // Refused bytes are not cached.
  out.cachedAfterWrong = Boolean(await (await caches.open(CACHE)).match(new URL(DECODER, location.href).href));
  const sam = await A.load({ weights: DECODER, backend: 'cpu', integrity: good });
  out.rightUrl = true;
  sam.dispose();
  // From the cache now: the right digest loads, a wrong one is refused.
  // Several digests of one algorithm: any may match (SRI); of several algorithms the strongest counts.
  (await A.load({ weights: DECODER, backend: 'cpu', integrity: `sha256-${btoa('y'.repeat(32))} ${good}` })).dispose();
  out.strongestCounts = await failure(() => A.load({ weights: DECODER, backend: 'cpu', integrity: `${good} sha512-${btoa('y'.repeat(64))}` }));
  out.wrongFromCache = await failure(() => A.load({ weights: DECODER, backend: 'cpu', integrity: 'sha256-' + btoa('z'.repeat(32)) }));
  const bytes = await (await fetch(DECODER)).arrayBuffer();
  out.wrongBytes = await failure(() => A.load({ weights: bytes, backend: 'cpu', integrity: bad }));
  out.malformed = await failure(() => A.load({ weights: bytes, backend: 'cpu', integrity: 'md5-abc' }));
  return out;
}

/** A cached entry corrupted (or without its digest) is dropped and fetched again. */
export async function corruptCache(api, mode) {
  const A = apis[api];
  await clearWeightsCache();
  const url = new URL(DECODER, location.href).href;
  (await A.load({ weights: DECODER, backend: 'cpu' })).dispose();
  const store = await caches.open(CACHE);
  const entry = await store.match(url);
  const digest = entry.headers.get('x-websam-sha256');
  const bytes = new Uint8Array(await entry.arrayBuffer());
  const headers = { 'content-length': String(bytes.byteLength) };
  if (mode === 'flipped') {
    // One bit flipped deep in the weights: still a loadable checkpoint, so only the digest tells.
    bytes[bytes.length - 100] ^= 1;
    headers['x-websam-sha256'] = digest;
  }
  await store.put(url, new Response(bytes, { headers }));
  const sam = await A.load({ weights: DECODER, backend: 'cpu' });
  sam.dispose();
  const after = await store.match(url);
  return { digest, restored: after.headers.get('x-websam-sha256') === digest };
}

const PROMPT = { points: [[200, 150, 1]], multimask: true };

/** A panic (or a refused memory growth) inside the module: the call rejects, the model goes on. */
export async function survivePanic(api, kind) {
  const A = apis[api];
  const sam = await A.load({ weights: DECODER, backend: 'cpu', cache: false });
  const embedding = await npy('embedding.npy');
  await sam.setEmbedding(embedding, { width: 640, height: 480 });
  const before = await sam.predict(PROMPT);
  before.relaxedSimd = sam.relaxedSimd;
  const failing = failure(() => sam.failForTesting(kind));
  // A call made behind the failing one: it rejects (SamWorker) or runs after the reload (Sam).
  const behind = sam.predict(PROMPT).then((r) => ({ ok: maxAbsDiff(r.lowResLogits, before.lowResLogits) }), (e) => ({ error: String(e.message) }));
  const failed = await failing;
  const queued = await behind;
  const t = performance.now();
  const after = await sam.predict(PROMPT);
  const reloadMs = performance.now() - t;
  // And again, to show the reloaded model is a working one.
  const again = await sam.predict({ points: [[100, 100, 1]], multimask: false });
  const relaxedSimd = [before.relaxedSimd, sam.relaxedSimd];
  sam.dispose();
  return {
    relaxedSimd,
    failed,
    queued,
    diff: maxAbsDiff(after.lowResLogits, before.lowResLogits),
    againMasks: again.masks.length,
    reloadMs,
  };
}

/**
 * Embeddings that give different masks: the fixture embedding (that of image.png) rotated and
 * negated, none equal to it, so that none stands for the photograph itself.
 */
function variants(base, n) {
  const len = base.length;
  return Array.from({ length: n }, (_, k) => base.map((_, i) => base[(i + (k + 1) * 4099) % len] * (k % 2 ? -1 : 1)));
}

/** A seeded generator (mulberry32), so that a failure can be replayed. */
function random(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `calls` overlapping calls, none awaited before the next is made: predicts with setEmbedding
 * (and, with `images`, setImage) interleaved at random. Every predict's result must equal the
 * reference result of the input that was current when it was made.
 */
export async function overlapping(api, { calls, inputs, images = 0, seed = 1 }) {
  const A = apis[api];
  const weights = images ? FIXTURES + 'mobile_sam.pth' : DECODER;
  const sam = await A.load({ weights, backend: 'cpu' });
  const base = await npy('embedding.npy');
  const embeddings = variants(base, inputs);
  const size = { width: 640, height: 480 };
  const pictures = [];
  for (let k = 0; k < images; k++) {
    const bitmap = await createImageBitmap(await (await fetch(FIXTURES + 'image.png')).blob());
    const canvas = new OffscreenCanvas(640, 480);
    const ctx = canvas.getContext('2d');
    // The photograph, then mirrored: two images with different embeddings.
    if (k % 2) {
      ctx.translate(640, 0);
      ctx.scale(-1, 1);
    }
    ctx.drawImage(bitmap, 0, 0);
    pictures.push(ctx.getImageData(0, 0, 640, 480));
  }
  const set = (k) => (k < inputs ? sam.setEmbedding(embeddings[k], size) : sam.setImage(pictures[k - inputs]));
  // References: each input, then one predict, strictly in sequence.
  const reference = [];
  for (let k = 0; k < inputs + images; k++) {
    await set(k);
    reference.push((await sam.predict(PROMPT)).lowResLogits);
  }
  const next = random(seed);
  let current = 0;
  await set(current);
  const pending = [];
  let predicts = 0;
  for (let i = 0; i < calls; i++) {
    if (next() < 0.2) {
      current = Math.floor(next() * (inputs + images));
      pending.push(set(current).then(() => null));
    } else {
      const expect = current;
      predicts += 1;
      pending.push(sam.predict(PROMPT).then((r) => ({ expect, diff: maxAbsDiff(r.lowResLogits, reference[expect]) })));
    }
  }
  const settled = await Promise.allSettled(pending);
  sam.dispose();
  const results = settled.filter((s) => s.status === 'fulfilled' && s.value).map((s) => s.value);
  const rejected = settled.filter((s) => s.status === 'rejected').map((s) => String(s.reason?.message ?? s.reason));
  // Distinct references, so that a mixed-up result would show.
  let closest = Infinity;
  for (let a = 0; a < reference.length; a++) {
    for (let b = a + 1; b < reference.length; b++) {
      const d = maxAbsDiff(reference[a], reference[b]);
      closest = Math.min(closest, d);
    }
  }
  return {
    predicts,
    results: results.length,
    worst: Math.max(0, ...results.map((r) => r.diff)),
    rejected,
    closest,
  };
}

/** dispose() while calls are queued: every call settles, the waiting ones rejected cleanly. */
export async function disposeDuringCalls(api) {
  const A = apis[api];
  const sam = await A.load({ weights: DECODER, backend: 'cpu', cache: false });
  await sam.setEmbedding(await npy('embedding.npy'), { width: 640, height: 480 });
  const calls = Array.from({ length: 6 }, () => sam.predict(PROMPT));
  sam.dispose();
  const timeout = new Promise((r) => setTimeout(() => r('timeout'), 60000));
  const settled = await Promise.race([Promise.allSettled(calls), timeout]);
  if (settled === 'timeout') return { timeout: true };
  const later = await failure(() => sam.predict(PROMPT));
  return {
    fulfilled: settled.filter((s) => s.status === 'fulfilled').length,
    rejected: settled.filter((s) => s.status === 'rejected').map((s) => ({ error: s.reason instanceof Error, message: String(s.reason?.message) })),
    later,
  };
}

/** `performance.measureUserAgentSpecificMemory()` in bytes, where the page may call it. */
async function uaMemory() {
  if (!globalThis.crossOriginIsolated || !performance.measureUserAgentSpecificMemory) return null;
  try {
    return (await performance.measureUserAgentSpecificMemory()).bytes;
  } catch {
    return null;
  }
}

/**
 * A long session on one model: `predicts` predicts and `sets` setImage / setEmbedding calls
 * (alternating, when `images`) over `inputs` different images, memory sampled `samples` times:
 * the module's memory, its heap in use and the GPU pool (memoryStats) and, on a cross-origin
 * isolated page with `ua`, the browser's own measure of the page and its workers (it answers after
 * a garbage collection of its choosing: up to a minute a sample).
 */
export async function soak(api, { backend = 'cpu', predicts, sets, inputs = 10, images = false, samples = 20, threads, ua = true }) {
  const A = apis[api];
  const weights = images ? FIXTURES + 'mobile_sam.pth' : DECODER;
  const sam = await A.load({ weights, backend, threads });
  const base = await npy('embedding.npy');
  const embeddings = variants(base, inputs);
  let pictures = [];
  if (images) {
    const bitmap = await createImageBitmap(await (await fetch(FIXTURES + 'image.png')).blob());
    pictures = Array.from({ length: inputs }, (_, k) => {
      // Ten different images: the photograph shifted and mirrored.
      const canvas = new OffscreenCanvas(640, 480);
      const ctx = canvas.getContext('2d');
      if (k % 2) {
        ctx.translate(640, 0);
        ctx.scale(-1, 1);
      }
      ctx.drawImage(bitmap, (k >> 1) * 24, 0);
      return ctx.getImageData(0, 0, 640, 480);
    });
  }
  const size = { width: 640, height: 480 };
  const every = Math.max(1, Math.floor(predicts / sets));
  const sampleEvery = Math.max(1, Math.floor(predicts / samples));
  const out = [];
  const t0 = performance.now();
  let setCalls = 0;
  const sample = async (done) => {
    const stats = await sam.memoryStats();
    const measured = ua && (done % (sampleEvery * 5) === 0 || done === predicts) ? await uaMemory() : null;
    out.push({ predicts: done, sets: setCalls, seconds: (performance.now() - t0) / 1000, ...stats, uaBytes: measured });
  };
  for (let i = 0; i < predicts; i++) {
    if (i % every === 0 && setCalls < sets) {
      const k = setCalls % inputs;
      if (images && setCalls % 2 === 0) await sam.setImage(pictures[k]);
      else await sam.setEmbedding(embeddings[k], size);
      setCalls += 1;
    }
    const x = 20 + ((i * 37) % 600);
    const y = 20 + ((i * 53) % 440);
    const prompt = i % 3 === 0
      ? { box: [x - 20, y - 20, x + 20, y + 20], multimask: false }
      : { points: [[x, y, 1], [639 - x, 479 - y, 0]], multimask: i % 2 === 0 };
    // Every fifth predict refines with the last mask's logits, as a page does.
    const r = await sam.predict(prompt);
    if (i % 5 === 4) await sam.predict({ ...prompt, maskInput: r.masks[r.best].lowResLogits, multimask: false });
    if ((i + 1) % sampleEvery === 0 || i + 1 === predicts) await sample(i + 1);
  }
  const { backend: used, threads: running } = sam;
  sam.dispose();
  return { samples: out, backend: used, threads: running };
}
