/** websam: Segment Anything (SAM, MobileSAM) in the browser, on WebGPU with a CPU fallback. */

/** "auto": WebGPU on a hardware adapter, else the CPU (no adapter, or a software one). */
export type BackendChoice = 'auto' | 'webgpu' | 'cpu';
/** The backend in use. */
export type Backend = 'webgpu' | 'cpu';
/** Precision of the WebGPU model's matrix products (the CPU backend computes in f32). */
export type Precision = 'f32' | 'f16';

/**
 * Loading progress. `download`: bytes fetched from the network; `cache`: bytes read from the
 * Cache API; `read`: bytes read from a Blob, ArrayBuffer or Uint8Array; `init`: building the
 * model (weights read); `ready`: done. `total` is undefined while a server gives no length.
 */
export interface LoadProgress {
  stage: 'download' | 'cache' | 'read' | 'init' | 'ready';
  loaded: number;
  total: number | undefined;
}

/** How far an encode has come: `done` of `steps` (SAM ViT's blocks; TinyViT's encode is one). */
export interface EncodeProgress {
  done: number;
  steps: number;
}

export interface LoadOptions {
  /**
   * A `.pth`, `.pt` or `.safetensors` checkpoint (f32, f16 or bf16): MobileSAM, SAM ViT-B/L/H or
   * SAM 2.1 Hiera T/S/B+/L (image encoder and decoder), or any of their checkpoints' prompt
   * encoder and mask decoder alone (use `setEmbedding`).
   * A URL (relative to the page) is fetched with progress and kept in the Cache API.
   */
  weights: string | URL | ArrayBuffer | ArrayBufferView | Blob;
  /** Default "auto". */
  backend?: BackendChoice;
  onProgress?: (progress: LoadProgress) => void;
  /**
   * Keep weights fetched by URL in the Cache API and read them from it next time. Default true.
   * A cached copy is checked against the SHA-256 stored with it on every read; a corrupt one is
   * dropped and fetched again.
   */
  cache?: boolean;
  /**
   * Subresource Integrity of the checkpoint ("sha256-<base64 digest>"; sha384 and sha512 too,
   * several separated by spaces): the bytes are checked before they are used or cached, and a
   * mismatch rejects with an Error naming both digests. Needs a secure context (crypto.subtle).
   */
  integrity?: string;
  /**
   * Threads of the CPU path, 1 to 64. They run only in a worker of a cross-origin isolated page
   * (SamWorker on a page served with `Cross-Origin-Opener-Policy: same-origin` and
   * `Cross-Origin-Embedder-Policy: require-corp`); asking for more than 1 elsewhere is an
   * error. Default: as many as the machine has (at most 8) where threads can run, else 1.
   */
  threads?: number;
  /**
   * "f32" (default): the reference's results. "f16": on WebGPU where the adapter offers
   * `shader-f16`, weights of the matrix products and convolutions are kept in f16 (half their
   * memory) and their products summed in f16 within slices of 16 (tolerance: low-res logits
   * within 2e-2 of f32, masks within 0.1% of their pixels); elsewhere f32.
   */
  precision?: Precision;
  /**
   * Where the wasm module is, when it is not beside websam.js (a CDN, a bundler's asset URL):
   * its URL, its bytes or a compiled module. Read by the first load in a thread only.
   */
  wasm?: string | URL | ArrayBuffer | ArrayBufferView | WebAssembly.Module;
}

/** RGBA pixels, row by row, 4 bytes per pixel (as ImageData holds them). */
export interface RgbaImage {
  data: Uint8Array | Uint8ClampedArray | ArrayBuffer;
  width: number;
  height: number;
}

/**
 * An image to segment. Blobs (files) are decoded by the browser without colour-profile
 * conversion, as the Python reference reads files.
 */
export type ImageInput =
  | ImageData
  | ImageBitmap
  | HTMLImageElement
  | HTMLCanvasElement
  | OffscreenCanvas
  | HTMLVideoElement
  | VideoFrame
  | Blob
  | RgbaImage;

/** A point in original image pixels: [x, y, label], label 1 foreground, 0 background. */
export type PointPrompt = [number, number, 0 | 1] | { x: number; y: number; label: 0 | 1 };

