// Argument checks and conversions shared by `Sam` (websam.js) and `SamWorker` (worker.js).
// Every failure is an Error (TypeError for a value of the wrong kind) whose message names the
// argument and what was given.

/** Side of the decoder's low-res masks and of `maskInput`. */
const LOW_RES = 256;
/** Floats in an image embedding: 1 x 256 x 64 x 64. */
const EMBEDDING_LENGTH = 256 * 64 * 64;
/** The Cache API store that keeps weights fetched by URL. */
export const CACHE_NAME = 'websam-weights-v1';
const BACKENDS = ['auto', 'webgpu', 'cpu'];
const PRECISIONS = ['f32', 'f16'];

/** A short description of a value for error messages: `a string`, `a Float64Array(3)`. */
function describe(v) {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name}(${v.length ?? v.byteLength})`;
  if (typeof v === 'object') return `a ${v.constructor?.name ?? 'object'}`;
  return `a ${typeof v} (${String(v).slice(0, 40)})`;
}

/** Checks the options of `Sam.load` / `SamWorker.load`; returns them with defaults. */
export function loadOptions(options) {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(`load: give an options object { weights, backend, onProgress }, not ${describe(options)}`);
  }
  const { weights, backend = 'auto', onProgress, cache = true } = options;
  if (weights === undefined || weights === null) {
    throw new TypeError('load: `weights` is missing: give a URL, an ArrayBuffer, a Uint8Array or a Blob');
  }
  if (!BACKENDS.includes(backend)) {
    throw new TypeError(`load: backend ${JSON.stringify(backend)}; use "auto", "webgpu" or "cpu"`);
  }
  if (onProgress !== undefined && typeof onProgress !== 'function') {
    throw new TypeError(`load: onProgress must be a function, not ${describe(onProgress)}`);
  }
  if (typeof cache !== 'boolean') {
    throw new TypeError(`load: cache must be true or false, not ${describe(cache)}`);
  }
  const { threads, precision = 'f32', integrity } = options;
  if (integrity !== undefined) parseIntegrity(integrity);
  if (!PRECISIONS.includes(precision)) {
    throw new TypeError(`load: precision ${JSON.stringify(precision)}; use "f32" or "f16"`);
  }
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1 && threads <= 64)) {
    throw new TypeError(`load: threads must be an integer from 1 to 64, not ${describe(threads)}`);
  }
  return { ...options, weights, backend, onProgress, cache, threads, precision, integrity };
}

/** The hash functions of Subresource Integrity, strongest last, by SRI prefix. */
const SRI_ALGORITHMS = { sha256: 'SHA-256', sha384: 'SHA-384', sha512: 'SHA-512' };

/**
 * Reads an SRI string ("sha256-<base64>", several separated by spaces): `[{ algorithm, digest }]`
 * for its strongest algorithm only, as browsers check `<script integrity>`.
 */
export function parseIntegrity(integrity) {
  if (typeof integrity !== 'string') {
    throw new TypeError(`load: integrity must be a string such as "sha256-<base64 digest>", not ${describe(integrity)}`);
  }
  const entries = integrity.trim().split(/\s+/).filter(Boolean).map((token) => {
    const m = /^(sha256|sha384|sha512)-([A-Za-z0-9+/]+={0,2})(\?.*)?$/.exec(token);
    if (!m) {
      throw new TypeError(`load: integrity ${JSON.stringify(token)} is not "sha256-", "sha384-" or "sha512-" followed by a base64 digest`);
    }
    return { algorithm: m[1], digest: m[2] };
  });
  if (entries.length === 0) throw new TypeError('load: integrity is empty');
  const order = Object.keys(SRI_ALGORITHMS);
  const strongest = Math.max(...entries.map((e) => order.indexOf(e.algorithm)));
  return entries.filter((e) => order.indexOf(e.algorithm) === strongest);
}

function subtleCrypto() {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new Error('load: checking weights needs crypto.subtle, which browsers give secure contexts only (https or localhost)');
  }
  return subtle;
}

/** The base64 digest of `bytes` with `algorithm` ("sha256", "sha384" or "sha512"). */
export async function digestOf(bytes, algorithm) {
  const hash = new Uint8Array(await subtleCrypto().digest(SRI_ALGORITHMS[algorithm], bytes));
  let binary = '';
  for (const b of hash) binary += String.fromCharCode(b);
  return btoa(binary);
}

/**
 * Checks `bytes` against an SRI string; an Error naming both digests when they differ. Nothing
 * of the bytes is used (or cached) before this.
 */
export async function checkIntegrity(bytes, integrity, source) {
  const wanted = parseIntegrity(integrity);
  const { algorithm } = wanted[0];
  const got = await digestOf(bytes, algorithm);
  if (!wanted.some((w) => w.digest === got)) {
    throw new Error(`load: the weights from ${source} have integrity ${algorithm}-${got}, expected ${wanted.map((w) => `${w.algorithm}-${w.digest}`).join(' or ')}`);
  }
}

/** The header that keeps a cached checkpoint's own SHA-256, checked on every read. */
const CACHE_DIGEST_HEADER = 'x-websam-sha256';

/** A URL string resolved against the page (or worker) address; other values unchanged. */
export function resolveUrl(weights) {
  if (typeof weights !== 'string' && !(weights instanceof URL)) return weights;
  const base = globalThis.location?.href;
  try {
    return new URL(weights, base).href;
  } catch {
    throw new TypeError(`load: weights URL ${JSON.stringify(String(weights))} is not a valid URL`);
  }
}

function report(onProgress, stage, loaded, total) {
  if (onProgress) onProgress({ stage, loaded, total });
}

/** Reads a response body, reporting bytes as they arrive. */
export async function readBody(response, stage, onProgress, url) {
  const header = Number(response.headers.get('content-length'));
  const total = Number.isFinite(header) && header > 0 ? header : undefined;
  if (!response.body) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    report(onProgress, stage, bytes.byteLength, bytes.byteLength);
    return bytes;
  }
  const reader = response.body.getReader();
  // With a known length the chunks go straight into one array: a multi-GB checkpoint is held
  // once, not as chunks and a copy. A compressed transfer's length is the compressed one, so
  // chunks past it are kept aside and joined at the end.
  let bytes = null;
  try {
    if (total !== undefined) bytes = new Uint8Array(total);
  } catch {
    // A length the browser cannot allocate at once (or a header that lies): read in chunks.
  }
  const chunks = [];
  let loaded = 0;
  report(onProgress, stage, 0, total);
  for (;;) {
    let step;
    try {
      step = await reader.read();
    } catch (e) {
      throw new Error(`reading weights from ${url} failed after ${loaded} bytes: ${e.message ?? e}`);
    }
    if (step.done) break;
    if (bytes && chunks.length === 0 && loaded + step.value.byteLength <= bytes.byteLength) {
      bytes.set(step.value, loaded);
    } else {
      if (bytes && chunks.length === 0) chunks.push(bytes.subarray(0, loaded));
      chunks.push(step.value);
    }
    loaded += step.value.byteLength;
    // A compressed transfer reports the compressed length: never show more than 100%.
    report(onProgress, stage, loaded, total === undefined ? undefined : Math.max(total, loaded));
  }
  if (chunks.length > 0 || !bytes) {
    bytes = new Uint8Array(loaded);
    let at = 0;
    for (const c of chunks) {
      bytes.set(c, at);
      at += c.byteLength;
    }
  } else if (loaded < bytes.byteLength) {
    bytes = bytes.subarray(0, loaded);
  }
  report(onProgress, stage, loaded, loaded);
  return bytes;
}

async function openCache(enabled) {
  if (!enabled || typeof caches === 'undefined') return null;
  try {
    return await caches.open(CACHE_NAME);
  } catch {
    // Opaque origins and some private modes refuse the Cache API: load without it.
    return null;
  }
}

/**
 * The checkpoint bytes from a URL (fetched with byte progress, or read from the Cache API),
 * an ArrayBuffer, a typed array or a Blob. `keep()` stores bytes fetched from the network in
 * the cache; call it once they proved to be a checkpoint.
 */
export async function readWeights(weights, { onProgress, cache, integrity }) {
  const none = async () => {};
  const checked = async (bytes, source) => {
    if (integrity !== undefined) await checkIntegrity(bytes, integrity, source);
    return { bytes, keep: none };
  };
  if (weights instanceof ArrayBuffer) {
    report(onProgress, 'read', weights.byteLength, weights.byteLength);
    return checked(new Uint8Array(weights), 'the ArrayBuffer');
  }
  if (ArrayBuffer.isView(weights)) {
    const bytes = new Uint8Array(weights.buffer, weights.byteOffset, weights.byteLength);
    report(onProgress, 'read', bytes.byteLength, bytes.byteLength);
    return checked(bytes, `the ${weights.constructor.name}`);
  }
  if (typeof Blob !== 'undefined' && weights instanceof Blob) {
    const bytes = await readBody(new Response(weights, { headers: { 'content-length': String(weights.size) } }),
      'read', onProgress, weights.name ?? 'the Blob');
    return checked(bytes, weights.name ?? 'the Blob');
  }
  if (typeof weights !== 'string' && !(weights instanceof URL)) {
    throw new TypeError(`load: weights must be a URL, an ArrayBuffer, a Uint8Array or a Blob, not ${describe(weights)}`);
  }
  const url = resolveUrl(weights);
  const store = await openCache(cache);
  if (store) {
    const hit = await store.match(url);
    if (hit) {
      // Verified on every read: against the digest stored with it, and the caller's integrity.
      // A corrupt or unverifiable entry is dropped and the weights fetched again.
      const bytes = await readBody(hit, 'cache', onProgress, url);
      const stored = hit.headers.get(CACHE_DIGEST_HEADER);
      let why = stored ? null : 'it has no stored digest';
      if (!why && (await digestOf(bytes, 'sha256')) !== stored) why = 'its bytes do not match their stored SHA-256';
      if (!why && integrity !== undefined) {
        why = await checkIntegrity(bytes, integrity, url).then(() => null, (e) => e.message);
      }
      if (!why) return { bytes, keep: none };
      console.warn(`websam: the cached weights of ${url} were dropped (${why}); fetching them again`);
      await store.delete(url);
    }
  }
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`fetching weights from ${url} failed: ${e.message ?? e}`);
  }
  if (!response.ok) {
    throw new Error(`fetching weights from ${url} failed: HTTP ${response.status} ${response.statusText}`.trim());
  }
  const bytes = await readBody(response, 'download', onProgress, url);
  if (integrity !== undefined) await checkIntegrity(bytes, integrity, url);
  const keep = async () => {
    if (!store) return;
    try {
      await store.put(url, new Response(bytes, {
        headers: {
          'content-type': 'application/octet-stream',
          'content-length': String(bytes.byteLength),
          [CACHE_DIGEST_HEADER]: await digestOf(bytes, 'sha256'),
        },
      }));
    } catch (e) {
      // Over quota: the model still loads, it is fetched again next time.
      console.warn(`websam: weights not cached (${e.message ?? e})`);
    }
  };
  return { bytes, keep };
}

const isInt = (v) => Number.isInteger(v) && v > 0;

function elementSize(image) {
  if (typeof HTMLImageElement !== 'undefined' && image instanceof HTMLImageElement) {
    return [image.naturalWidth, image.naturalHeight];
  }
  if (typeof HTMLVideoElement !== 'undefined' && image instanceof HTMLVideoElement) {
    return [image.videoWidth, image.videoHeight];
  }
  if (typeof VideoFrame !== 'undefined' && image instanceof VideoFrame) {
    return [image.displayWidth, image.displayHeight];
  }
  return [image.width, image.height];
}

function isDrawable(image) {
  return ['ImageBitmap', 'HTMLImageElement', 'HTMLCanvasElement', 'OffscreenCanvas', 'HTMLVideoElement', 'VideoFrame', 'SVGImageElement']
    .some((name) => typeof globalThis[name] !== 'undefined' && image instanceof globalThis[name]);
}

function canvas2d(width, height) {
  const canvas = typeof OffscreenCanvas !== 'undefined'
    ? new OffscreenCanvas(width, height)
    : Object.assign(document.createElement('canvas'), { width, height });
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  if (!ctx) throw new Error('setImage: no 2D canvas context to read the image pixels');
  return ctx;
}

/**
 * An image as RGBA bytes: `{ data: Uint8Array(width*height*4), width, height, owned }`. `data`
 * is a view of the caller's own buffer (ImageData, plain objects) unless `owned`: pixels read
 * here into a buffer of their own.
 */
export async function toRgba(image) {
  if (image === null || typeof image !== 'object') {
    throw new TypeError(`setImage: give an ImageData, ImageBitmap, HTMLImageElement, HTMLCanvasElement or {data, width, height}, not ${describe(image)}`);
  }
  if (typeof Blob !== 'undefined' && image instanceof Blob) {
    let bitmap;
    try {
      // The file's own pixels, as the reference reads them: no colour-profile conversion.
      bitmap = await createImageBitmap(image, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    } catch (e) {
      throw new Error(`setImage: the ${image.type || 'file'} could not be decoded as an image (${e.message ?? e})`);
    }
    try {
      return await toRgba(bitmap);
    } finally {
      bitmap.close();
    }
  }
  if (isDrawable(image)) {
    if (typeof HTMLImageElement !== 'undefined' && image instanceof HTMLImageElement && !(image.complete && image.naturalWidth)) {
      try {
        await image.decode();
      } catch {
        throw new Error(`setImage: the image ${image.currentSrc || image.src || ''} did not load or decode`.replace('  ', ' '));
      }
    }
    const [width, height] = elementSize(image);
    if (!isInt(width) || !isInt(height)) {
      throw new Error(`setImage: the ${image.constructor.name} has no pixels (${width}x${height})`);
    }
    const ctx = canvas2d(width, height);
    ctx.drawImage(image, 0, 0, width, height);
    const pixels = ctx.getImageData(0, 0, width, height, { colorSpace: 'srgb' });
    return { data: new Uint8Array(pixels.data.buffer), width, height, owned: true };
  }
  const { data, width, height } = image;
  if (!isInt(width) || !isInt(height)) {
    throw new TypeError(`setImage: width and height must be positive integers, not ${describe(width)} and ${describe(height)}`);
  }
  let bytes;
  if (data instanceof Uint8Array || data instanceof Uint8ClampedArray) {
    bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  } else if (data instanceof ArrayBuffer) {
    bytes = new Uint8Array(data);
  } else {
    throw new TypeError(`setImage: data must be a Uint8Array or Uint8ClampedArray of RGBA bytes, not ${describe(data)}`);
  }
  if (bytes.length !== width * height * 4) {
    throw new TypeError(`setImage: ${bytes.length} bytes for a ${width}x${height} RGBA image; expected ${width * height * 4}`);
  }
  return { data: bytes, width, height };
}

function finiteNumbers(value, n, what) {
  const ok = (Array.isArray(value) || ArrayBuffer.isView(value)) && value.length === n &&
    Array.prototype.every.call(value, (v) => typeof v === 'number' && Number.isFinite(v));
  if (!ok) throw new TypeError(`predict: ${what} must be ${n} finite numbers, not ${describe(value)}`);
  return value;
}

const PROMPT_KEYS = ['points', 'box', 'maskInput', 'multimask', 'maxHoleArea', 'maxSprinkleArea'];

/**
 * Checks a prompt and flattens it for the wasm module: `{ points: Float32Array([x, y, label,
 * ...]) | undefined, box: Float32Array(4) | undefined, maskInput: Float32Array(65536) |
 * undefined, multimask: boolean, maxHoleArea: number, maxSprinkleArea: number }`.
 */
export function toPrompt(prompt) {
  if (prompt === undefined) prompt = {};
  if (prompt === null || typeof prompt !== 'object' || Array.isArray(prompt)) {
    throw new TypeError(`predict: give a prompt object { points, box, maskInput, multimask }, not ${describe(prompt)}`);
  }
  for (const key of Object.keys(prompt)) {
    if (!PROMPT_KEYS.includes(key)) {
      throw new TypeError(`predict: unknown prompt field "${key}"; the fields are ${PROMPT_KEYS.join(', ')}`);
    }
  }
  const { points, box, maskInput, multimask = true, maxHoleArea = 0, maxSprinkleArea = 0 } = prompt;
  let flatPoints;
  if (points !== undefined && points !== null) {
    if (!Array.isArray(points)) {
      throw new TypeError(`predict: points must be an array of [x, y, label], not ${describe(points)}`);
    }
    flatPoints = new Float32Array(points.length * 3);
    points.forEach((p, i) => {
      const triple = Array.isArray(p) || ArrayBuffer.isView(p) ? p : [p?.x, p?.y, p?.label];
      finiteNumbers(triple, 3, `point ${i} ([x, y, label] or {x, y, label})`);
      if (triple[2] !== 0 && triple[2] !== 1) {
        throw new TypeError(`predict: point ${i} has label ${triple[2]}; use 1 (foreground) or 0 (background)`);
      }
      flatPoints.set(triple, i * 3);
    });
  }
  const flatBox = box === undefined || box === null ? undefined : Float32Array.from(finiteNumbers(box, 4, 'box [x0, y0, x1, y1]'));
  let mask;
  if (maskInput !== undefined && maskInput !== null) {
    if (!(maskInput instanceof Float32Array) || maskInput.length !== LOW_RES * LOW_RES) {
      throw new TypeError(`predict: maskInput must be a Float32Array of ${LOW_RES}x${LOW_RES} low-res logits (a mask's lowResLogits), not ${describe(maskInput)}`);
    }
    mask = maskInput;
  }
  if (typeof multimask !== 'boolean') {
    throw new TypeError(`predict: multimask must be true or false, not ${describe(multimask)}`);
  }
  for (const [name, area] of [['maxHoleArea', maxHoleArea], ['maxSprinkleArea', maxSprinkleArea]]) {
    if (typeof area !== 'number' || !Number.isFinite(area) || area < 0) {
      throw new TypeError(`predict: ${name} must be a number of low-res pixels, 0 or more (0: off), not ${describe(area)}`);
    }
  }
  return { points: flatPoints, box: flatBox, maskInput: mask, multimask, maxHoleArea, maxSprinkleArea };
}

