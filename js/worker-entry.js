// The module worker behind SamWorker: one Sam, driven by messages { id, op, args }. Replies are
// { id, result, state } or { id, error }; load, setImage, generate and train also post { id, progress }. Results travel with
// their buffers transferred, not copied.
import { Sam } from './websam.js';

let sam = null;
/** The AbortController of each generate call in progress, by call id. */
const aborts = new Map();

function state() {
  return {
    backend: sam.backend,
    adapterName: sam.adapterName,
    family: sam.family,
    fallbackReason: sam.fallbackReason,
    threads: sam.threads,
    relaxedSimd: sam.relaxedSimd,
    precision: sam.precision,
    tuned: sam.tuned,
  };
}

function resultBuffers(result) {
  const buffers = new Set([result.lowResLogits.buffer, result.iou.buffer]);
  for (const m of result.masks) buffers.add(m.data.buffer);
  return [...buffers];
}

const ops = {
  async load(id, args) {
    if (sam) throw new Error('load: this worker already has a model');
    sam = await Sam.load({ ...args, onProgress: (progress) => self.postMessage({ id, progress }) });
    return [undefined, []];
  },
  async setImage(id, { image }) {
    await model().setImage(image, { onProgress: (progress) => self.postMessage({ id, progress }) });
    return [undefined, []];
  },
  async predict(id, { prompt }) {
    const r = await model().predict(prompt);
    return [r, resultBuffers(r)];
  },
  async generate(id, { options }) {
    // Aborted through an `abort` message, handled as it arrives (not after this call).
    const controller = aborts.get(id) ?? new AbortController();
    aborts.set(id, controller);
    try {
      const records = await model().generate(JSON.parse(options), {
        signal: controller.signal,
        onProgress: (progress) => self.postMessage({ id, progress }),
      });
      return [JSON.stringify(records), []];
    } finally {
      aborts.delete(id);
    }
  },
  async train(id, { objects, options }) {
    // Aborted through an `abort` message, as generate.
    const controller = aborts.get(id) ?? new AbortController();
    aborts.set(id, controller);
    try {
      const losses = await model().train(objects, options, {
        signal: controller.signal,
        onProgress: (progress) => self.postMessage({ id, progress }),
      });
      return [losses, []];
    } finally {
      aborts.delete(id);
    }
  },
  async trainingLoss(id, { objects, options }) {
    return [await model().trainingLoss(objects, options), []];
  },
  async revertTraining() {
    await model().revertTraining();
    return [undefined, []];
  },
  async checkpoint() {
    const bytes = await model().checkpoint();
    return [bytes, [bytes.buffer]];
  },
  async getEmbedding(id, { options }) {
    const e = await model().getEmbedding(options);
    return [e, [e.data.buffer, ...(e.highRes ?? []).map((m) => m.buffer)]];
  },
  async setEmbedding(id, { data, size }) {
    await model().setEmbedding(data, size);
    return [undefined, []];
  },
  async destroyDeviceForTesting() {
    await model().destroyDeviceForTesting();
    return [undefined, []];
  },
  async memoryStats() {
    return [await model().memoryStats(), []];
  },
  async failForTesting(id, { kind }) {
    await model().failForTesting(kind);
    return [undefined, []];
  },
};

function model() {
  if (!sam) throw new Error('no model: load it first');
  return sam;
}

async function handle({ id, op, args }) {
  try {
    if (!Object.hasOwn(ops, op)) throw new Error(`unknown operation ${op}`);
    const [result, transfer] = await ops[op](id, args);
    self.postMessage({ id, result, state: state() }, transfer);
  } catch (e) {
    self.postMessage({
      id, error: { name: e?.name ?? 'Error', message: e?.message ?? String(e), fatal: e?.fatal === true, panic: e?.panic },
    });
  }
}

// A trap in the wasm module (a panic, a refused memory growth) is reported to the caller as the
// failed call's error (fatal: SamWorker then replaces this worker), not as the worker's own.
self.addEventListener('error', (e) => {
  if (e.error instanceof WebAssembly.RuntimeError) e.preventDefault();
});
self.addEventListener('unhandledrejection', (e) => {
  if (e.reason instanceof WebAssembly.RuntimeError) e.preventDefault();
});

// One message at a time, in order (SamWorker's dispose terminates the worker from outside).
let chain = Promise.resolve();
self.onmessage = ({ data }) => {
  if (data?.op === 'abort') {
    // Also for a generate still waiting in the chain: it stops before its first step.
    const target = data.args?.target;
    if (!aborts.has(target)) aborts.set(target, new AbortController());
    aborts.get(target).abort();
    return;
  }
  chain = chain.then(() => handle(data));
};
