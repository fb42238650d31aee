// One thread of websam's CPU pool (a module worker started by Sam.load in a threaded build):
// instantiates the threaded module on the shared memory it is sent and runs its pool thread.
import init, { runThread } from './websam_core_mt.js';

self.onmessage = async ({ data: { module, memory } }) => {
  try {
    await init({ module_or_path: module, memory });
  } catch (e) {
    self.postMessage({ error: String(e?.message ?? e) });
    return;
  }
  self.postMessage({ ready: true });
  runThread(); // waits for the pool to hand this worker a thread; returns when the pool ends
};