/** Adds to each mask its own channel of the low-res logits (a view, no copy). */
export function withMaskLogits(result) {
  const plane = LOW_RES * LOW_RES;
  result.masks.forEach((m, i) => {
    m.lowResLogits = result.lowResLogits.subarray(i * plane, (i + 1) * plane);
  });
  return result;
}

const NPY_MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];

const NPZ_MAGIC = [0x50, 0x4b, 0x03, 0x04];
/** SAM 2's high-resolution features: 32x256x256 and 64x128x128. */
const HIGH_RES_LENGTHS = [32 * 256 * 256, 64 * 128 * 128];

/**
 * Checks `setEmbedding`'s arguments: `{ kind: 'f32', data, highRes, width, height }` (`highRes`
 * SAM 2's two maps, or undefined) or `{ kind: 'file', data, width, height }` (`.npy` or `.npz`
 * bytes).
 */
export function toEmbedding(data, size) {
  let highRes;
  if (data !== null && typeof data === 'object' && !ArrayBuffer.isView(data) && !(data instanceof ArrayBuffer) && 'data' in data) {
    // An object from getEmbedding(): its own width and height unless given.
    size = size ?? { width: data.width, height: data.height };
    highRes = data.highRes ?? undefined;
    data = data.data;
  }
  if (size === null || typeof size !== 'object') {
    throw new TypeError(`setEmbedding: give the original image size { width, height } as the second argument, not ${describe(size)}`);
  }
  const { width, height } = size;
  if (!isInt(width) || !isInt(height)) {
    throw new TypeError(`setEmbedding: width and height must be positive integers, not ${describe(width)} and ${describe(height)}`);
  }
  if (data instanceof Float32Array) {
    if (data.length !== EMBEDDING_LENGTH) {
      throw new TypeError(`setEmbedding: ${data.length} floats; an embedding has ${EMBEDDING_LENGTH} (1x256x64x64)`);
    }
    if (highRes !== undefined) {
      const ok = Array.isArray(highRes) && highRes.length === 2
        && highRes.every((m, i) => m instanceof Float32Array && m.length === HIGH_RES_LENGTHS[i]);
      if (!ok) {
        throw new TypeError(`setEmbedding: highRes must be SAM 2's two maps, Float32Arrays of ${HIGH_RES_LENGTHS.join(' and ')} floats (32x256x256, 64x128x128), not ${describe(highRes)}`);
      }
    }
    return { kind: 'f32', data, highRes, width, height };
  }
  let bytes;
  if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else if (data instanceof Uint8Array) bytes = data;
  const starts = (magic) => magic.every((b, i) => bytes[i] === b);
  if (!bytes || !(starts(NPY_MAGIC) || starts(NPZ_MAGIC))) {
    throw new TypeError(`setEmbedding: give a Float32Array of ${EMBEDDING_LENGTH} floats, an object from getEmbedding, or the bytes of a .npy (SAM) or .npz (SAM 2) file, not ${describe(data)}`);
  }
  return { kind: 'file', data: bytes, width, height };
}

