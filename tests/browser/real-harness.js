// Runs in the test page (served from the repository root): the package (pkg/) with the trained
// MobileSAM checkpoint (models/mobile_sam.pt, fetched by `./build.sh setup`) on the real
// photographs of www/samples, against the official code's goldens in tests/fixtures/real
// (tools/golden/make_real.py). real.test.mjs calls these functions and asserts on what they
// return.
import { apis, f16npy, fetchOk, maxAbsDiff, npy, promptOf } from '/tests/browser/harness.js';

const REAL = '/tests/fixtures/real/';
const WEIGHTS = '/models/mobile_sam.pt';

/** The grey values of a PNG (the reference's quantized logits: (v - 128) / 100). */
async function grey(file) {
  const bitmap = await createImageBitmap(await (await fetchOk(`/tests/fixtures/${file}`)).blob(),
    { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const out = new Uint8Array(bitmap.width * bitmap.height);
  for (let i = 0; i < out.length; i++) out[i] = rgba[4 * i];
  return out;
}

/**
 * Our mask (0/1 per pixel) against the reference's quantized logits: pixels that differ where
 * the reference's logit is at least `band` from 0, all differing pixels, and the masks' IoU.
 */
function compareMask(mask, q, band) {
  let outside = 0;
  let flipped = 0;
  let inter = 0;
  let union = 0;
  const limit = Math.round(band * 100);
  for (let i = 0; i < mask.length; i++) {
    const a = mask[i] !== 0;
    const b = q[i] > 128;
    if (a !== b) {
      flipped++;
      if (Math.abs(q[i] - 128) >= limit) outside++;
    }
    if (a && b) inter++;
    if (a || b) union++;
  }
  return { outside, flipped, iou: union ? inter / union : 1 };
}

async function decodeCases(sam, photo, names, band) {
  const out = {};
  for (const c of photo.cases.filter((x) => !names || names.includes(x.name))) {
    const prompt = promptOf(c);
    if (c.mask_input) prompt.maskInput = await npy(c.mask_input);
    const t = performance.now();
    const r = await sam.predict(prompt);
    const ms = performance.now() - t;
    const [h, w] = photo.orig_size;
    const q = await grey(c.logits_png);
    const best = compareMask(r.masks[r.best].data, q.subarray(r.best * h * w, (r.best + 1) * h * w), band);
    out[c.name] = {
      ms,
      logits: maxAbsDiff(r.lowResLogits, await npy(c.low_res_logits)),
      iou: maxAbsDiff(r.iou, await npy(c.iou)),
      best: r.best,
      referenceBest: c.best,
      shapes: r.masks.every((m) => m.width === w && m.height === h),
      mask: best,
    };
  }
  return out;
}

/**
 * Loads the trained checkpoint with `api` on `backend`; for each photo, decodes the cases
 * `names` (all when null) from the reference's embedding (setEmbedding of its .npy) and, with
 * `encode`, from the photograph itself (setImage of the PNG as an <img>, then every case); masks
 * are compared outside `bands` [from the reference's embedding, from ours].
 */
export async function realParity(api, backend, { encode = true, names = null, bands = [0.01, 0.05] } = {}) {
  const manifest = await (await fetchOk(`${REAL}cases.json`)).json();
  const t0 = performance.now();
  const sam = await apis[api].load({ weights: WEIGHTS, backend, cache: false });
  const result = { backend: sam.backend, loadMs: performance.now() - t0, photos: {} };
  try {
    for (const photo of manifest.photos) {
      const [height, width] = photo.orig_size;
      const r = {};
      const emb = await (await fetchOk(`/tests/fixtures/${photo.embedding}`)).arrayBuffer();
      const reference = f16npy(emb); // before setEmbedding: SamWorker may transfer the buffer
      await sam.setEmbedding(emb, { width, height });
      r.fromEmbedding = await decodeCases(sam, photo, names, bands[0]);
      if (encode) {
        const img = new Image();
        img.src = `/${photo.image}`;
        await img.decode();
        const t = performance.now();
        await sam.setImage(img);
        r.setImageMs = performance.now() - t;
        const e = await sam.getEmbedding();
        r.embedding = maxAbsDiff(e.data, reference);
        r.fromImage = await decodeCases(sam, photo, null, bands[1]);
      }
      result.photos[photo.name] = r;
    }
  } finally {
    sam.dispose();
  }
  return result;
}

