import type { LoadOptions, SamPredictor } from './websam.js';

export type * from './websam.js';
export { decodeMask } from './websam.js';

export interface WorkerLoadOptions extends LoadOptions {
  /**
   * A worker made by the caller from websam's `worker-entry.js` (`new Worker(url, { type:
   * 'module' })`), for setups that must create it themselves.
   */
  worker?: Worker;
}

/** SAM in a module worker: the API of `Sam`, with the page never blocked. */
export declare class SamWorker {
  private constructor();
  static load(options: WorkerLoadOptions): Promise<SamWorker>;
}
/** The methods, declared once in `SamPredictor`. */
export interface SamWorker extends SamPredictor {}