/** `getEmbedding`'s format: "f32", "npy" (SAM) or "npz" (SAM 2). */
export function embeddingFormat(options) {
  const format = options?.format ?? 'f32';
  if (!['f32', 'npy', 'npz'].includes(format)) {
    throw new TypeError(`getEmbedding: format ${JSON.stringify(format)}; use "f32", "npy" (SAM) or "npz" (SAM 2)`);
  }
  return format;
}

const OUTPUT_MODES = ['coco_rle', 'uncompressed_rle', 'binary_mask'];
/** The generator's options (camelCase), checked in the wasm module; these stay in JS. */
const GENERATE_JS_OPTIONS = ['outputMode'];

/**
 * Checks the options of `generate` and the call's `{ onProgress, signal }`. Returns the JSON of
 * the generator's options (the wasm module checks their values and names) and the JS ones.
 */
/**
 * `Sam.train`'s objects checked and laid out for the module: `[{ mask: Uint8Array, width,
 * height, embedding: Float32Array | undefined }]`.
 */
export function trainObjects(objects) {
  if (!Array.isArray(objects) || objects.length === 0) {
    throw new TypeError('train: give a non-empty array of objects { mask, width, height, embedding }');
  }
  return objects.map((o, i) => {
    const { mask, width, height } = o ?? {};
    if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
      throw new TypeError(`train: object ${i} needs integer width and height`);
    }
    if (!(mask instanceof Uint8Array) || mask.length !== width * height) {
      throw new TypeError(`train: object ${i}'s mask must be a Uint8Array of width * height (${width * height}) values`);
    }
    let embedding = o.embedding?.data ?? o.embedding;
    if (embedding !== undefined && !(embedding instanceof Float32Array)) {
      throw new TypeError(`train: object ${i}'s embedding must be a Float32Array (256*64*64) or an object from getEmbedding`);
    }
    return { mask, width, height, embedding };
  });
}

