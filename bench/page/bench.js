// Runs in the benchmark page (cross-origin isolated): one system at a time on the same fixture
// weights, image and prompts. websam through its npm package API (`Sam`, and `SamWorker` with
// threads); onnxruntime-web on the
// official ONNX export of the same weights (bench/export_onnx.py), preprocessing as its users
// write it (canvas resize, normalize, pad); candle-transformers' own SAM compiled to wasm
// (bench/candle-peer, weights converted by bench/candle_weights.py). Every decode returns masks
// at the image size, thresholded at 0, as websam's predict does.
import { Sam } from '/pkg/websam.js';
import { SamWorker } from '/pkg/worker.js';

const FIX = '/fixtures/';
const W = 640;
const H = 480;
export const PROMPTS = {
  point: { points: [[161, 150, 1]], multimask: true },
  box: { box: [370, 50, 570, 210], multimask: false },
  points5: { points: [[161, 150, 1], [470, 360, 1], [470, 130, 0], [300, 300, 1], [100, 400, 0]], multimask: false },
};

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const stats = (xs) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs), runs: xs.length });

async function timed(fn) {
  const t = performance.now();
  const r = await fn();
  return [performance.now() - t, r];
}

async function cachedBytes(url) {
  const store = await caches.open('bench-weights');
  let r = await store.match(url);
  if (!r) {
    await store.put(url, await fetch(url));
    r = await store.match(url);
  }
  return new Uint8Array(await r.arrayBuffer());
}

async function fixtureImage() {
  const blob = await (await fetch(FIX + 'image.png')).blob();
  return createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
}

// ------------------------------------------------------------------ websam

async function websam(backend) {
  const sam = await Sam.load({ weights: FIX + 'mobile_sam.pth', backend });
  if (sam.backend !== backend) throw new Error(`websam asked for ${backend}, got ${sam.backend}: ${sam.fallbackReason}`);
  return {
    info: sam.adapterName ?? 'wasm, 1 thread',
    encode: async (bitmap) => sam.setImage(bitmap),
    decode: async (prompt) => {
      const r = await sam.predict(prompt);
      return r.masks[r.best].data;
    },
    dispose: () => sam.dispose(),
  };
}

// SamWorker on this cross-origin isolated page: the threaded build, as many threads as the
// machine has (at most 8).
async function websamThreads() {
  const sam = await SamWorker.load({ weights: FIX + 'mobile_sam.pth', backend: 'cpu' });
  return {
    info: `wasm, SamWorker, ${sam.threads} threads`,
    encode: async (bitmap) => sam.setImage(bitmap),
    decode: async (prompt) => {
      const r = await sam.predict(prompt);
      return r.masks[r.best].data;
    },
    dispose: () => sam.dispose(),
  };
}

// ------------------------------------------------------------------ onnxruntime-web

let ortModule = null;
async function ortLoad() {
  ortModule ??= await import('/ort/ort.all.min.mjs');
  ortModule.env.wasm.wasmPaths = '/ort/';
  return ortModule;
}

const MEAN = [123.675, 116.28, 103.53];
const STD = [58.395, 57.12, 57.375];

