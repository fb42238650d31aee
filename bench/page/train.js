// Runs in the benchmark page (cross-origin isolated): websam's training throughput through the
// npm package's API (bench/train.mjs drives it). The objects: the masks the trained MobileSAM
// gives for the reference's box prompts on its photographs (tests/fixtures/real), decoded from the
// reference's embeddings.
import { Sam } from '/pkg/websam.js';
import { SamWorker } from '/pkg/worker.js';

const REAL = '/fixtures/real/';

async function embedding(name) {
  return new Uint8Array(await (await fetch(`${REAL}${name}_embedding.npy`)).arrayBuffer());
}

/** Each photograph's object: its box case's best mask at the image's size (0/1). */
export async function objects(weights, names) {
  const cases = await (await fetch(REAL + 'cases.json')).json();
  const sam = await Sam.load({ weights, backend: 'cpu', cache: false });
  const out = [];
  for (const name of names) {
    const photo = cases.photos.find((p) => p.name === name);
    const [height, width] = photo.orig_size;
    const box = photo.cases.find((c) => c.name === 'box');
    await sam.setEmbedding(await embedding(name), { width, height });
    const p = await sam.predict({ box: box.box, multimask: false });
    out.push({ name, width, height, mask: Array.from(p.masks[0].data, (v) => (v ? 1 : 0)) });
  }
  sam.dispose();
  return out;
}

/**
 * `steps` steps of every object (batch = the objects), on `api` ("Sam": the main thread, one
 * thread; "SamWorker": `threads` threads). Returns the time of `train` alone and the step losses.
 */
export async function train(weights, api, threads, objs, steps) {
  const load = { weights, backend: 'cpu', cache: false };
  const sam = api === 'Sam' ? await Sam.load(load) : await SamWorker.load({ ...load, threads });
  // Each image's embedding as `getEmbedding` gives it, through the package's own .npy reader.
  const items = [];
  for (const o of objs) {
    await sam.setEmbedding(await embedding(o.name), { width: o.width, height: o.height });
    items.push({ mask: Uint8Array.from(o.mask), width: o.width, height: o.height, embedding: await sam.getEmbedding() });
  }
  const t = performance.now();
  const losses = await sam.train(items, { steps, batch: items.length, lr: 1e-4, seed: 0 });
  const ms = performance.now() - t;
  const out = { api, threads: sam.threads, relaxedSimd: sam.relaxedSimd, ms, losses };
  sam.dispose();
  return out;
}
