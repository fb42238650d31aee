// Fine-tuning through the package's API under Node (the CPU path): Sam.train on an annotated
// object, its progress and losses, the training objective on it (trainingLoss) falling, the tuned
// model in use (tuned, other masks), the tuned checkpoint loading as any other, revertTraining
// bit for bit, an abort leaving the model as it was, and bad objects refused before anything runs.
import { readFileSync } from 'node:fs';
import { Sam } from '../../pkg/websam.js';

const fixtures = new URL('../fixtures/', import.meta.url);
const read = (name) => readFileSync(new URL(name, fixtures));
const wasm = read('../../pkg/websam_core_bg.wasm');

const sam = await Sam.load({ weights: read('sam_decoder.safetensors'), backend: 'cpu', wasm });
await sam.setEmbedding(read('embedding.npy'), { width: 640, height: 480 });
const prompt = { box: [370, 50, 570, 210], multimask: false };
const original = await sam.predict(prompt);
// The object: the rectangle under the box.
const mask = new Uint8Array(640 * 480);
for (let y = 50; y < 210; y++) mask.fill(1, y * 640 + 370, y * 640 + 570);
const object = { mask, width: 640, height: 480 };

const same = (a, b) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));

// Bad objects: refused before anything runs.
for (const [bad, why] of [
  [[], 'non-empty array'],
  [[{ mask: new Uint8Array(3), width: 640, height: 480 }], 'width * height'],
  [[{ ...object, embedding: [1, 2] }], 'Float32Array'],
]) {
  let message = '';
  try {
    await sam.train(bad, { steps: 1 });
  } catch (e) {
    message = e.message;
  }
  if (!message.includes(why)) throw new Error(`bad objects: "${message}" lacks "${why}"`);
}
let refused = '';
try {
  await sam.train([{ ...object, mask: new Uint8Array(640 * 480) }], { steps: 1 });
} catch (e) {
  refused = e.message;
}
if (!refused.includes('empty ground-truth mask')) throw new Error(`empty mask: "${refused}"`);
if (sam.tuned) throw new Error('tuned after refused runs');

// An abort after the first step: the model as it was.
const controller = new AbortController();
let aborted = false;
try {
  await sam.train([object], { steps: 3, batch: 1 }, { onProgress: () => controller.abort(), signal: controller.signal });
} catch (e) {
  aborted = e.name === 'AbortError';
}
if (!aborted || sam.tuned) throw new Error(`abort: ${aborted}, tuned ${sam.tuned}`);
if (!same((await sam.predict(prompt)).lowResLogits, original.lowResLogits)) throw new Error('an aborted run changed the model');

let badSeed = '';
try {
  await sam.trainingLoss([object], { seed: -1 });
} catch (e) {
  badSeed = e.message;
}
if (!badSeed.includes('seed must be an integer')) throw new Error(`seed -1: "${badSeed}"`);
const before = await sam.trainingLoss([object]);
const t = performance.now();
const progress = [];
const losses = await sam.train([object], { steps: 2, batch: 1, lr: 1e-3, seed: 3 }, { onProgress: (p) => progress.push(p) });
const seconds = (performance.now() - t) / 1000;
if (losses.length !== 2 || !losses.every(Number.isFinite)) throw new Error(`losses ${losses}`);
if (progress.map((p) => p.step).join() !== '1,2' || progress[1].steps !== 2) throw new Error(`progress ${JSON.stringify(progress)}`);
if (!sam.tuned) throw new Error('not tuned after train');
const tuned = await sam.predict(prompt);
if (same(tuned.lowResLogits, original.lowResLogits)) throw new Error('the tuned model predicts as the original');
// The objective with the same prompts: lower after the run.
const after = await sam.trainingLoss([object]);
if (!(after < before)) throw new Error(`the training objective went from ${before} to ${after}`);

// The tuned checkpoint loads as any other and predicts as the tuned model.
const bytes = await sam.checkpoint();
const reloaded = await Sam.load({ weights: bytes, backend: 'cpu', wasm });
await reloaded.setEmbedding(read('embedding.npy'), { width: 640, height: 480 });
if (!same((await reloaded.predict(prompt)).lowResLogits, tuned.lowResLogits)) throw new Error('the tuned checkpoint predicts otherwise');
reloaded.dispose();

await sam.revertTraining();
if (sam.tuned) throw new Error('tuned after revert');
if (!same((await sam.predict(prompt)).lowResLogits, original.lowResLogits)) throw new Error('revert is not bit for bit');
const reverted = await sam.trainingLoss([object]);
if (!Object.is(reverted, before)) throw new Error(`the objective after revert ${reverted}, before the run ${before}`);
sam.dispose();
console.log(`training on Node (cpu): losses ${losses.map((l) => l.toFixed(4)).join(', ')}; 2 steps of one object in ${seconds.toFixed(1)} s; `
  + `the objective ${before.toFixed(4)} -> ${after.toFixed(4)}`);
