// websam's worker as a browser without WebGPU runs it: navigator.gpu absent, then the package's
// worker-entry.js. Messages that arrive while it loads are replayed to its handler.
const early = [];
self.onmessage = (e) => early.push(e);
Object.defineProperty(Object.getPrototypeOf(navigator), 'gpu', { get: () => undefined, configurable: true });
await import('/pkg/worker-entry.js');
for (const e of early) self.onmessage(e);