export function generateOptions(options, call) {
  if (options === undefined || options === null) options = {};
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(`generate: options must be an object, not ${describe(options)}`);
  }
  const { outputMode = 'coco_rle' } = options;
  if (!OUTPUT_MODES.includes(outputMode)) {
    throw new TypeError(`generate: outputMode ${JSON.stringify(outputMode)}; use "coco_rle", "uncompressed_rle" or "binary_mask"`);
  }
  const generator = {};
  for (const [key, value] of Object.entries(options)) {
    if (GENERATE_JS_OPTIONS.includes(key) || value === undefined) continue;
    if (typeof value === 'number' && !Number.isFinite(value)) {
      throw new RangeError(`generate: ${key} must be a finite number, not ${value}`);
    }
    generator[key] = value;
  }
  const { onProgress, signal } = call ?? {};
  if (onProgress !== undefined && typeof onProgress !== 'function') {
    throw new TypeError(`generate: onProgress must be a function, not ${describe(onProgress)}`);
  }
  if (signal !== undefined && !(typeof signal === 'object' && signal !== null && typeof signal.aborted === 'boolean')) {
    throw new TypeError(`generate: signal must be an AbortSignal, not ${describe(signal)}`);
  }
  return { json: JSON.stringify(generator), outputMode, onProgress, signal };
}

