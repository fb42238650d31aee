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

// The .npy's values as f32 (little-endian f2 or f4; version 1 or 2 headers).
function npyF32(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = (major === 1 ? 10 : 12) + headerLen;
  const header = new TextDecoder().decode(bytes.subarray(major === 1 ? 10 : 12, start));
  const data = bytes.slice(start);
  if (header.includes("'<f4'")) return new Float32Array(data.buffer);
  if (!header.includes("'<f2'")) throw new Error(`not little-endian f16 or f32: ${header}`);
  const half = new Uint16Array(data.buffer);
  const out = new Float32Array(half.length);
  for (let i = 0; i < half.length; i++) {
    const h = half[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    out[i] = exp === 0 ? sign * frac * 2 ** -24 : exp === 31 ? (frac ? NaN : sign * Infinity) : sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return out;
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
  const items = [];
  for (const o of objs) {
    items.push({ mask: Uint8Array.from(o.mask), width: o.width, height: o.height, embedding: npyF32(await embedding(o.name)) });
  }
  const t = performance.now();
  const losses = await sam.train(items, { steps, batch: items.length, lr: 1e-4, seed: 0 });
  const ms = performance.now() - t;
  const out = { api, threads: sam.threads, relaxedSimd: sam.relaxedSimd, ms, losses };
  sam.dispose();
  return out;
}
