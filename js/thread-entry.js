// One thread of websam's CPU pool (a module worker started by Sam.load in a threaded build):
// instantiates the threaded module (and the relaxed-SIMD kernels, if sent) on the shared memory
// it is sent and runs its pool thread.
import init, { runThread } from './websam_core_mt.js';
import { KERNELS_GLOBAL, installKernels } from './internal.js';

self.onmessage = async ({ data: { module, memory, kernels } }) => {
  try {
    await init({ module_or_path: module, memory });
  } catch (e) {
    self.postMessage({ error: String(e?.message ?? e) });
    return;
  }
  // The relaxed-SIMD kernels, where the main thread compiled them, on the same memory.
  const relaxed = await installKernels(kernels, memory, KERNELS_GLOBAL.threaded);
  self.postMessage({ ready: true, relaxed });
  runThread(); // waits for the pool to hand this worker a thread; returns when the pool ends
};
