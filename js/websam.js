// websam: Segment Anything (SAM, MobileSAM, SAM 2.1) in the browser, on WebGPU with a CPU fallback.
// `Sam` runs in the thread that imports it; `SamWorker` (websam/worker) runs the same API in a
// module worker. Both follow the official SamPredictor: set an image once, predict per prompt.
import initWasm, { WebSam, __wbg_reset_state as resetWasm } from './websam_core.js';
// The threaded build: instantiated only where threads can run (its import alone does nothing).
// A static import, so that bundlers' workers need no code splitting.
import initThreaded, {
  WebSam as WebSamThreaded, initThreadPool, threadResources,
} from './websam_core_mt.js';
import {
  CACHE_NAME, KERNELS_GLOBAL, abortReason, compileKernels, embeddingFormat, generateOptions, installKernels, loadOptions, panicMessage,
  readWeights, recordsIn, toEmbedding, toPrompt, toRgba, trainObjects, withMaskLogits,
} from './internal.js';

export { decodeMask } from './internal.js';

let wasmReady = null;

/**
 * A panic (or a failed memory growth, or any trap) leaves a wasm instance unusable. The Sams
 * on an instance listen for its death and reject the call in flight,
 * and on their next call the package replaces the instance (`__wbg_reset_state`: the same
 * compiled module, fresh memory) once for all of them and rebuilds each model.
 */
const single = { dead: false, listeners: new Set(), renewing: Promise.resolve() };

/** Marks `instance` dead and tells its Sams, once per death. */
function instanceDied(instance, message) {
  if (instance.dead) return;
  instance.dead = true;
  for (const listener of instance.listeners) listener(message);
}

/** A trap reported by the browser (a call in a microtask traps outside any promise chain). */
function watchTraps(instance) {
  const onTrap = (e) => {
    const error = e?.error ?? e?.reason;
    if (error instanceof WebAssembly.RuntimeError) instanceDied(instance, error.message);
  };
  globalThis.addEventListener?.('error', onTrap);
  globalThis.addEventListener?.('unhandledrejection', onTrap);
}

/**
 * Installs the relaxed-SIMD kernels `module` on `Core`'s memory as `globalThis[name]` and sends
 * `Core`'s matrix products there. Resolves to whether it did.
 */
async function enableKernels(module, Core, name) {
  const ok = await installKernels(module, Core.wasmMemory(), name);
  if (ok) Core.setRelaxedSimd(true);
  return ok;
}

/**
 * Replaces the single-threaded module's dead instance (once per death). Resolves once the new
 * instance has its relaxed-SIMD kernels (a new memory: until then it runs the portable kernel).
 */
function renewSingle() {
  if (single.dead) {
    resetWasm();
    single.dead = false;
    WebSam.setPanicHandler((message) => instanceDied(single, message));
    single.relaxed = false;
    single.renewing = enableKernels(single.kernels, WebSam, KERNELS_GLOBAL.single).then((ok) => {
      single.relaxed = ok;
    });
  }
  return single.renewing;
}

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
      .then(async () => {
        WebSam.setPanicHandler((message) => instanceDied(single, message));
        watchTraps(single);
        single.kernels = await compileKernels(new URL('./websam_kernels_bg.wasm', import.meta.url));
        single.relaxed = await enableKernels(single.kernels, WebSam, KERNELS_GLOBAL.single);
        return { WebSam, threads: 1, instance: single, renew: renewSingle };
      })
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
      // Every thread that runs products gets the kernels before they are turned on.
      const kernels = await compileKernels(new URL('./websam_kernels_mt_bg.wasm', import.meta.url));
      let relaxed = await installKernels(kernels, memory, KERNELS_GLOBAL.threaded);
      // The workers first wait in runThread; initThreadPool then hands them rayon's threads
      // (it blocks until they run, which workers still starting could not do).
      const started = Array.from({ length: n }, () => new Promise((resolve, reject) => {
        const worker = new Worker(new URL('./thread-entry.js', import.meta.url), { type: 'module', name: 'websam-thread' });
        worker.onmessage = ({ data }) => {
          if (!data.ready) {
            reject(new Error(data.error));
            return;
          }
          relaxed &&= data.relaxed;
          resolve();
        };
        worker.onerror = (e) => {
          e.preventDefault?.();
          reject(new Error(e.message || 'its script did not load (check that thread-entry.js is served as JavaScript)'));
        };
        worker.postMessage({ module, memory, kernels });
      }));
      await Promise.all(started).catch((e) => {
        throw new Error(`a websam thread did not start: ${e.message}`);
      });
      initThreadPool(n);
      if (relaxed) WebSamThreaded.setRelaxedSimd(true);
      // Its memory is shared with the pool's threads: a dead instance cannot be replaced in
      // place (SamWorker replaces its whole worker instead).
      const instance = { dead: false, listeners: new Set(), relaxed };
      WebSamThreaded.setPanicHandler((message) => instanceDied(instance, message));
      watchTraps(instance);
      return { WebSam: WebSamThreaded, threads: n, instance, renew: null };
    })();
    // A failed start is not retried: the pool may be half built.
  }
  return threadsReady;
}

