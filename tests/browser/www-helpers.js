// Runs in the demo page during tests/browser/www.test.mjs: a reference model through the
// package's own API (the same embedding as the page), and reads of the page's overlay canvases.
import { Sam } from '/pkg/websam.js';
import { SamWorker } from '/pkg/worker.js';

let ref = null;

/** Loads the reference (CPU or WebGPU) on the decoder weights with the embedding at `url`. */
export async function reference(url, backend = 'cpu') {
  ref = await Sam.load({ weights: '/fixtures/sam_decoder.safetensors', backend, cache: false });
  const e = await (await fetch(url)).arrayBuffer();
  await ref.setEmbedding(e, { width: 640, height: 480 });
  return ref.backend;
}

/** The reference's prediction; masks as '0'/'1' strings, logits kept in the page by index. */
const kept = [];
export async function predict(prompt, maskFrom = null) {
  const req = { ...prompt };
  if (maskFrom) req.maskInput = kept[maskFrom.result].masks[maskFrom.index].lowResLogits;
  const r = await ref.predict(req);
  kept.push(r);
  return {
    result: kept.length - 1,
    best: r.best,
    scores: Array.from(r.iou),
    stability: r.masks.map((m) => m.stabilityScore),
    masks: r.masks.map((m) => bits(m.data)),
  };
}

/**
 * What `generate` gives through the package's API for `options`: the trained model in a
 * SamWorker on the CPU (as the page), on the page's exported embedding at `url` of a
 * `width`x`height` image. The records' COCO RLE strings, areas and scores, in their order.
 */
export async function everything(url, width, height, options) {
  const sam = await SamWorker.load({ weights: '/models/mobile_sam.pt', backend: 'cpu' });
  try {
    await sam.setEmbedding(await (await fetch(url)).arrayBuffer(), { width, height });
    const records = await sam.generate(options);
    return records.map((r) => ({
      counts: r.segmentation.counts, size: r.segmentation.size, area: r.area, iou: r.predicted_iou, stability: r.stability_score,
    }));
  } finally {
    sam.dispose();
  }
}

const bits = (data) => Array.from(data, (v) => (v ? '1' : '0')).join('');

/** Pixels of an overlay canvas with any alpha, as a '0'/'1' string. */
export function layer(id) {
  const c = document.getElementById(id);
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const out = new Uint8Array(c.width * c.height);
  for (let i = 0; i < out.length; i++) out[i] = px[i * 4 + 3] > 0 ? 1 : 0;
  return bits(out);
}

/** Distinct opaque-edge colours on an overlay canvas. */
export function colours(id) {
  const c = document.getElementById(id);
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  for (let i = 0; i < px.length; i += 4) if (px[i + 3] === 255) seen.add(`${px[i]},${px[i + 1]},${px[i + 2]}`);
  return [...seen];
}

/** A PNG (bytes as base64) decoded by the browser: `{ width, height, rgba: base64 }`. */
export async function decodePng(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }), { premultiplyAlpha: 'none', colorSpaceConversion: 'none' });
  const c = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = c.getContext('2d');
  ctx.drawImage(bitmap, 0, 0);
  const px = ctx.getImageData(0, 0, c.width, c.height).data;
  let s = '';
  for (let i = 0; i < px.length; i += 4) s += String.fromCharCode(px[i], px[i + 1], px[i + 2], px[i + 3]);
  return { width: c.width, height: c.height, rgba: btoa(s) };
}

/** The image canvas's pixels inside a box, as base64 RGBA. */
export function imagePixels(x, y, w, h) {
  const px = document.getElementById('image').getContext('2d').getImageData(x, y, w, h).data;
  let s = '';
  for (let i = 0; i < px.length; i++) s += String.fromCharCode(px[i]);
  return btoa(s);
}