/**
 * The message of a call cut short by a panic (or any trap) in the wasm module: its message, and
 * whether the package reloads the model itself.
 */
export function panicMessage(panic, reloaded) {
  return `websam stopped on an internal error (${panic}); ${reloaded
    ? 'the model is reloaded on the next call' : 'load the model again'}`;
}

/** What an aborted generate rejects with: the signal's reason, else an AbortError. */
export function abortReason(signal) {
  return signal?.reason ?? new DOMException('generate was aborted', 'AbortError');
}

/** The run lengths of a COCO RLE string (pycocotools' `rleFrString`), checked. */
export function rleCountsFromString(s, pixels) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      if (!(c >= 0 && c <= 63) || k > 6) throw new Error(`COCO RLE string: bad character at ${p}`);
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++;
      k++;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    if (x < 0) throw new Error('COCO RLE string: a negative run length');
    counts.push(x);
  }
  const total = counts.reduce((a, b) => a + b, 0);
  if (total !== pixels) throw new Error(`COCO RLE string: the runs cover ${total} pixels, the mask has ${pixels}`);
  return counts;
}

/**
 * The mask of a record's `segmentation` (COCO RLE `{ size: [h, w], counts }`, counts a string
 * or an array of run lengths): `{ data: Uint8Array (1 inside, row-major), width, height }`.
 */