async function onnx(provider, threads, encoderUrl) {
  const ort = await ortLoad();
  ort.env.wasm.numThreads = threads;
  const options = { executionProviders: [provider], graphOptimizationLevel: 'all' };
  // Another encoder (a ViT's, hundreds of MB: past the Cache API's quota here) comes straight
  // from the server.
  const encoderBytes = encoderUrl
    ? new Uint8Array(await (await fetch(encoderUrl)).arrayBuffer())
    : await cachedBytes('/onnx/encoder.onnx');
  const encoder = await ort.InferenceSession.create(encoderBytes, options);
  // The fixture's decoder, for the MobileSAM benchmark only.
  const decoder = encoderUrl ? null : await ort.InferenceSession.create(await cachedBytes('/onnx/decoder.onnx'), options);
  let embedding = null;
  let scale = 1;
  return {
    info: `${ort.env.versions?.web ?? ''} ${provider}${provider === 'wasm' ? `, ${threads} thread${threads > 1 ? 's' : ''}` : ''}`,
    encode: async (bitmap) => {
      scale = 1024 / Math.max(bitmap.width, bitmap.height);
      const w = Math.round(bitmap.width * scale);
      const h = Math.round(bitmap.height * scale);
      const canvas = new OffscreenCanvas(w, h);
      const ctx = canvas.getContext('2d');
      ctx.drawImage(bitmap, 0, 0, w, h);
      const px = ctx.getImageData(0, 0, w, h).data;
      const input = new Float32Array(3 * 1024 * 1024);
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const o = (y * w + x) * 4;
          for (let c = 0; c < 3; c++) input[c * 1024 * 1024 + y * 1024 + x] = (px[o + c] - MEAN[c]) / STD[c];
        }
      }
      const out = await encoder.run({ image: new ort.Tensor('float32', input, [1, 3, 1024, 1024]) });
      embedding = out.image_embeddings;
    },
    embedding: async () => embedding.getData(),
    decode: async ({ points = [], box, multimask }) => {
      const coords = [];
      const labels = [];
      for (const [x, y, l] of points) {
        coords.push(x * scale, y * scale);
        labels.push(l);
      }
      if (box) {
        coords.push(box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale);
        labels.push(2, 3);
      } else {
        coords.push(0, 0);
        labels.push(-1);
      }
      const n = labels.length;
      const out = await decoder.run({
        image_embeddings: embedding,
        point_coords: new ort.Tensor('float32', Float32Array.from(coords), [1, n, 2]),
        point_labels: new ort.Tensor('float32', Float32Array.from(labels), [1, n]),
        mask_input: new ort.Tensor('float32', new Float32Array(256 * 256), [1, 1, 256, 256]),
        has_mask_input: new ort.Tensor('float32', new Float32Array([0]), [1]),
        orig_im_size: new ort.Tensor('float32', new Float32Array([H, W]), [2]),
      });
      const iou = await out.iou_predictions.getData();
      // Channel 0 is the single mask; 1-3 the candidates, of which the best by predicted IoU.
      let pick = 0;
      if (multimask) {
        pick = 1;
        for (let i = 2; i <= 3; i++) if (iou[i] > iou[pick]) pick = i;
      }
      const logits = await out.masks.getData();
      const plane = W * H;
      const mask = new Uint8Array(plane);
      for (let i = 0; i < plane; i++) mask[i] = logits[pick * plane + i] > 0 ? 1 : 0;
      return mask;
    },
    dispose: () => {
      encoder.release?.();
      decoder?.release?.();
    },
  };
}

// ------------------------------------------------------------------ candle-transformers

// candle-transformers 0.11.1's MobileSAM in wasm (one thread, SIMD), run as candle's own
// segment-anything wasm example runs it: f32 safetensors from the Cache API, the image resized
// to 1024 on its longest side with CatmullRom inside the wasm, the masks upsampled with
// nearest-neighbour (see bench/candle-peer/src/lib.rs). It takes RGBA pixels where the example
// takes encoded image bytes, so that its input is the same bitmap as the others'.
async function candle() {
  const { default: init, CandleSam } = await import('/out/candle-peer/candle_peer.js');
  await init();
  const sam = new CandleSam(await cachedBytes('/out/mobile_sam_candle.safetensors'));
  return {
    info: 'candle-transformers 0.11.1 wasm, 1 thread',
    encode: async (bitmap) => {
      const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
      const ctx = canvas.getContext('2d');
      ctx.drawImage(bitmap, 0, 0);
      const px = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
      sam.setImage(new Uint8Array(px.buffer, px.byteOffset, px.length), bitmap.width, bitmap.height);
    },
    decode: async ({ points = [], box, multimask }) =>
      sam.decode(Float32Array.from(points.flat()), Float32Array.from(box ?? []), multimask),
    dispose: () => sam.free(),
  };
}

const SYSTEMS = {
  'websam-cpu': () => websam('cpu'),
  'websam-cpu-mt': () => websamThreads(),
  'websam-webgpu': () => websam('webgpu'),
  'ort-wasm-1': () => onnx('wasm', 1),
  'ort-wasm-mt': () => onnx('wasm', navigator.hardwareConcurrency),
  'candle-wasm': () => candle(),
  'ort-webgpu': () => onnx('webgpu', 1),
};

async function memory() {
  if (!performance.measureUserAgentSpecificMemory) return null;
  return (await performance.measureUserAgentSpecificMemory()).bytes;
}

/** Load, encode and decode timings for one system (`runs` of each; hover for `hoverMs`). */
export async function measure(name, { encodeRuns = 3, decodeRuns = 5, hoverMs = 3000 } = {}) {
  const [loadMs, sys] = await timed(SYSTEMS[name]);
  const bitmap = await fixtureImage();
  const encode = [];
  for (let i = 0; i < encodeRuns; i++) encode.push((await timed(() => sys.encode(bitmap)))[0]);
  const decode = {};
  const ones = {};
  for (const [key, prompt] of Object.entries(PROMPTS)) {
    const [, first] = await timed(() => sys.decode(prompt)); // warm-up
    ones[key] = first.reduce((a, b) => a + b, 0);
    const xs = [];
    for (let i = 0; i < decodeRuns; i++) xs.push((await timed(() => sys.decode(prompt)))[0]);
    decode[key] = stats(xs);
  }
  // Hover: one-click decodes back to back at moving positions, as a page's mouse-move preview.
  let hover = null;
  if (hoverMs > 0) {
    const t = performance.now();
    let n = 0;
    while (performance.now() - t < hoverMs) {
      await sys.decode({ points: [[50 + ((n * 37) % 540), 40 + ((n * 53) % 400), 1]], multimask: true });
      n++;
    }
    hover = (n * 1000) / (performance.now() - t);
  }
  const mem = await memory();
  sys.dispose();
  return { name, info: sys.info, loadMs, encode: stats(encode), decode, hover, memory: mem, ones };
}

