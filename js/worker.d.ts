import type {
  Backend, Embedding, ImageInput, LoadOptions, Prediction, Prompt, SamPredictor,
} from './websam.js';

export type * from './websam.js';

export interface WorkerLoadOptions extends LoadOptions {
  /**
   * A worker made by the caller from websam's `worker-entry.js` (`new Worker(url, { type:
   * 'module' })`), for setups that must create it themselves.
   */
  worker?: Worker;
}

/** SAM in a module worker: the API of `Sam`, with the page never blocked. */
export declare class SamWorker implements SamPredictor {
  private constructor();
  static load(options: WorkerLoadOptions): Promise<SamWorker>;
  readonly backend: Backend;
  readonly adapterName: string | undefined;
  readonly fallbackReason: string | undefined;
  setImage(image: ImageInput): Promise<void>;
  predict(prompt?: Prompt): Promise<Prediction>;
  getEmbedding(options?: { format?: 'f32' }): Promise<Embedding<Float32Array>>;
  getEmbedding(options: { format: 'npy' }): Promise<Embedding<Uint8Array>>;
  setEmbedding(
    data: Float32Array | ArrayBuffer | Uint8Array | Embedding<Float32Array | Uint8Array>,
    size?: { width: number; height: number },
  ): Promise<void>;
  dispose(): void;
  destroyDeviceForTesting(): Promise<void>;
}