export interface Prompt {
  points?: PointPrompt[];
  /** [x0, y0, x1, y1] in original image pixels, x1 > x0 and y1 > y0. */
  box?: [number, number, number, number] | Float32Array;
  /** A previous mask's `lowResLogits` (256*256 floats), to refine the same object. */
  maskInput?: Float32Array;
  /** Three candidate masks (true, the default) or one. */
  multimask?: boolean;
  /**
   * SAM2ImagePredictor's `max_hole_area` (default 0: off): before the masks are made at the
   * image's size, regions outside a mask of at most this many low-res (256x256) pixels are filled.
   * The low-res logits returned are not changed. Any model.
   */
  maxHoleArea?: number;
  /** SAM2ImagePredictor's `max_sprinkle_area` (default 0: off): regions of a mask of at most this many low-res pixels are dropped. */
  maxSprinkleArea?: number;
}

export interface MaskResult {
  /** `width * height` values, row by row: 1 inside the mask, 0 outside. */
  data: Uint8Array;
  width: number;
  height: number;
  /** The predicted IoU. */
  score: number;
  /** The stability score (IoU of the masks thresholded at +1 and -1). */
  stabilityScore: number;
  /** This mask's 256x256 low-res logits (a view into `Prediction.lowResLogits`): pass as `maskInput`. */
  lowResLogits: Float32Array;
}

export interface Prediction {
  /** 3 masks with `multimask`, else 1, at the image's size. */
  masks: MaskResult[];
  /** The index of the mask with the highest score. */
  best: number;
  /** C * 256 * 256 low-res logits, C = masks.length. */
  lowResLogits: Float32Array;
  /** C predicted IoUs. */
  iou: Float32Array;
}

export interface Embedding<D = Float32Array> {
  /**
   * 1 * 256 * 64 * 64 floats (C order), or the bytes of a `.npy` file with `format: 'npy'` (SAM)
   * or of a `.npz` file with `format: 'npz'` (SAM 2: image_embed, high_res_feats_0 and _1).
   */
  data: D;
  /** SAM 2's high-resolution features (f32 only): 32 * 256 * 256 and 64 * 128 * 128 floats. */
  highRes?: [Float32Array, Float32Array];
  /** The original image size. */
  width: number;
  height: number;
}

export interface EmbeddingOptions {
  /**
   * "f32" (default): Float32Arrays; "npy": the bytes of a `.npy` file (SAM); "npz": the bytes of
   * a `.npz` file (SAM 2).
   */
  format?: 'f32' | 'npy' | 'npz';
}

/** Options of `generate`: `SamAutomaticMaskGenerator`'s, in camelCase, with its defaults. */
export interface GenerateOptions {
  /** Points along one side of the prompt grid (default 32); exclusive with `pointGrids`. */
  pointsPerSide?: number | null;
  /** Explicit grids of points in [0, 1]^2, one per crop layer (with `pointsPerSide: null`). */
  pointGrids?: Array<Array<[number, number]>> | null;
  /** Prompts per batch: one GPU submit, one progress step (default 64). */
  pointsPerBatch?: number;
  /** Keep masks whose predicted IoU is above this (default 0.88; SAM 2: 0.8). */
  predIouThresh?: number;
  /** Keep masks whose stability score is at least this (default 0.95). */
  stabilityScoreThresh?: number;
  /** The logit offset of the stability score (default 1). */
  stabilityScoreOffset?: number;
  /** Box IoU above which NMS drops a duplicate within a crop (default 0.7). */
  boxNmsThresh?: number;
  /** Crop layers: layer i adds (2^i)^2 crops, each encoded (default 0). */
  cropNLayers?: number;
  /** Box IoU above which NMS drops a duplicate across crops (default 0.7). */
  cropNmsThresh?: number;
  /** Overlap of the first layer's crops, as a fraction of the short side (default 512/1500). */
  cropOverlapRatio?: number;
  /** Points per side are divided by this to the power of the layer (default 1). */
  cropNPointsDownscaleFactor?: number;
  /** Holes and islands smaller than this many pixels are removed (default 0: none). */
  minMaskRegionArea?: number;
  /** How `segmentation` is given (default "coco_rle"). */
  outputMode?: 'coco_rle' | 'uncompressed_rle' | 'binary_mask';
}

