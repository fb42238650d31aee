// websam: Segment Anything (SAM, MobileSAM) in the browser, on WebGPU with a CPU fallback.
// `Sam` runs in the thread that imports it; `SamWorker` (websam/worker) runs the same API in a
// module worker. Both follow the official SamPredictor: set an image once, predict per prompt.
import initWasm, { WebSam } from './websam_core.js';
import {
  CACHE_NAME, loadOptions, readWeights, toEmbedding, toPrompt, toRgba, withMaskLogits,
} from './internal.js';

let wasmReady = null;

/** Instantiates the wasm module once per thread (`wasm`: its URL, bytes or a compiled module). */
function initOnce(wasm) {
  if (!wasmReady) {
    wasmReady = initWasm(wasm === undefined ? undefined : { module_or_path: wasm }).catch((e) => {
      wasmReady = null;
      const message = String(e?.message ?? e);
      const hint = /magic word|MIME type/.test(message)
        ? ' (the server sent something else than websam_core_bg.wasm: a bundler that pre-bundles'
          + ' websam, as the Vite dev server does, needs optimizeDeps: { exclude: [\'websam\'] }; or'
          + ' give the wasm file\'s URL as the `wasm` option)'
        : '';
      throw new Error(`the websam wasm module did not load: ${message}${hint}`);
    });
  }
  return wasmReady;
}

/** Errors from the wasm module arrive as Errors; anything else thrown becomes one. */
function asError(e) {
  return e instanceof Error ? e : new Error(String(e));
}

/** Segment Anything on one thread: the model, the image set, and predictions per prompt. */
export class Sam {
  #core;
  #queue = Promise.resolve();
  #disposed = false;

  /** Use `Sam.load`. */
  constructor(core) {
    if (!(core instanceof WebSam)) throw new TypeError('use Sam.load({ weights }) to make a Sam');
    this.#core = core;
  }

  /**
   * Loads a checkpoint and builds the model. `weights`: a URL (fetched with progress and kept in
   * the Cache API), an ArrayBuffer, a Uint8Array or a Blob of a `.pth`, `.pt` or `.safetensors`
   * file. `backend`: "auto" (WebGPU on a hardware adapter, else the CPU), "webgpu"
   * or "cpu".
   */
  static async load(options) {
    const opts = loadOptions(options);
    const wasm = initOnce(opts.wasm);
    const { bytes, keep } = await readWeights(opts.weights, opts);
    await wasm;
    opts.onProgress?.({ stage: 'init', loaded: bytes.byteLength, total: bytes.byteLength });
    let core;
    try {
      core = await WebSam.load(bytes, opts.backend);
    } catch (e) {
      throw asError(e);
    }
    await keep();
    opts.onProgress?.({ stage: 'ready', loaded: bytes.byteLength, total: bytes.byteLength });
    return new Sam(core);
  }

  /** "webgpu" or "cpu": the backend in use (it turns to "cpu" if a lost GPU is not replaced). */
  get backend() {
    return this.#core.backend;
  }

  /** The WebGPU adapter's name, or undefined on the CPU. */
  get adapterName() {
    return this.#core.adapterName;
  }

  /** Why backend "auto" runs on the CPU, or undefined. */
  get fallbackReason() {
    return this.#core.fallbackReason;
  }

  /** Runs calls one after another, in the order they were made. */
  #run(name, fn) {
    const next = this.#queue.then(async () => {
      if (this.#disposed) throw new Error(`${name}: this model was disposed`);
      try {
        return await fn(this.#core);
      } catch (e) {
        throw asError(e);
      }
    });
    this.#queue = next.catch(() => {});
    return next;
  }

  /** Embeds an image (ImageData, ImageBitmap, img, canvas, Blob or {data, width, height} RGBA). */
  setImage(image) {
    // The pixels are read now, as the call is made, even if earlier calls are still running.
    const rgba = toRgba(image);
    rgba.catch(() => {});
    return this.#run('setImage', async (core) => {
      const { data, width, height } = await rgba;
      await core.setImage(data, width, height);
    });
  }

  /**
   * Masks for a prompt in original image pixels: `points` [[x, y, label]] (1 foreground, 0
   * background), `box` [x0, y0, x1, y1], `maskInput` a previous mask's `lowResLogits`,
   * `multimask` (default true) three candidates instead of one.
   */
  predict(prompt) {
    let p;
    try {
      p = toPrompt(prompt);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#run('predict', async (core) =>
      withMaskLogits(await core.predict(p.points, p.box, p.maskInput, p.multimask)));
  }

  /**
   * The embedding of the image set: `{ data: Float32Array(256*64*64), width, height }`, or with
   * `{ format: 'npy' }` the bytes of a `.npy` file in `data`.
   */
  getEmbedding(options = {}) {
    const format = options?.format ?? 'f32';
    if (format !== 'f32' && format !== 'npy') {
      return Promise.reject(new TypeError(`getEmbedding: format ${JSON.stringify(format)}; use "f32" or "npy"`));
    }
    return this.#run('getEmbedding', (core) => (format === 'npy' ? core.getEmbeddingNpy() : core.getEmbedding()));
  }

  /**
   * Sets an embedding made elsewhere (decode-only use): a Float32Array of 256*64*64, the bytes
   * of a `.npy` file, or an object from `getEmbedding`, for an image of `{ width, height }`.
   */
  setEmbedding(data, size) {
    let e;
    try {
      e = toEmbedding(data, size);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#run('setEmbedding', (core) => (e.kind === 'npy'
      ? core.setEmbeddingNpy(e.data, e.width, e.height)
      : core.setEmbedding(e.data, e.width, e.height)));
  }

  /** Frees the model once the calls already made finish; later calls are refused. */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#queue.then(() => this.#core.free());
  }

  /** Destroys the WebGPU device as a driver reset would; the next call recovers (tests). */
  destroyDeviceForTesting() {
    return this.#run('destroyDeviceForTesting', (core) => core.destroyDeviceForTesting());
  }
}

/** Removes the weights kept by `Sam.load` from the Cache API (all URLs, or one). */
export async function clearWeightsCache(url) {
  if (typeof caches === 'undefined') return false;
  if (url === undefined) return caches.delete(CACHE_NAME);
  const store = await caches.open(CACHE_NAME);
  return store.delete(new URL(url, globalThis.location?.href).href);
}