export function decodeMask(segmentation) {
  const size = segmentation?.size;
  if (!Array.isArray(size) || size.length !== 2 || !size.every((v) => Number.isInteger(v) && v > 0)) {
    throw new TypeError('decodeMask: give a COCO RLE { size: [height, width], counts }');
  }
  const [height, width] = size;
  const counts = typeof segmentation.counts === 'string'
    ? rleCountsFromString(segmentation.counts, width * height)
    : segmentation.counts;
  if (!Array.isArray(counts)) throw new TypeError('decodeMask: counts must be a string or an array');
  const data = new Uint8Array(width * height);
  let i = 0;
  counts.forEach((run, j) => {
    if (j % 2 === 1) {
      for (let k = i; k < i + run && k < data.length; k++) {
        const x = Math.floor(k / height);
        data[(k - x * height) * width + x] = 1;
      }
    }
    i += run;
  });
  if (i !== width * height) throw new Error(`decodeMask: the runs cover ${i} pixels, the mask has ${width * height}`);
  return { data, width, height };
}

/** Records as `generate` returns them in `outputMode`, from the wasm module's JSON (coco_rle). */
export function recordsIn(json, outputMode) {
  const records = JSON.parse(json);
  if (outputMode === 'coco_rle') return records;
  for (const r of records) {
    const { size, counts } = r.segmentation;
    r.segmentation = outputMode === 'binary_mask'
      ? decodeMask(r.segmentation)
      : { size, counts: rleCountsFromString(counts, size[0] * size[1]) };
  }
  return records;
}

