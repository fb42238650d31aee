// The optimized package (pkg/, as `./build.sh build` makes it) loads and predicts through its
// public API (`Sam`) under Node on the CPU backend: a wasm-opt that breaks the module (as
// Debian's binaryen 108 did) is caught here. Compares with the PyTorch golden of the
// `predictor_box` fixture case, and round-trips the embedding through .npy bytes.
import { readFileSync } from 'node:fs';
import { Sam } from '../../pkg/websam.js';
import { npy as fixtureNpy } from '../support/fixtures.mjs';

const npy = (name) => fixtureNpy(name).data;

const fixtures = new URL('../fixtures/', import.meta.url);
const read = (name) => readFileSync(new URL(name, fixtures));

function worstDiff(got, want) {
  if (got.length !== want.length) throw new Error(`${got.length} values, expected ${want.length}`);
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
  return worst;
}

const sam = await Sam.load({
  weights: read('sam_decoder.safetensors'),
  backend: 'cpu',
  wasm: read('../../pkg/websam_core_bg.wasm'),
});
if (sam.backend !== 'cpu') throw new Error(`backend ${sam.backend}`);
// Node reads no wasm by fetch: the main module's portable kernel runs the products here.
if (sam.relaxedSimd !== false) throw new Error(`relaxedSimd ${sam.relaxedSimd} in Node`);
await sam.setEmbedding(read('embedding.npy'), { width: 640, height: 480 });
const r = await sam.predict({ box: [370, 50, 570, 210], multimask: false });
const worst = worstDiff(r.lowResLogits, npy('case_predictor_box_low_res_logits.npy'));
if (!(worst <= 1e-3)) throw new Error(`low-res logits differ by ${worst}`);
if (r.masks.length !== 1 || r.masks[0].width !== 640 || r.masks[0].height !== 480) {
  throw new Error('unexpected masks');
}
// The embedding set from .npy comes back as floats equal to the file's, and as .npy bytes
// that set the same embedding again.
const e = await sam.getEmbedding();
if (worstDiff(e.data, npy('embedding.npy')) !== 0 || e.width !== 640 || e.height !== 480) {
  throw new Error('getEmbedding differs from the embedding set');
}
const asNpy = await sam.getEmbedding({ format: 'npy' });
await sam.setEmbedding(asNpy);
const again = await sam.predict({ box: [370, 50, 570, 210], multimask: false });
if (worstDiff(again.lowResLogits, r.lowResLogits) !== 0) throw new Error('.npy round trip changed the result');
let failed = false;
try {
  await sam.predict({ points: [[700, 10, 1]] });
} catch (e) {
  failed = e instanceof Error && e.message.includes('outside the 640x480 image');
}
if (!failed) throw new Error('a point outside the image was not refused with a message');
sam.dispose();
console.log(`optimized package on Node (cpu, through Sam): low-res logits within ${worst.toExponential(2)}`);