/** COCO's run-length encoding of a mask: column-major runs, compressed as pycocotools does. */
export interface CocoRle {
  /** [height, width]. */
  size: [number, number];
  counts: string;
}

/** Uncompressed run lengths (column-major, starting with a run of zeros). */
export interface UncompressedRle {
  size: [number, number];
  counts: number[];
}

/** A mask as `decodeMask` gives it: 1 inside, row-major. */
export interface BinaryMask {
  data: Uint8Array;
  width: number;
  height: number;
}

/** A mask of `generate`, as the reference's records. */
export interface MaskRecord<S = CocoRle | UncompressedRle | BinaryMask> {
  segmentation: S;
  /** Pixels in the mask. */
  area: number;
  /** [x, y, width, height] of the mask (inclusive pixel extents, as the reference). */
  bbox: [number, number, number, number];
  predicted_iou: number;
  /** The prompt that made it, in image pixels: [[x, y]]. */
  point_coords: [[number, number]];
  /** null only for a mask empty at every threshold (NaN in the reference). */
  stability_score: number | null;
  /** [x, y, width, height] of the crop whose embedding made it. */
  crop_box: [number, number, number, number];
}

/** Where a `generate` call stands, after each step. */
export interface GenerateProgress {
  /** Steps done and in all (a crop's embedding, or a batch of prompts). */
  done: number;
  total: number;
  /** The crop being processed (0: the whole image) and the number of crops. */
  crop: number;
  crops: number;
  /** Masks kept so far (before the de-duplication that ends each crop). */
  masks: number;
  /** The masks this step's batch kept, before de-duplication (a preview). */
  preview: MaskRecord<CocoRle>[];
}

