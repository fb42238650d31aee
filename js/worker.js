// SamWorker: the Sam API with the model in a module worker, so the page never blocks. Inputs are
// checked and images read to RGBA here; buffers cross to and from the worker transferred.
import {
  abortReason, generateOptions, loadOptions, panicMessage, recordsIn, resolveUrl, toEmbedding, toPrompt, trainObjects,
  toRgba,
} from './internal.js';

export { decodeMask } from './internal.js';

const ERRORS = { TypeError, RangeError, Error };

export class SamWorker {
  #worker;
  #pending = new Map();
  #nextId = 1;
  #state = {};
  #dead = null;
  /** How to make the worker again after a panic: `{ make(), args }`. */
  #restart = null;
  /** Waits for a restart in progress, else resolved. */
  #ready = Promise.resolve();
  /** The last setImage / setEmbedding message, sent again after a restart. */
  #input = null;

  /** Use `SamWorker.load`. */
  constructor(worker, secret) {
    if (secret !== SamWorker.#token) throw new TypeError('use SamWorker.load({ weights }) to make a SamWorker');
    this.#attach(worker);
  }

  #attach(worker) {
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
   * After a panic in the worker (`fatal`): every call still pending rejects, the worker is
   * replaced by a new one that loads the same weights (from the Cache API where they were kept)
   * and is given the last image or embedding again; calls made meanwhile wait for it.
   */
  #revive(error) {
    for (const call of this.#pending.values()) {
      call.reject(new Error(`the call was not run: ${panicMessage(error.panic, true)}`));
    }
    this.#pending.clear();
    this.#worker.terminate();
    const { make, args } = this.#restart;
    const input = this.#input;
    this.#ready = (async () => {
      this.#attach(make());
      await this.#post('load', args);
      if (input) await this.#post(input.op, input.args());
    })().catch((e) => {
      this.#fail(new Error(`the websam worker could not be restarted after an internal error: ${e.message}`));
    });
  }

  /**
   * Starts the worker, loads the checkpoint in it and builds the model: the options of
   * `Sam.load`, plus `worker` (a Worker already made from websam's worker-entry.js, for
   * bundlers that need to make it themselves).
   */
  static async load(options) {
    const opts = loadOptions(options);
    const make = () => new Worker(new URL('./worker-entry.js', import.meta.url), { type: 'module', name: 'websam' });
    const worker = opts.worker ?? make();
    const sw = new SamWorker(worker, SamWorker.#token);
    const args = {
      weights: resolveUrl(opts.weights),
      backend: opts.backend,
      cache: opts.cache,
      threads: opts.threads,
      precision: opts.precision,
      integrity: opts.integrity,
      wasm: opts.wasm instanceof URL ? opts.wasm.href : resolveUrl(opts.wasm),
    };
    try {
      await sw.#call('load', [args], opts.onProgress);
    } catch (e) {
      worker.terminate();
      throw e;
    }
    // A worker the caller made (a bundler's) cannot be made again here: after a panic such a
    // SamWorker must be loaded again.
    sw.#restart = opts.worker ? null : { make, args };
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
        : new E(error.fatal ? panicMessage(error.panic, Boolean(this.#restart)) : error.message));
      if (error.fatal) {
        if (this.#restart && !this.#dead) this.#revive(error);
        else this.#fail(new Error(panicMessage(error.panic, false)));
      }
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

  /** Settles once the call made before has been posted: calls reach the worker in call order. */
  #posted = Promise.resolve();

  /**
   * Posts `op` after the calls made before it (and after a restart in progress); `message` is
   * `[args, transfer]` or a promise of it (pixels still being read). Resolves to the reply.
   */
  #call(op, message, onProgress, onId) {
    const posting = this.#posted.then(async () => {
      await this.#ready;
      const [args, transfer = []] = await message;
      return { reply: this.#post(op, args, transfer, onProgress, onId) };
    });
    this.#posted = posting.then(() => {}, () => {});
    return posting.then(({ reply }) => reply);
  }

  #post(op, args, transfer = [], onProgress, onId) {
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

  /** As `Sam.family`. */
  get family() {
    return this.#state.family;
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

  /** As `Sam.relaxedSimd`, in the worker. */
  get relaxedSimd() {
    return this.#state.relaxedSimd;
  }

  /**
   * As `Sam.setImage`; the pixels are read now, as the call is made, and transferred to the
   * worker once the calls made before it are posted.
   */
  setImage(image, { onProgress } = {}) {
    let kept;
    const message = toRgba(image).then(({ data, width, height, owned }) => {
      // The caller's own buffer is copied before it is transferred (a transfer empties it); a
      // copy is kept to set the image again should the worker be restarted.
      const pixels = owned ? data : data.slice();
      kept = { data: pixels.slice(), width, height };
      return [{ image: { data: pixels, width, height } }, [pixels.buffer]];
    });
    message.catch(() => {});
    return this.#call('setImage', message, onProgress).then(() => {
      this.#input = { op: 'setImage', args: () => ({ image: kept }) };
    }, (e) => {
      this.#input = null;
      throw e;
    });
  }

  /** As `Sam.predict`; the result's buffers are transferred from the worker. */
  async predict(prompt) {
    toPrompt(prompt); // Checked here too, so that a mistake is reported before any round trip.
    return this.#call('predict', [{ prompt: prompt ?? {} }]);
  }

  /**
   * As `Sam.generate`: the generator runs in the worker; progress arrives per step, and an
   * aborted `signal` stops it there between steps.
   */
  async generate(options, { onProgress, signal } = {}) {
    const opts = generateOptions(options, { onProgress, signal });
    const json = await this.#abortable('generate', { options: opts.json }, onProgress, signal);
    return recordsIn(json, opts.outputMode);
  }

  /**
   * A call the worker runs in steps (generate, train): progress per step, and an aborted
   * `signal` posts an `abort` that stops it there between steps.
   */
  async #abortable(op, args, onProgress, signal) {
    if (signal?.aborted) throw abortReason(signal);
    let id;
    // Before the call is posted (calls made before it still waiting), the abort goes with it.
    const abort = () => id !== undefined && this.#worker.postMessage({ op: 'abort', args: { target: id } });
    signal?.addEventListener('abort', abort, { once: true });
    const posted = (i) => {
      id = i;
      if (signal?.aborted) abort();
    };
    try {
      return await this.#call(op, [args], (p) => onProgress?.(p), posted);
    } catch (e) {
      if (signal?.aborted && e?.name === 'AbortError') throw abortReason(signal);
      throw e;
    } finally {
      signal?.removeEventListener('abort', abort);
    }
  }

  /**
   * As `Sam.train`: the run is in the worker (the page stays responsive); progress arrives per
   * step, and an aborted `signal` stops it there between steps. The objects' buffers are copied.
   */
  async train(objects, options = {}, { onProgress, signal } = {}) {
    const list = trainObjects(objects);
    return this.#abortable('train', { objects: list, options: options ?? {} }, onProgress, signal);
  }

  /** As `Sam.trainingLoss`, in the worker. The objects' buffers are copied. */
  trainingLoss(objects, options = {}) {
    let list;
    try {
      list = trainObjects(objects);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#call('trainingLoss', [{ objects: list, options: options ?? {} }]);
  }

  /** As `Sam.tuned` (as of the last reply from the worker). */
  get tuned() {
    return this.#state.tuned;
  }

  /** As `Sam.revertTraining`. */
  revertTraining() {
    return this.#call('revertTraining', [{}]);
  }

  /** As `Sam.checkpoint`; the bytes are transferred from the worker. */
  checkpoint() {
    return this.#call('checkpoint', [{}]);
  }

  /** As `Sam.getEmbedding`. */
  getEmbedding(options) {
    return this.#call('getEmbedding', [{ options }]);
  }

  /** As `Sam.setEmbedding`; the data is copied to the worker. */
  async setEmbedding(data, size) {
    const e = toEmbedding(data, size);
    const args = { data: { data: e.data, highRes: e.highRes }, size: { width: e.width, height: e.height } };
    try {
      await this.#call('setEmbedding', [args]);
    } catch (err) {
      this.#input = null;
      throw err;
    }
    this.#input = { op: 'setEmbedding', args: () => args };
  }

  /**
   * Stops the worker now: calls pending reject ("disposed"), later calls are refused, and the
   * worker's memory is freed at once.
   */
  dispose() {
    if (this.#dead) return;
    this.#dead = new Error('this model was disposed');
    for (const call of this.#pending.values()) call.reject(new Error('the call was cancelled: this model was disposed'));
    this.#pending.clear();
    this.#input = null;
    this.#worker.terminate();
  }

  /** As `Sam.memoryStats`, of the model in the worker. */
  memoryStats() {
    return this.#call('memoryStats', [{}]);
  }

  /** As `Sam.failForTesting`: the worker is restarted after it. */
  failForTesting(kind) {
    return this.#call('failForTesting', [{ kind }]);
  }

  /** As `Sam.destroyDeviceForTesting`. */
  destroyDeviceForTesting() {
    return this.#call('destroyDeviceForTesting', [{}]);
  }
}
