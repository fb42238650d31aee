// SamWorker: the Sam API with the model in a module worker, so the page never blocks. Inputs are
// checked and images read to RGBA here; buffers cross to and from the worker transferred.
import {
  abortReason, generateOptions, loadOptions, recordsIn, resolveUrl, toEmbedding, toPrompt, toRgba,
} from './internal.js';

export { decodeMask } from './internal.js';

const ERRORS = { TypeError, RangeError, Error };

export class SamWorker {
  #worker;
  #pending = new Map();
  #nextId = 1;
  #state = {};
  #dead = null;

  /** Use `SamWorker.load`. */
  constructor(worker, secret) {
    if (secret !== SamWorker.#token) throw new TypeError('use SamWorker.load({ weights }) to make a SamWorker');
    this.#worker = worker;
    worker.onmessage = ({ data }) => this.#receive(data);
    worker.onerror = (e) => {
      e.preventDefault?.();
      this.#fail(new Error(`the websam worker failed: ${e.message || 'its script did not load (check that worker-entry.js is served as JavaScript)'}`));
    };
    worker.onmessageerror = () => this.#fail(new Error('the websam worker sent a message that could not be read'));
  }

  static #token = Symbol('SamWorker');

  /**
   * Starts the worker, loads the checkpoint in it and builds the model: the options of
   * `Sam.load`, plus `worker` (a Worker already made from websam's worker-entry.js, for
   * bundlers that need to make it themselves).
   */
  static async load(options) {
    const opts = loadOptions(options);
    const worker = opts.worker ?? new Worker(new URL('./worker-entry.js', import.meta.url), { type: 'module', name: 'websam' });
    const sw = new SamWorker(worker, SamWorker.#token);
    const args = {
      weights: resolveUrl(opts.weights),
      backend: opts.backend,
      cache: opts.cache,
      threads: opts.threads,
      precision: opts.precision,
      wasm: opts.wasm instanceof URL ? opts.wasm.href : resolveUrl(opts.wasm),
    };
    try {
      await sw.#call('load', args, [], opts.onProgress);
    } catch (e) {
      worker.terminate();
      throw e;
    }
    return sw;
  }

  #receive({ id, progress, result, state, error }) {
    const call = this.#pending.get(id);
    if (!call) return;
    if (progress) {
      call.onProgress?.(progress);
      return;
    }
    this.#pending.delete(id);
    if (state) this.#state = state;
    if (error) {
      const E = ERRORS[error.name] ?? Error;
      call.reject(error.name === 'AbortError'
        ? new DOMException(error.message, 'AbortError')
        : new E(error.message));
    } else {
      call.resolve(result);
    }
  }

  #fail(error) {
    this.#dead = error;
    for (const call of this.#pending.values()) call.reject(error);
    this.#pending.clear();
    this.#worker.terminate();
  }

  #call(op, args, transfer = [], onProgress, onId) {
    if (this.#dead) return Promise.reject(this.#dead);
    return new Promise((resolve, reject) => {
      const id = this.#nextId++;
      onId?.(id);
      this.#pending.set(id, { resolve, reject, onProgress });
      try {
        this.#worker.postMessage({ id, op, args }, transfer);
      } catch (e) {
        this.#pending.delete(id);
        reject(e);
      }
    });
  }

  /** "webgpu" or "cpu": the backend in use (as of the last reply from the worker). */
  get backend() {
    return this.#state.backend;
  }

  get adapterName() {
    return this.#state.adapterName;
  }

  /** As `Sam.precision` (as of the last reply from the worker). */
  get precision() {
    return this.#state.precision;
  }

  get fallbackReason() {
    return this.#state.fallbackReason;
  }

  /** Threads of the CPU path in the worker (more than 1 on a cross-origin isolated page). */
  get threads() {
    return this.#state.threads;
  }

  /** As `Sam.setImage`; the pixels are read here and transferred to the worker. */
  async setImage(image) {
    const { data, width, height, owned } = await toRgba(image);
    // The caller's own buffer is copied before it is transferred (a transfer empties it).
    const pixels = owned ? data : data.slice();
    return this.#call('setImage', { image: { data: pixels, width, height } }, [pixels.buffer]);
  }

  /** As `Sam.predict`; the result's buffers are transferred from the worker. */
  async predict(prompt) {
    toPrompt(prompt); // Checked here too, so that a mistake is reported before any round trip.
    return this.#call('predict', { prompt: prompt ?? {} });
  }

  /**
   * As `Sam.generate`: the generator runs in the worker; progress arrives per step, and an
   * aborted `signal` stops it there between steps.
   */
  async generate(options, { onProgress, signal } = {}) {
    const opts = generateOptions(options, { onProgress, signal });
    if (signal?.aborted) throw abortReason(signal);
    let id;
    const abort = () => this.#worker.postMessage({ op: 'abort', args: { target: id } });
    signal?.addEventListener('abort', abort, { once: true });
    try {
      const json = await this.#call('generate', { options: opts.json }, [], (p) => onProgress?.(p), (i) => { id = i; });
      return recordsIn(json, opts.outputMode);
    } catch (e) {
      if (signal?.aborted && e?.name === 'AbortError') throw abortReason(signal);
      throw e;
    } finally {
      signal?.removeEventListener('abort', abort);
    }
  }

  /** As `Sam.getEmbedding`. */
  getEmbedding(options) {
    return this.#call('getEmbedding', { options });
  }

  /** As `Sam.setEmbedding`; the data is copied to the worker. */
  async setEmbedding(data, size) {
    const e = toEmbedding(data, size);
    return this.#call('setEmbedding', { data: e.data, size: { width: e.width, height: e.height } });
  }

  /** Stops the worker once the calls already made finish; later calls are refused. */
  dispose() {
    if (this.#dead) return;
    this.#worker.postMessage({ op: 'dispose' });
    this.#dead = new Error('this model was disposed');
    // Calls in flight still get their replies: the worker handles messages in order and
    // closes after them.
  }

  /** As `Sam.destroyDeviceForTesting`. */
  destroyDeviceForTesting() {
    return this.#call('destroyDeviceForTesting', {});
  }
}