/**
 * The encoder alone on another model (SAM ViT-B/L/H, bench/vit_browser.mjs): websam on the CPU
 * path with `weights` (Sam on 1 thread, SamWorker on the machine's threads), onnxruntime-web's
 * wasm backend on `encoder` (the official image encoder's ONNX export of the same weights).
 * Returns the encode times and every 97th value of the embedding, to compare the systems.
 */
export async function encodeOnly(name, { weights, encoder, runs = 3 }) {
  const bitmap = await fixtureImage();
  let encode;
  let embedding;
  let info;
  let dispose;
  let loadMs;
  if (name.startsWith('websam')) {
    const t = performance.now();
    const sam = name === 'websam-cpu-mt'
      ? await SamWorker.load({ weights, backend: 'cpu', cache: false })
      : await Sam.load({ weights, backend: 'cpu', cache: false });
    loadMs = performance.now() - t;
    info = `wasm, ${sam.threads} thread${sam.threads > 1 ? 's' : ''}`;
    encode = () => sam.setImage(bitmap);
    embedding = async () => (await sam.getEmbedding()).data;
    dispose = () => sam.dispose();
  } else {
    const threads = name === 'ort-wasm-mt' ? navigator.hardwareConcurrency : 1;
    const t = performance.now();
    const sys = await onnx('wasm', threads, encoder);
    loadMs = performance.now() - t;
    ({ info, encode, embedding, dispose } = sys);
    const run = encode;
    encode = () => run(bitmap);
  }
  await encode(); // warm-up
  const times = [];
  for (let i = 0; i < runs; i++) times.push((await timed(encode))[0]);
  const data = await embedding();
  const sample = [];
  for (let i = 0; i < data.length; i += 97) sample.push(data[i]);
  dispose();
  return { name, info: info.trim(), loadMs, encode: stats(times), sample };
}

/** In a fresh page whose weights are in the Cache API: page load to the first mask. */
export async function firstMask(name) {
  const sys = await SYSTEMS[name]();
  await sys.encode(await fixtureImage());
  await sys.decode(PROMPTS.point);
  const ms = performance.now();
  sys.dispose();
  return ms;
}

// ------------------------------------------------------------------ SAM 2.1 (bench/sam2_browser.mjs)

const IMAGENET_MEAN = [0.485, 0.456, 0.406];
const IMAGENET_STD = [0.229, 0.224, 0.225];

async function imageAt(url) {
  const blob = await (await fetch(url)).blob();
  return createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
}

/**
 * onnxruntime-web's wasm backend on the SAM 2 exports (bench/sam2_export_onnx.py), used as the
 * peers' web demos use them. The encode is the preprocessing and `encoder.run`: SAM 2 resizes to
 * 1024x1024 without keeping the aspect ratio (bilinear, antialiased, as torchvision's Resize);
 * here, as in those demos, a canvas drawImage to 1024x1024 does it (the canvas's default
 * bilinear filter, to 8-bit pixels: the embeddings differ from websam's by that; where the image
 * is enlarged, as chelsea is, torchvision's antialiasing changes nothing), then /255 and
 * ImageNet's mean and std, planar. The decode is `decoder.run` on one prompt (masks bilinear to
 * the image size inside the graph), then the best of the three candidates by predicted IoU
 * thresholded at 0, as websam's `predict` returns it.
 */
