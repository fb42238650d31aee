// Compiled (not run) by `./build.sh test` with tsc --strict against pkg/'s declarations: the
// documented API type-checks, and misuse the declarations should catch is rejected
// (@ts-expect-error fails the compile when a line stops being an error).
import {
  Sam, clearWeightsCache, decodeMask, type GenerateProgress, type LoadProgress, type MaskRecord,
  type Prediction, type SamPredictor, type TrainProgress,
} from '../../pkg/websam.js';
import { SamWorker, decodeMask as decodeMaskToo } from '../../pkg/worker.js';

async function demo(canvas: HTMLCanvasElement, file: File): Promise<number> {
  const onProgress = (p: LoadProgress) => console.log(p.stage, p.loaded, p.total ?? '?');
  const sam: SamPredictor = await Sam.load({ weights: '/mobile_sam.pt', backend: 'auto', onProgress });
  const backend: 'webgpu' | 'cpu' = sam.backend;
  await sam.setImage(canvas);
  await sam.setImage(file);
  await sam.setImage(file, { onProgress: ({ done, steps }) => console.log(`${done}/${steps}`) });
  await sam.setImage({ data: new Uint8Array(16), width: 2, height: 2 });
  const r: Prediction = await sam.predict({ points: [[10, 20, 1], { x: 5, y: 6, label: 0 }], box: [0, 0, 50, 50] });
  const refined = await sam.predict({ points: [[10, 20, 1]], maskInput: r.masks[r.best].lowResLogits, multimask: false });
  const e = await sam.getEmbedding();
  const f32: Float32Array = e.data;
  const npy = await sam.getEmbedding({ format: 'npy' });
  const bytes: Uint8Array = npy.data;
  await sam.setEmbedding(f32, { width: e.width, height: e.height });
  await sam.setEmbedding(npy);
  // SAM 2: three arrays, and its file is .npz.
  const family: 'sam' | 'sam2' = sam.family;
  if (family === 'sam2') {
    const highRes: [Float32Array, Float32Array] | undefined = e.highRes;
    await sam.setEmbedding({ data: f32, highRes, width: e.width, height: e.height });
    const npz = await sam.getEmbedding({ format: 'npz' });
    const npzBytes: Uint8Array = npz.data;
    await sam.setEmbedding(npzBytes, { width: npz.width, height: npz.height });
  }
  const controller = new AbortController();
  const records = await sam.generate({ pointsPerSide: 16, minMaskRegionArea: 100 }, {
    signal: controller.signal,
    onProgress: (p: GenerateProgress) => console.log(p.done, p.total, p.preview.length),
  });
  const rle: string = records[0].segmentation.counts;
  const mask: Uint8Array = decodeMask(records[0].segmentation).data;
  const binary = await sam.generate({ outputMode: 'binary_mask', cropNLayers: 1 });
  const pixels: Uint8Array = binary[0].segmentation.data;
  const counts: number[] = (await sam.generate({ outputMode: 'uncompressed_rle' }))[0].segmentation.counts;
  const first: MaskRecord = records[0];
  const [x, y, bw, bh] = first.bbox;
  decodeMaskToo({ size: [2, 2], counts: [1, 3] });
  // @ts-expect-error output modes are coco_rle, uncompressed_rle and binary_mask
  await sam.generate({ outputMode: 'polygons' });
  const losses: number[] = await sam.train([{ mask: pixels, width: 2, height: 2, embedding: e }], { steps: 10 }, {
    signal: controller.signal,
    onProgress: (p: TrainProgress) => console.log(p.step, p.steps, p.loss, p.lr),
  });
  const objective: number = await sam.trainingLoss([{ mask: pixels, width: 2, height: 2, embedding: e }], { seed: 1 });
  // @ts-expect-error the seed is a number
  await sam.trainingLoss([{ mask: pixels, width: 2, height: 2 }], { seed: '1' });
  const tuned: boolean = sam.tuned;
  const tunedFile: Uint8Array = await sam.checkpoint();
  await sam.revertTraining();
  // @ts-expect-error a mask is a Uint8Array
  await sam.train([{ mask: [1, 0], width: 2, height: 1 }]);
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
  return backend.length + precision.length + refined.iou.length + w.masks.length + bytes.length
    + rle.length + mask.length + pixels.length + counts.length + x + y + bw + bh;
}

export { demo };
