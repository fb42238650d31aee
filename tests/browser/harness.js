// Runs in the test page (served from the repository root): drives the built package in pkg/
// through its public API and measures against the PyTorch goldens in tests/fixtures. The
// Playwright tests (api.test.mjs) call these functions and assert on what they return.
import { Sam, clearWeightsCache } from '/pkg/websam.js';
import { SamWorker } from '/pkg/worker.js';
import { toRgba } from '/pkg/internal.js';
import { f16 } from '/tests/support/half.mjs';

export const apis = { Sam, SamWorker };
export const FIXTURES = '/tests/fixtures/';

export async function fetchOk(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r;
}

/** A float32 .npy fixture as a Float32Array. */
export async function npy(name) {
  const buf = await (await fetchOk(FIXTURES + name)).arrayBuffer();
  const view = new DataView(buf);
  const headerLen = view.getUint16(8, true);
  const header = new TextDecoder('latin1').decode(new Uint8Array(buf, 10, headerLen));
  if (!header.includes("'<f4'")) throw new Error(`${name}: not float32 (${header})`);
  return new Float32Array(buf.slice(10 + headerLen));
}

/** An f16 .npy (stored references) as a Float32Array. */
export function f16npy(buf) {
  const headerLen = new DataView(buf).getUint16(8, true);
  const header = new TextDecoder('latin1').decode(new Uint8Array(buf, 10, headerLen));
  if (!header.includes("'<f2'")) throw new Error(`not float16 (${header})`);
  return Float32Array.from(new Uint16Array(buf.slice(10 + headerLen)), f16);
}

export async function cases() {
  const all = await (await fetchOk(FIXTURES + 'cases.json')).json();
  return Object.fromEntries(all.cases.map((c) => [c.name, c]));
}

export function promptOf(c) {
  const prompt = { multimask: c.multimask };
  if (c.points) prompt.points = c.points.map(([x, y], i) => [x, y, c.labels[i]]);
  if (c.box) prompt.box = c.box;
  return prompt;
}