/** Errors from the wasm module arrive as Errors; anything else thrown becomes one. */
function asError(e) {
  return e instanceof Error ? e : new Error(String(e));
}

/** The error of a call cut short by a panic: `fatal` marks it for SamWorker. */
function panicError(message, recoverable) {
  const e = new Error(panicMessage(message, recoverable));
  e.fatal = true;
  e.panic = message;
  return e;
}

/** Hands checked training objects (`trainObjects`) to the module, for trainStart or trainingLoss. */
function addTrainingObjects(core, list) {
  for (const o of list) core.trainAddObject(o.embedding, o.width, o.height, o.mask);
}

/** Segment Anything on one thread: the model, the image set, and predictions per prompt. */
export class Sam {
  #core;
  #threads;
  #queue = Promise.resolve();
  #disposed = false;
  /** The module: `{ WebSam, instance, renew }` (see `instanceDied`). */
  #module;
  /** Rebuilds the model after a panic: `{ weights(), backend, precision }`. */
  #rebuild;
  /** What the model was last given, set again after a rebuild: `[method, ...args]`. */
  #input = null;
  /** Rejects the call in flight when the instance dies. */
  #onDeath = null;
  /** The message of the panic that killed `#core`, until it is rebuilt. */
  #death = null;
  /** Told when the instance under `#core` dies (a panic, a failed memory growth). */
  #listener = (message) => {
    this.#death = message;
    this.#onDeath?.(panicError(message, Boolean(this.#module.renew)));
  };

  /** Use `Sam.load`. */
  constructor(core, secret, threads, module, rebuild) {
    if (secret !== Sam.#token) throw new TypeError('use Sam.load({ weights }) to make a Sam');
    this.#core = core;
    this.#threads = threads;
    this.#module = module;
    this.#rebuild = rebuild;
    module.instance.listeners.add(this.#listener);
  }

  /** A fresh model on a fresh instance, with the last image or embedding set again. */
  async #revive() {
    const { renew } = this.#module;
    if (!renew) throw panicError(this.#death, false);
    await renew();
    const bytes = await this.#rebuild.weights();
    this.#core = await this.#module.WebSam.load(bytes, this.#rebuild.backend, this.#rebuild.precision);
    this.#death = null;
    if (this.#input) {
      const [method, ...args] = this.#input;
      await this.#core[method](...args);
    }
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
    const module = await core;
    opts.onProgress?.({ stage: 'init', loaded: bytes.byteLength, total: bytes.byteLength });
    let model;
    try {
      await module.renew?.();
      model = await module.WebSam.load(bytes, opts.backend, opts.precision);
    } catch (e) {
      throw asError(e);
    }
    await keep();
    opts.onProgress?.({ stage: 'ready', loaded: bytes.byteLength, total: bytes.byteLength });
    // After a panic the weights are read again: from the Cache API where they were kept there,
    // else from the bytes given or fetched (kept by reference).
    const cached = (typeof opts.weights === 'string' || opts.weights instanceof URL) && opts.cache;
    const rebuild = {
      backend: opts.backend,
      precision: opts.precision,
      weights: async () => (cached
        ? (await readWeights(opts.weights, { cache: true, integrity: opts.integrity })).bytes
        : bytes),
    };
    return new Sam(model, Sam.#token, module.threads, module, rebuild);
  }

  /** Threads of the CPU path: more than 1 only in a worker of a cross-origin isolated page. */
  get threads() {
    return this.#threads;
  }

  /**
   * Whether the CPU path's matrix products run on the relaxed-SIMD kernels (fused multiply-add),
   * where the engine has relaxed SIMD; else on the portable kernel.
   */
  get relaxedSimd() {
    return this.#module.instance.relaxed === true;
  }

  /** "webgpu" or "cpu": the backend in use (it turns to "cpu" if a lost GPU is not replaced). */
  get backend() {
    return this.#core.backend;
  }

  /** "sam2" for a SAM 2 checkpoint, else "sam" (SAM, MobileSAM). */
  get family() {
    return this.#core.family;
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

  /**
   * Runs calls one after another, in the order they were made. A call in flight when the wasm
   * instance dies rejects with the panic's message; the next call first rebuilds the model.
   */
  #run(name, fn) {
    const next = this.#queue.then(async () => {
      if (this.#disposed) throw new Error(`${name}: this model was disposed`);
      if (this.#death !== null) await this.#revive();
      const death = new Promise((_, reject) => { this.#onDeath = reject; });
      try {
        return await Promise.race([fn(this.#core), death]);
      } catch (e) {
        throw asError(e);
      } finally {
        this.#onDeath = null;
      }
    });
    this.#queue = next.catch(() => {});
    return next;
  }

  /**
   * Embeds an image (ImageData, ImageBitmap, img, canvas, Blob or {data, width, height} RGBA).
   * `onProgress({ done, steps })` follows the encoder: after each block of SAM's ViT (TinyViT's
   * encode is one step).
   */
  setImage(image, { onProgress } = {}) {
    // The pixels are read now, as the call is made, even if earlier calls are still running.
    const rgba = toRgba(image);
    rgba.catch(() => {});
    const progress = onProgress ? (done, steps) => onProgress({ done, steps }) : undefined;
    return this.#run('setImage', async (core) => {
      const { data, width, height } = await rgba;
      this.#input = null;
      await core.setImage(data, width, height, progress);
      this.#input = ['setImage', data, width, height];
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
      withMaskLogits(await core.predict(p.points, p.box, p.maskInput, p.multimask, p.maxHoleArea, p.maxSprinkleArea)));
  }

  /**
   * The embedding of the image set: `{ data: Float32Array(256*64*64), width, height }`, SAM 2's
   * with `highRes` (its two high-resolution maps, 32x256x256 and 64x128x128); or with
   * `{ format: 'npy' }` (SAM) or `{ format: 'npz' }` (SAM 2) the bytes of that file in `data`.
   */
  getEmbedding(options = {}) {
    let format;
    try {
      format = embeddingFormat(options);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#run('getEmbedding', (core) => (format === 'f32' ? core.getEmbedding() : core.getEmbeddingFile(format)));
  }

  /**
   * Sets an embedding made elsewhere (decode-only use): an object from `getEmbedding`, a
   * Float32Array of 256*64*64 (SAM), or the bytes of a `.npy` (SAM) or `.npz` (SAM 2) file, for an
   * image of `{ width, height }`.
   */
  setEmbedding(data, size) {
    let e;
    try {
      e = toEmbedding(data, size);
    } catch (err) {
      return Promise.reject(err);
    }
    const call = e.kind === 'file'
      ? ['setEmbeddingFile', e.data, e.width, e.height]
      : ['setEmbedding', e.data, e.width, e.height, e.highRes?.[0], e.highRes?.[1]];
    return this.#run('setEmbedding', async (core) => {
      const [method, ...args] = call;
      this.#input = null;
      await core[method](...args);
      this.#input = call;
    });
  }

  /**
   * Segment everything: the official automatic mask generator (`SamAutomaticMaskGenerator`;
   * `SAM2AutomaticMaskGenerator` for SAM 2) on the image set. `options`: its options in camelCase (`pointsPerSide` 32, `pointsPerBatch` 64,
   * `predIouThresh` 0.88 (SAM 2: 0.8), `stabilityScoreThresh` 0.95, ...; see docs/API.md) and `outputMode`
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

  /**
   * Fine-tunes the prompt encoder and mask decoder on objects a person annotated, the image
   * encoder frozen (the SAM paper's loss and interactive training: 11 predictions per object,
   * AdamW with warm-up and step decay; on the CPU whatever the backend, on this thread).
   * `objects`: `[{ mask, width, height, embedding }]`, `mask` a Uint8Array of `width * height`
   * (nonzero inside), `embedding` the image's (a Float32Array of 256*64*64 or an object from
   * `getEmbedding`; left out: the image set now). `options`: `{ steps: 200, batch: 4, lr: 1e-4,
   * seed: 0 }`. `onProgress({ step, steps, loss, lr })` after each step; `signal` stops the run
   * between steps (rejecting with its reason, the model as it was). When it resolves (to the
   * losses, one per step) the model decodes with the trained weights; `revertTraining()` goes
   * back to the checkpoint's, `checkpoint()` gives the tuned file.
   */
  train(objects, options = {}, { onProgress, signal } = {}) {
    let list;
    let json;
    try {
      list = trainObjects(objects);
      json = JSON.stringify(options ?? {});
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#run('train', async (core) => {
      if (signal?.aborted) throw abortReason(signal);
      try {
        addTrainingObjects(core, list);
        await core.trainStart(json);
        const losses = [];
        for (;;) {
          if (signal?.aborted) throw abortReason(signal);
          const step = JSON.parse(await core.trainStep());
          losses.push(step.loss);
          onProgress?.({ step: step.step, steps: step.steps, loss: step.loss, lr: step.lr });
          if (step.done) break;
          // A turn of the event loop between steps: an abort (in a worker, a message) gets in.
          await new Promise((resolve) => setTimeout(resolve, 0));
        }
        await core.trainFinish();
        return losses;
      } catch (e) {
        core.trainCancel();
        throw e;
      }
    });
  }

  /**
   * What `train` did to `objects` (as it takes them), measured on the model as it is now,
   * training nothing: the training loss of a first prompt (a click or a noisy box drawn from
   * the object, the best of three candidates), the mean over 8 prompts per object drawn with
   * `seed` (0). The prompts do not depend on the model: the same weights, objects and seed give
   * the same value, before and after a run.
   */
  trainingLoss(objects, { seed = 0 } = {}) {
    let list;
    try {
      list = trainObjects(objects);
      if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
        throw new TypeError(`trainingLoss: seed must be an integer in [0, 2^32), got ${seed}`);
      }
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#run('trainingLoss', async (core) => {
      try {
        addTrainingObjects(core, list);
        return await core.trainingLoss(seed);
      } catch (e) {
        core.trainCancel();
        throw e;
      }
    });
  }

  /** Whether the model decodes with trained weights (`train`) rather than the checkpoint's. */
  get tuned() {
    return this.#core.tuned;
  }

  /** Goes back to the checkpoint's prompt encoder and decoder after `train`; the image stays. */
  revertTraining() {
    return this.#run('revertTraining', (core) => core.revertTraining());
  }

  /**
   * The model's checkpoint as it decodes now (with trained weights after `train`): the bytes of
   * a `.safetensors` file under the official keys, which `Sam.load` and the command line read.
   */
  checkpoint() {
    return this.#run('checkpoint', (core) => core.checkpoint());
  }

  /**
   * Frees the model: the call running finishes, calls still waiting reject ("disposed"), later
   * calls are refused.
   */
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#queue.then(() => {
      this.#module.instance.listeners.delete(this.#listener);
      if (this.#death === null) this.#core.free();
      this.#input = null;
    });
  }

  /**
   * What the model holds now: `{ wasmMemoryBytes, heapInUseBytes, heapPeakBytes, gpuPoolBytes }`
   * (the module's memory, which only grows; the bytes allocated in it and not freed, and the
   * most they have been; the WebGPU buffer pool, 0 on the CPU). Answered after the calls already
   * made.
   */
  memoryStats() {
    return this.#run('memoryStats', (core) => core.memoryStats());
  }

  /** Fails inside the wasm module as a bug would ("panic", or "oom": memory growth refused). */
  failForTesting(kind) {
    return this.#run('failForTesting', (core) => core.failForTesting(kind));
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

