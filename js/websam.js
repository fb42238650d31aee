// websam: Segment Anything (SAM, MobileSAM) in the browser, on WebGPU with a CPU fallback.
// `Sam` runs in the thread that imports it; `SamWorker` (websam/worker) runs the same API in a
// module worker. Both follow the official SamPredictor: set an image once, predict per prompt.
import initWasm, { WebSam } from './websam_core.js';
// The threaded build: instantiated only where threads can run (its import alone does nothing).
// A static import, so that bundlers' workers need no code splitting.
import initThreaded, {
  WebSam as WebSamThreaded, initThreadPool, threadResources,
} from './websam_core_mt.js';
import {
  CACHE_NAME, abortReason, generateOptions, loadOptions, readWeights, recordsIn, toEmbedding,
  toPrompt, toRgba, withMaskLogits,
} from './internal.js';

export { decodeMask } from './internal.js';

let wasmReady = null;

function wasmLoadError(e) {
  const message = String(e?.message ?? e);
  const hint = /magic word|MIME type/.test(message)
    ? ' (the server sent something else than websam_core_bg.wasm: a bundler that pre-bundles'
      + ' websam, as the Vite dev server does, needs optimizeDeps: { exclude: [\'websam\'] }; or'
      + ' give the wasm file\'s URL as the `wasm` option)'
    : '';
  return new Error(`the websam wasm module did not load: ${message}${hint}`);
}

/** Instantiates the wasm module once per thread (`wasm`: its URL, bytes or a compiled module). */
function initOnce(wasm) {
  if (!wasmReady) {
    wasmReady = initWasm(wasm === undefined ? undefined : { module_or_path: wasm })
      .then(() => ({ WebSam, threads: 1 }))
      .catch((e) => {
        wasmReady = null;
        throw wasmLoadError(e);
      });
  }
  return wasmReady;
}

/** Threads the auto choice takes at most (each is a worker with its own stack). */
const MAX_AUTO_THREADS = 8;

/** Why this thread cannot run a pool, or null when it can. */
function noThreadsReason() {
  if (typeof WorkerGlobalScope === 'undefined' || !(globalThis instanceof WorkerGlobalScope)) {
    return 'this is the page\'s main thread, which cannot wait for other threads (use SamWorker)';
  }
  if (globalThis.crossOriginIsolated !== true || typeof SharedArrayBuffer === 'undefined') {
    return 'the page is not cross-origin isolated (serve it with Cross-Origin-Opener-Policy: same-origin'
      + ' and Cross-Origin-Embedder-Policy: require-corp), so there is no shared memory';
  }
  return null;
}

/** The number of threads for `threads` (undefined: as many as the machine has, where possible). */
function threadCount(threads) {
  if (threads === 1) return 1;
  const reason = noThreadsReason();
  if (reason) {
    if (threads === undefined) return 1;
    throw new Error(`load: threads: ${threads} cannot run here: ${reason}`);
  }
  return threads ?? Math.max(1, Math.min(globalThis.navigator?.hardwareConcurrency ?? 1, MAX_AUTO_THREADS));
}

let threadsReady = null;

/**
 * Instantiates the threaded module (websam_core_mt, on shared memory) once per thread and starts
 * its pool of `n` threads, each a module worker on the same module and memory.
 */
function initThreads(n) {
  if (!threadsReady) {
    threadsReady = (async () => {
      try {
        await initThreaded();
      } catch (e) {
        throw wasmLoadError(e);
      }
      const [module, memory] = threadResources();
      // The workers first wait in runThread; initThreadPool then hands them rayon's threads
      // (it blocks until they run, which workers still starting could not do).
      const started = Array.from({ length: n }, () => new Promise((resolve, reject) => {
        const worker = new Worker(new URL('./thread-entry.js', import.meta.url), { type: 'module', name: 'websam-thread' });
        worker.onmessage = ({ data }) => (data.ready ? resolve() : reject(new Error(data.error)));
        worker.onerror = (e) => {
          e.preventDefault?.();
          reject(new Error(e.message || 'its script did not load (check that thread-entry.js is served as JavaScript)'));
        };
        worker.postMessage({ module, memory });
      }));
      await Promise.all(started).catch((e) => {
        throw new Error(`a websam thread did not start: ${e.message}`);
      });
      initThreadPool(n);
      return { WebSam: WebSamThreaded, threads: n };
    })();
    // A failed start is not retried: the pool may be half built.
  }
  return threadsReady;
}