export function maxAbsDiff(a, b) {
  if (a.length !== b.length) throw new Error(`${a.length} values, expected ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Decodes the fixture cases of the 640x480 image; low-res logits and IoU against PyTorch. */
async function decodeCases(sam, names) {
  const all = await cases();
  const out = {};
  for (const name of names) {
    const c = all[name];
    const prompt = promptOf(c);
    if (c.mask_input) prompt.maskInput = await npy(c.mask_input);
    const r = await sam.predict(prompt);
    const [h, w] = c.orig_size;
    const shapes = r.masks.every((m) => m.width === w && m.height === h && m.data.length === w * h);
    out[name] = {
      logits: maxAbsDiff(r.lowResLogits, await npy(c.low_res_logits)),
      iou: maxAbsDiff(r.iou, await npy(c.iou)),
      masks: r.masks.length,
      shapes,
      best: r.best,
    };
  }
  return out;
}

/** Median time of `runs` predictions of `prompt` (the model is warm: cases ran before). */
async function timePredict(sam, prompt, runs = 3) {
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    await sam.predict(prompt);
    times.push(performance.now() - t);
  }
  return median(times);
}

export async function fixtureImage() {
  const blob = await (await fetchOk(FIXTURES + 'image.png')).blob();
  const img = new Image();
  img.src = URL.createObjectURL(blob);
  await img.decode();
  return img;
}

/**
 * The parity scenario for one API and backend (and `threads`, the load option): load by URL,
 * setEmbedding + predict (3 cases, then one with a mask input; with `oneCase`, the first case
 * only), then (unless `encode` is false) setImage (an <img>) + predict, with timings.
 */
export async function parity(api, backend, threads = undefined, { encode = true, oneCase = false } = {}) {
  const t0 = performance.now();
  const sam = await apis[api].load({ weights: FIXTURES + 'mobile_sam.pth', backend, cache: false, threads });
  const loadMs = performance.now() - t0;
  const result = {
    backend: sam.backend, adapter: sam.adapterName ?? null, loadMs, threads: sam.threads, relaxedSimd: sam.relaxedSimd,
  };
  const embedding = await (await fetchOk(FIXTURES + 'embedding.npy')).arrayBuffer();
  await sam.setEmbedding(embedding, { width: 640, height: 480 });
  result.fromEmbedding = await decodeCases(sam,
    oneCase ? ['predictor_points'] : ['predictor_points', 'predictor_box', 'predictor_box_points']);
  // One click with three candidates: the prompt of a click or a hover in a page (once on
  // WebGPU, where this machine's software adapter takes seconds per decode).
  result.predictMs = await timePredict(sam, { points: [[161.5, 150.25, 1]], multimask: true },
    backend === 'webgpu' ? 1 : 3);
  if (!oneCase) {
    // A previous mask's low-res logits as the mask input (the golden case is for a 1024x1024 image).
    await sam.setEmbedding(embedding, { width: 1024, height: 1024 });
    result.fromEmbedding.point_mask_input = (await decodeCases(sam, ['point_mask_input'])).point_mask_input;
  }
  if (!encode) {
    sam.dispose();
    return result;
  }
  const img = await fixtureImage();
  const t = performance.now();
  await sam.setImage(img);
  result.setImageMs = performance.now() - t;
  const e = await sam.getEmbedding();
  result.embedding = maxAbsDiff(e.data, await npy('embedding.npy'));
  result.fromImage = await decodeCases(sam, ['predictor_points', 'predictor_box']);
  sam.dispose();
  return result;
}

/**
 * Option precision "f16" on both backends: the precision each reports, whether the adapter offers
 * shader-f16, and (Sam) one decode on WebGPU against PyTorch.
 */
export async function precision(api) {
  const adapter = await navigator.gpu?.requestAdapter();
  const out = { shaderF16: adapter?.features.has('shader-f16') ?? false };
  const weights = FIXTURES + 'sam_decoder.safetensors';
  const gpu = await apis[api].load({ weights, backend: 'webgpu', precision: 'f16', cache: false });
  out.webgpu = { precision: gpu.precision };
  if (api === 'Sam') {
    // One decode (a few seconds on a software adapter) shows the f16 model, or its fallback, works.
    const embedding = await (await fetchOk(FIXTURES + 'embedding.npy')).arrayBuffer();
    await gpu.setEmbedding(embedding, { width: 640, height: 480 });
    out.webgpu.fromEmbedding = await decodeCases(gpu, ['predictor_points']);
  }
  gpu.dispose();
  const cpu = await apis[api].load({ weights, backend: 'cpu', precision: 'f16', cache: false });
  out.cpu = { precision: cpu.precision };
  cpu.dispose();
  return out;
}

/** Loads the decoder weights by URL twice, recording the progress stages of each load. */
export async function cacheReuse(api) {
  await clearWeightsCache();
  const url = FIXTURES + 'sam_decoder.safetensors';
  const loads = [];
  for (let i = 0; i < 2; i++) {
    const events = [];
    const t = performance.now();
    const sam = await apis[api].load({ weights: url, backend: 'cpu', onProgress: (p) => events.push(p) });
    loads.push({
      ms: performance.now() - t,
      stages: [...new Set(events.map((e) => e.stage))],
      last: events.filter((e) => e.stage === 'download' || e.stage === 'cache').at(-1),
      monotonic: events.every((e, j) => j === 0 || e.stage !== events[j - 1].stage || e.loaded >= events[j - 1].loaded),
    });
    sam.dispose();
  }
  const cached = await (await caches.open('websam-weights-v1')).match(new URL(url, location.href).href);
  return { loads, inCache: Boolean(cached) };
}

/** Calls `fn` and returns how it failed: `{ error, name, message }` or `{ error: false }`. */
export async function failure(fn) {
  try {
    await fn();
    return { error: false };
  } catch (e) {
    return { error: e instanceof Error, name: e?.name, message: String(e?.message ?? e) };
  }
}

/** Every misuse the API must refuse with an Error and a message. */
export async function errors(api) {
  const A = apis[api];
  const decoder = FIXTURES + 'sam_decoder.safetensors';
  const out = {};
  out.loadNoOptions = await failure(() => A.load());
  out.loadNoWeights = await failure(() => A.load({ backend: 'cpu' }));
  out.loadWeightsNumber = await failure(() => A.load({ weights: 42, backend: 'cpu' }));
  out.loadBadBackend = await failure(() => A.load({ weights: decoder, backend: 'gpu' }));
  out.loadNotFound = await failure(() => A.load({ weights: FIXTURES + 'missing.pth', backend: 'cpu' }));
  out.loadUnreadable = await failure(() => A.load({ weights: new Uint8Array(1000).fill(7), backend: 'cpu' }));
  out.loadNotSam = await failure(() => A.load({ weights: FIXTURES + 'loader/dtypes.pth', backend: 'cpu' }));
  out.loadThreadsZero = await failure(() => A.load({ weights: decoder, backend: 'cpu', threads: 0 }));
  out.loadBadPrecision = await failure(() => A.load({ weights: decoder, backend: 'cpu', precision: 'f8' }));
  // This page is not cross-origin isolated: no shared memory, so no threads.
  out.loadThreadsHere = await failure(() => A.load({ weights: decoder, backend: 'cpu', threads: 2 }));
  const sam = await A.load({ weights: decoder, backend: 'cpu', cache: false });
  out.predictBeforeImage = await failure(() => sam.predict({ points: [[10, 10, 1]] }));
  out.setImageString = await failure(() => sam.setImage('image.png'));
  out.setImageShortData = await failure(() => sam.setImage({ data: new Uint8Array(10), width: 4, height: 4 }));
  out.setImageNoEncoder = await failure(() => sam.setImage({ data: new Uint8Array(64), width: 4, height: 4 }));
  out.embeddingWrongSize = await failure(() => sam.setEmbedding(new Float32Array(1000), { width: 640, height: 480 }));
  out.embeddingNoSize = await failure(() => sam.setEmbedding(new Float32Array(256 * 64 * 64)));
  out.embeddingNotNpy = await failure(() => sam.setEmbedding(new Uint8Array(100), { width: 640, height: 480 }));
  const wrongNpy = await (await fetchOk(FIXTURES + 'case_box_low_res_logits.npy')).arrayBuffer();
  out.embeddingWrongNpyShape = await failure(() => sam.setEmbedding(wrongNpy, { width: 640, height: 480 }));
  await sam.setEmbedding(await (await fetchOk(FIXTURES + 'embedding.npy')).arrayBuffer(), { width: 640, height: 480 });
  out.pointOutside = await failure(() => sam.predict({ points: [[700, 10, 1]] }));
  out.pointNegative = await failure(() => sam.predict({ points: [[-1, 10, 1]] }));
  out.emptyBox = await failure(() => sam.predict({ box: [100, 100, 100, 200] }));
  out.boxOutside = await failure(() => sam.predict({ box: [100, 100, 900, 200] }));
  out.pointsNotArray = await failure(() => sam.predict({ points: '10,10' }));
  out.pointBadLabel = await failure(() => sam.predict({ points: [[10, 10, 2]] }));
  out.pointNaN = await failure(() => sam.predict({ points: [[NaN, 10, 1]] }));
  out.boxThree = await failure(() => sam.predict({ box: [1, 2, 3] }));
  out.unknownField = await failure(() => sam.predict({ boxes: [1, 2, 3, 4] }));
  out.maskInputSize = await failure(() => sam.predict({ points: [[10, 10, 1]], maskInput: new Float32Array(100) }));
  out.multimaskString = await failure(() => sam.predict({ points: [[10, 10, 1]], multimask: 'yes' }));
  out.embeddingFormat = await failure(() => sam.getEmbedding({ format: 'png' }));
  // After all the refusals the model still works.
  const r = await sam.predict({ points: [[161.5, 150.25, 1]] });
  out.stillWorks = { error: false, masks: r.masks.length };
  sam.dispose();
  out.afterDispose = await failure(() => sam.predict({ points: [[10, 10, 1]] }));
  return out;
}

/** The threads each API takes by default (on a cross-origin isolated page for the tests). */
export async function defaultThreads() {
  const decoder = FIXTURES + 'sam_decoder.safetensors';
  const sam = await Sam.load({ weights: decoder, backend: 'cpu', cache: false });
  const worker = await SamWorker.load({ weights: decoder, backend: 'cpu', cache: false });
  const out = {
    isolated: globalThis.crossOriginIsolated, cores: navigator.hardwareConcurrency, sam: sam.threads, worker: worker.threads,
  };
  out.samThreads2 = await failure(() => Sam.load({ weights: decoder, backend: 'cpu', threads: 2 }));
  sam.dispose();
  worker.dispose();
  return out;
}

/** A lost WebGPU device mid-session: the next predict recovers with the same result. */
export async function deviceLoss(api) {
  const sam = await apis[api].load({ weights: FIXTURES + 'sam_decoder.safetensors', backend: 'webgpu', cache: false });
  const embedding = await (await fetchOk(FIXTURES + 'embedding.npy')).arrayBuffer();
  await sam.setEmbedding(embedding, { width: 640, height: 480 });
  const prompt = promptOf((await cases()).predictor_box);
  const before = await sam.predict(prompt);
  await sam.destroyDeviceForTesting();
  const after = await sam.predict(prompt);
  const out = { backend: sam.backend, diff: maxAbsDiff(after.lowResLogits, before.lowResLogits) };
  sam.dispose();
  return out;
}

/**
 * Backend "auto": what it chose, and why not WebGPU when it did not. With `hideGpu` the page
 * hides navigator.gpu (the test's init script), and a SamWorker runs in a worker that hides it
 * too (passed through the `worker` option).
 */
export async function auto(api, hideGpu = false) {
  const options = { weights: FIXTURES + 'sam_decoder.safetensors', cache: false };
  if (hideGpu && api === 'SamWorker') {
    options.worker = new Worker('/tests/browser/no-webgpu-worker.js', { type: 'module' });
  }
  const sam = await apis[api].load(options);
  const out = { backend: sam.backend, fallbackReason: sam.fallbackReason ?? null };
  sam.dispose();
  return out;
}

/**
 * Every image input `setImage` takes, made from the fixture PNG, read to RGBA: the size and the
 * number of bytes that differ from the pixels of the <img> (whose embedding matches PyTorch's).
 */
export async function imageInputs() {
  const blob = await (await fetchOk(FIXTURES + 'image.png')).blob();
  const img = await fixtureImage();
  const bitmap = await createImageBitmap(blob);
  const canvas = Object.assign(document.createElement('canvas'), { width: 640, height: 480 });
  canvas.getContext('2d').drawImage(bitmap, 0, 0);
  const imageData = canvas.getContext('2d').getImageData(0, 0, 640, 480);
  const offscreen = new OffscreenCanvas(640, 480);
  offscreen.getContext('2d').drawImage(bitmap, 0, 0);
  const inputs = {
    bitmap, canvas, imageData, offscreen, blob,
    rgbaObject: { data: new Uint8ClampedArray(imageData.data), width: 640, height: 480 },
    rgbaBuffer: { data: imageData.data.slice().buffer, width: 640, height: 480 },
  };
  const want = (await toRgba(img)).data;
  const out = {};
  for (const [name, input] of Object.entries(inputs)) {
    const { data, width, height } = await toRgba(input);
    let differ = 0;
    for (let i = 0; i < want.length; i++) if (data[i] !== want[i]) differ++;
    out[name] = { width, height, length: data.length, differ };
  }
  return out;
}

/** The name of the adapter backend "webgpu" uses here. */
export async function webgpuAdapterName() {
  const sam = await Sam.load({ weights: FIXTURES + 'sam_decoder.safetensors', backend: 'webgpu', cache: false });
  const name = sam.adapterName;
  sam.dispose();
  return name;
}

/**
 * Fine-tuning through `api` on `backend`: one step on one object (the box's rectangle), the
 * progress, the tuned model's masks, revert bit for bit, the tuned checkpoint's size.
 */
export async function training(api, backend) {
  const sam = await apis[api].load({ weights: FIXTURES + 'sam_decoder.safetensors', backend, cache: false });
  const embedding = await (await fetchOk(FIXTURES + 'embedding.npy')).arrayBuffer();
  await sam.setEmbedding(embedding, { width: 640, height: 480 });
  const prompt = { box: [370, 50, 570, 210], multimask: false };
  const original = await sam.predict(prompt);
  const mask = new Uint8Array(640 * 480);
  for (let y = 50; y < 210; y++) mask.fill(1, y * 640 + 370, y * 640 + 570);
  const progress = [];
  const t = performance.now();
  const losses = await sam.train([{ mask, width: 640, height: 480 }], { steps: 1, batch: 1, lr: 1e-3 }, {
    onProgress: (p) => progress.push(p),
  });
  const trainMs = performance.now() - t;
  const tuned = sam.tuned;
  const changed = maxAbsDiff((await sam.predict(prompt)).lowResLogits, original.lowResLogits);
  const checkpointBytes = (await sam.checkpoint()).length;
  await sam.revertTraining();
  const reverted = maxAbsDiff((await sam.predict(prompt)).lowResLogits, original.lowResLogits);
  const out = { backend: sam.backend, losses, progress, tuned, changed, reverted, stillTuned: sam.tuned, checkpointBytes, trainMs };
  sam.dispose();
  return out;
}
