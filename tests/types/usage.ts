// Compiled (not run) by `./build.sh test` with tsc --strict against pkg/'s declarations: the
// documented API type-checks, and misuse the declarations should catch is rejected
// (@ts-expect-error fails the compile when a line stops being an error).
import { Sam, clearWeightsCache, type LoadProgress, type Prediction, type SamPredictor } from '../../pkg/websam.js';
import { SamWorker } from '../../pkg/worker.js';

async function demo(canvas: HTMLCanvasElement, file: File): Promise<number> {
  const onProgress = (p: LoadProgress) => console.log(p.stage, p.loaded, p.total ?? '?');
  const sam: SamPredictor = await Sam.load({ weights: '/mobile_sam.pt', backend: 'auto', onProgress });
  const backend: 'webgpu' | 'cpu' = sam.backend;
  await sam.setImage(canvas);
  await sam.setImage(file);
  await sam.setImage({ data: new Uint8Array(16), width: 2, height: 2 });
  const r: Prediction = await sam.predict({ points: [[10, 20, 1], { x: 5, y: 6, label: 0 }], box: [0, 0, 50, 50] });
  const refined = await sam.predict({ points: [[10, 20, 1]], maskInput: r.masks[r.best].lowResLogits, multimask: false });
  const e = await sam.getEmbedding();
  const f32: Float32Array = e.data;
  const npy = await sam.getEmbedding({ format: 'npy' });
  const bytes: Uint8Array = npy.data;
  await sam.setEmbedding(f32, { width: e.width, height: e.height });
  await sam.setEmbedding(npy);
  sam.dispose();

  const half = await Sam.load({ weights: '/mobile_sam.pt', backend: 'webgpu', precision: 'f16' });
  const precision: 'f32' | 'f16' = half.precision;
  half.dispose();

  const worker = await SamWorker.load({ weights: new Uint8Array(bytes), backend: 'cpu' });
  const w = await worker.predict({ box: new Float32Array([0, 0, 1, 1]) });
  worker.dispose();
  await clearWeightsCache();

  // @ts-expect-error backend names are "auto", "webgpu" and "cpu"
  await Sam.load({ weights: '/w.pth', backend: 'gpu' });
  // @ts-expect-error precisions are "f32" and "f16"
  await Sam.load({ weights: '/w.pth', precision: 'f8' });
  // @ts-expect-error labels are 0 or 1
  await sam.predict({ points: [[1, 2, 3]] });
  // @ts-expect-error a box has 4 numbers
  await sam.predict({ box: [1, 2, 3] });
  // @ts-expect-error use Sam.load
  new Sam();
  return backend.length + precision.length + refined.iou.length + w.masks.length + bytes.length;
}

export { demo };