/** Errors from the wasm module arrive as Errors; anything else thrown becomes one. */
function asError(e) {
  return e instanceof Error ? e : new Error(String(e));
}

/** Segment Anything on one thread: the model, the image set, and predictions per prompt. */
export class Sam {
  #core;
  #threads;
  #queue = Promise.resolve();
  #disposed = false;

  /** Use `Sam.load`. */
  constructor(core, secret, threads) {
    if (secret !== Sam.#token) throw new TypeError('use Sam.load({ weights }) to make a Sam');
    this.#core = core;
    this.#threads = threads;
  }

  static #token = Symbol('Sam');

  /**
   * Loads a checkpoint and builds the model. `weights`: a URL (fetched with progress and kept in
   * the Cache API), an ArrayBuffer, a Uint8Array or a Blob of a `.pth`, `.pt` or `.safetensors`
   * file. `backend`: "auto" (WebGPU on a hardware adapter, else the CPU), "webgpu"
   * or "cpu". `threads`: threads of the CPU path (default: up to 8, as the machine has, where
   * threads can run: a worker of a cross-origin isolated page, i.e. SamWorker there; else 1).
   * `precision`: "f32" (default, the reference's results) or "f16" (WebGPU where the adapter
   * offers shader-f16: half the weight memory, f16 products; see `precision`).
   */
  static async load(options) {
    const opts = loadOptions(options);
    const threads = threadCount(opts.threads);
    const core = threads > 1 ? initThreads(threads) : initOnce(opts.wasm);
    core.catch(() => {});
    const { bytes, keep } = await readWeights(opts.weights, opts);
    const { WebSam: Core, threads: running } = await core;
    opts.onProgress?.({ stage: 'init', loaded: bytes.byteLength, total: bytes.byteLength });
    let model;
    try {
      model = await Core.load(bytes, opts.backend, opts.precision);
    } catch (e) {
      throw asError(e);
    }
    await keep();
    opts.onProgress?.({ stage: 'ready', loaded: bytes.byteLength, total: bytes.byteLength });
    return new Sam(model, Sam.#token, running);
  }

  /** Threads of the CPU path: more than 1 only in a worker of a cross-origin isolated page. */
  get threads() {
    return this.#threads;
  }

  /** "webgpu" or "cpu": the backend in use (it turns to "cpu" if a lost GPU is not replaced). */
  get backend() {
    return this.#core.backend;
  }

  /** "f16" when the WebGPU model runs in f16 (asked for, and the adapter offers shader-f16), else "f32". */
  get precision() {
    return this.#core.precision;
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

  /**
   * Segment everything: the official automatic mask generator (`SamAutomaticMaskGenerator`) on
   * the image set. `options`: its options in camelCase (`pointsPerSide` 32, `pointsPerBatch` 64,
   * `predIouThresh` 0.88, `stabilityScoreThresh` 0.95, ...; see docs/API.md) and `outputMode`
   * ("coco_rle", the default, "uncompressed_rle" or "binary_mask"). `onProgress` is called after
   * each step (a crop's embedding or a batch of prompts) with `{ done, total, crop, crops, masks }`
   * and `preview`, the records that batch kept (coco_rle, before de-duplication); `signal` (an
   * AbortSignal) stops it between steps, rejecting with the signal's reason, the model still
   * usable. Resolves to the records, in the reference's order and form.
   */
  generate(options, { onProgress, signal } = {}) {
    let opts;
    try {
      opts = generateOptions(options, { onProgress, signal });
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#run('generate', async (core) => {
      if (signal?.aborted) throw abortReason(signal);
      await core.generateStart(opts.json);
      for (;;) {
        if (signal?.aborted) {
          await core.generateCancel();
          throw abortReason(signal);
        }
        const step = JSON.parse(await core.generateStep());
        try {
          onProgress?.({ ...step.progress, preview: step.masks });
        } catch (e) {
          await core.generateCancel();
          throw e;
        }
        if (step.done) return recordsIn(core.generateResult(), opts.outputMode);
        // A turn of the event loop between steps: an abort (in a worker, a message) gets in.
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
    });
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