/**
 * A module whose one function runs `f32x4.relaxed_madd`: `WebAssembly.validate` accepts it where
 * the engine has relaxed SIMD, which the kernels module needs (the main modules need only SIMD).
 */
const RELAXED_SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 61, 1, 59, 0,
  ...[0, 1, 2].flatMap(() => [253, 12, ...new Array(16).fill(0)]), 253, 133, 2, 11,
]);

/**
 * Where each build's module finds the kernels in a thread's global scope (src/gemm/mod.rs): one
 * name per build, since a worker may hold both, each on its own memory.
 */
export const KERNELS_GLOBAL = { single: 'websamKernels', threaded: 'websamKernelsMt' };

/** Whether this engine has relaxed SIMD. */
export function hasRelaxedSimd() {
  try {
    return WebAssembly.validate(RELAXED_SIMD_PROBE);
  } catch {
    return false;
  }
}

/**
 * The relaxed-SIMD kernels module at `url`, compiled (the CPU path's fused matrix-product
 * kernel), or null where the engine lacks relaxed SIMD, in Node (a file URL), or where the file
 * does not load (a warning says why): the main module's portable kernel then runs, with the
 * same results within rounding.
 */
export async function compileKernels(url) {
  // Node's fetch reads no files: there the portable kernel runs.
  if (!hasRelaxedSimd() || url.protocol === 'file:') return null;
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return await WebAssembly.compile(await response.arrayBuffer());
  } catch (e) {
    console.warn(`websam: the relaxed-SIMD kernels (${url}) did not load, the portable kernel runs: ${e?.message ?? e}`);
    return null;
  }
}

/**
 * Instantiates the compiled kernels `module` on `memory` (the main module's) and installs its
 * exports as `globalThis[name]`, where the main module calls them. False where there is no module
 * or it does not instantiate.
 */
export async function installKernels(module, memory, name) {
  if (!module) return false;
  try {
    const { exports } = await WebAssembly.instantiate(module, { env: { memory } });
    globalThis[name] = exports;
    return true;
  } catch (e) {
    console.warn(`websam: the relaxed-SIMD kernels did not instantiate, the portable kernel runs: ${e?.message ?? e}`);
    return false;
  }
}