export interface GenerateCall {
  onProgress?: (progress: GenerateProgress) => void;
  /** Stops the generation between steps; the call rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** An object a person annotated, to fine-tune on (`train`). */
export interface TrainObject {
  /** `width * height` values, nonzero inside the object. */
  mask: Uint8Array;
  width: number;
  height: number;
  /** The image's embedding (256*64*64, or an object from `getEmbedding`); left out: the image set now. */
  embedding?: Float32Array | Embedding<Float32Array>;
}

export interface TrainOptions {
  /** Optimisation steps (200). */
  steps?: number;
  /** Objects per step (4). */
  batch?: number;
  /** Learning rate after the warm-up (1e-4; AdamW, betas 0.9 / 0.999, weight decay 0.1). */
  lr?: number;
  /** Seed of the objects' order and of their simulated clicks (0). */
  seed?: number;
}

export interface TrainProgress {
  step: number;
  steps: number;
  /** The step's batch loss before the step. */
  loss: number;
  lr: number;
}

/** The methods of `Sam` and `SamWorker`. */
export interface SamPredictor {
  /** The backend in use: "cpu" after a lost GPU device that could not be replaced. */
  readonly backend: Backend;
  /** The WebGPU adapter's name; undefined on the CPU. */
  readonly adapterName: string | undefined;
  /** "sam2" for a SAM 2 / 2.1 checkpoint (Hiera), else "sam" (SAM ViT, MobileSAM). */
  readonly family: 'sam' | 'sam2';
  /** Why backend "auto" runs on the CPU; undefined otherwise. */
  readonly fallbackReason: string | undefined;
  /** Threads of the CPU path (see `LoadOptions.threads`). */
  readonly threads: number;
  /**
   * Whether the CPU path's matrix products run on the relaxed-SIMD kernels module
   * (websam_kernels_bg.wasm beside the main module; fused multiply-add), where the engine has
   * relaxed SIMD; false where it has not, in Node, or where that file did not load (a console
   * warning says why): the portable kernel then runs, with the same results within rounding.
   */
  readonly relaxedSimd: boolean;
  /** "f16" when the WebGPU model runs in f16 (asked for and offered), else "f32". */
  readonly precision: Precision;
  /**
   * Embeds the image (the expensive step, once per image). `onProgress` follows the encoder: after
   * each block of SAM's ViT (TinyViT's encode is one step).
   */
  setImage(image: ImageInput, options?: { onProgress?: (p: EncodeProgress) => void }): Promise<void>;
  /** Masks for a prompt in original image pixels; needs an image or embedding set. */
  predict(prompt?: Prompt): Promise<Prediction>;
  getEmbedding(options?: { format?: 'f32' }): Promise<Embedding<Float32Array>>;
  getEmbedding(options: { format: 'npy' | 'npz' }): Promise<Embedding<Uint8Array>>;
  /**
   * Sets an embedding made elsewhere (an object from `getEmbedding`, a Float32Array of
   * 256*64*64 for SAM, `.npy` bytes for SAM or `.npz` bytes for SAM 2) for an image of `size`
   * (optional with a `getEmbedding` object).
   */
  setEmbedding(
    data: Float32Array | ArrayBuffer | Uint8Array | Embedding<Float32Array | Uint8Array>,
    size?: { width: number; height: number },
  ): Promise<void>;
  /**
   * Segment everything: every mask of the image set, as segment-anything's
   * `SamAutomaticMaskGenerator.generate` returns them (same records, same order).
   */
  generate(options?: GenerateOptions & { outputMode?: 'coco_rle' }, call?: GenerateCall): Promise<MaskRecord<CocoRle>[]>;
  generate(options: GenerateOptions & { outputMode: 'uncompressed_rle' }, call?: GenerateCall): Promise<MaskRecord<UncompressedRle>[]>;
  generate(options: GenerateOptions & { outputMode: 'binary_mask' }, call?: GenerateCall): Promise<MaskRecord<BinaryMask>[]>;
  /**
   * Fine-tunes the prompt encoder and mask decoder on annotated objects (the image encoder
   * frozen; the SAM paper's loss and interactive training; on the CPU). Resolves to the loss of
   * each step; the model then decodes with the trained weights. `signal` stops it between steps
   * (rejecting with its reason, the model as it was).
   */
  train(
    objects: TrainObject[],
    options?: TrainOptions,
    call?: { onProgress?: (p: TrainProgress) => void; signal?: AbortSignal },
  ): Promise<number[]>;
  /**
   * What `train` did to `objects`, measured on the model as it is now, training nothing: the
   * training loss of a first prompt (a click or a noisy box drawn from the object), the mean over
   * 8 prompts per object drawn with `seed` (0), the same prompts whatever the model.
   */
  trainingLoss(objects: TrainObject[], options?: { seed?: number }): Promise<number>;
  /** Whether the model decodes with trained weights (after `train`). */
  readonly tuned: boolean;
  /** Back to the checkpoint's prompt encoder and decoder; the image stays set. */
  revertTraining(): Promise<void>;
  /** The model as it decodes now, as `.safetensors` bytes under the official keys. */
  checkpoint(): Promise<Uint8Array>;
  /**
   * Frees the model: a call running finishes, calls still waiting reject (SamWorker: every
   * pending call, its worker stopped at once), later calls are refused.
   */
  dispose(): void;
  /**
   * What the model holds, in bytes: the wasm module's linear memory (it only grows), the heap
   * in use inside it (allocated and not freed: what a leak grows), the most that has been in use
   * since the module started, and the WebGPU buffer pool (0 on the CPU).
   */
  memoryStats(): Promise<{ wasmMemoryBytes: number; heapInUseBytes: number; heapPeakBytes: number; gpuPoolBytes: number }>;
  /** Destroys the WebGPU device as a driver reset would; the next call recovers. For tests. */
  destroyDeviceForTesting(): Promise<void>;
  /**
   * Fails inside the wasm module as a bug would: "panic", or "oom" (memory growth refused). The
   * call rejects; the package replaces the module's instance (SamWorker: its worker) and the
   * next call runs on the model reloaded, with its image set again. For tests.
   */
  failForTesting(kind: 'panic' | 'oom'): Promise<void>;
}

/** SAM on the thread that imports it. Calls run one after another, in order. */
export declare class Sam {
  private constructor();
  static load(options: LoadOptions): Promise<Sam>;
}
/** The methods, declared once in `SamPredictor`. */
export interface Sam extends SamPredictor {}

/** The mask of a COCO RLE (string or uncompressed counts): 1 inside, row-major. */
export declare function decodeMask(segmentation: CocoRle | UncompressedRle): BinaryMask;

/** Removes weights kept by `load` from the Cache API: one URL, or all. */
export declare function clearWeightsCache(url?: string | URL): Promise<boolean>;