async function onnxSam2(threads, encoderUrl, decoderUrl) {
  const ort = await ortLoad();
  ort.env.wasm.numThreads = threads;
  const options = { executionProviders: ['wasm'], graphOptimizationLevel: 'all' };
  const bytes = async (url) => new Uint8Array(await (await fetch(url)).arrayBuffer());
  const encoder = await ort.InferenceSession.create(await bytes(encoderUrl), options);
  const decoder = decoderUrl ? await ort.InferenceSession.create(await bytes(decoderUrl), options) : null;
  const S = 1024;
  let features = null;
  let w = 0;
  let h = 0;
  return {
    info: `onnxruntime-web ${ort.env.versions?.web ?? ''} wasm, ${threads} thread${threads > 1 ? 's' : ''}`,
    encode: async (bitmap) => {
      w = bitmap.width;
      h = bitmap.height;
      const canvas = new OffscreenCanvas(S, S);
      const ctx = canvas.getContext('2d');
      ctx.drawImage(bitmap, 0, 0, S, S);
      const px = ctx.getImageData(0, 0, S, S).data;
      const input = new Float32Array(3 * S * S);
      for (let i = 0; i < S * S; i++) {
        for (let c = 0; c < 3; c++) input[c * S * S + i] = (px[i * 4 + c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
      }
      features = await encoder.run({ image: new ort.Tensor('float32', input, [1, 3, S, S]) });
    },
    embedding: async () => features.image_embed.getData(),
    decode: async ({ points }) => {
      const coords = Float32Array.from(points.flatMap(([x, y]) => [(x * S) / w, (y * S) / h]));
      const labels = Float32Array.from(points.map((p) => p[2]));
      const n = labels.length;
      const out = await decoder.run({
        image_embed: features.image_embed,
        high_res_feats_0: features.high_res_feats_0,
        high_res_feats_1: features.high_res_feats_1,
        point_coords: new ort.Tensor('float32', coords, [1, n, 2]),
        point_labels: new ort.Tensor('float32', labels, [1, n]),
        mask_input: new ort.Tensor('float32', new Float32Array(256 * 256), [1, 1, 256, 256]),
        has_mask_input: new ort.Tensor('float32', new Float32Array([0]), [1]),
        orig_im_size: new ort.Tensor('float32', new Float32Array([h, w]), [2]),
      });
      const iou = await out.iou_predictions.getData();
      let pick = 0;
      for (let i = 1; i < iou.length; i++) if (iou[i] > iou[pick]) pick = i;
      const logits = await out.masks.getData();
      const plane = w * h;
      const mask = new Uint8Array(plane);
      for (let i = 0; i < plane; i++) mask[i] = logits[pick * plane + i] > 0 ? 1 : 0;
      return { mask, iou: Array.from(iou), best: pick };
    },
    dispose: () => {
      encoder.release?.();
      decoder?.release?.();
    },
  };
}

/**
 * SAM 2.1 on the CPU path (bench/sam2_browser.mjs): websam (`Sam` on 1 thread, `SamWorker` on
 * the machine's threads) on the checkpoint `weights`, or onnxruntime-web's wasm backend (1
 * thread, or the machine's) on the ONNX exports `encoder` and `decoder` of the same weights.
 * The image at `image`: a warm-up encode, `runs` timed encodes; then, where there is a decoder
 * (websam always), a warm-up decode of `prompt` and `runs` timed ones. Returns the times, every
 * 97th value of image_embed, and the decode's best mask (its pixel count, predicted IoUs, and
 * every 7th pixel, to compare the systems).
 */
export async function sam2Only(name, { weights, encoder, decoder, image, prompt, runs = 3 }) {
  const bitmap = await imageAt(image);
  const t = performance.now();
  let sys;
  if (name.startsWith('websam')) {
    const mt = name === 'websam-cpu-mt';
    const threads = mt ? navigator.hardwareConcurrency : 1;
    const sam = mt
      ? await SamWorker.load({ weights, backend: 'cpu', cache: false, threads })
      : await Sam.load({ weights, backend: 'cpu', cache: false, threads });
    if (sam.family !== 'sam2') throw new Error(`websam loaded a ${sam.family} model from ${weights}`);
    sys = {
      info: `websam wasm${mt ? ', SamWorker' : ''}, ${sam.threads} thread${sam.threads > 1 ? 's' : ''}`,
      encode: (b) => sam.setImage(b),
      embedding: async () => (await sam.getEmbedding()).data,
      decode: async (p) => {
        const r = await sam.predict(p);
        return { mask: r.masks[r.best].data, iou: r.masks.map((m) => m.score), best: r.best };
      },
      dispose: () => sam.dispose(),
    };
  } else {
    sys = await onnxSam2(name === 'ort-wasm-mt' ? navigator.hardwareConcurrency : 1, encoder, decoder);
  }
  const loadMs = performance.now() - t;
  await sys.encode(bitmap); // warm-up
  const encodes = [];
  for (let i = 0; i < runs; i++) encodes.push((await timed(() => sys.encode(bitmap)))[0]);
  const data = await sys.embedding();
  const sample = [];
  for (let i = 0; i < data.length; i += 97) sample.push(data[i]);
  let decode = null;
  let mask = null;
  if (name.startsWith('websam') || decoder) {
    const first = await sys.decode(prompt); // warm-up
    const decodes = [];
    for (let i = 0; i < runs; i++) decodes.push((await timed(() => sys.decode(prompt)))[0]);
    decode = stats(decodes);
    const pixels = [];
    for (let i = 0; i < first.mask.length; i += 7) pixels.push(first.mask[i]);
    mask = { ones: first.mask.reduce((a, b) => a + b, 0), iou: first.iou, best: first.best, pixels };
  }
  sys.dispose();
  return { name, info: sys.info.trim(), loadMs, encode: stats(encodes), decode, sample, mask };
}
