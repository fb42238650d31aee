// The optimized package (pkg/, as `./build.sh build` makes it) instantiates and predicts on the
// CPU backend under Node: a wasm-opt that breaks the module (as Debian's binaryen 108 did) is
// caught here. Compares with the PyTorch golden of the `predictor_box` fixture case.
import { readFileSync } from 'node:fs';
import initSync, { WebSam } from '../../pkg/websam.js';

const fixtures = new URL('../fixtures/', import.meta.url);
const read = (name) => readFileSync(new URL(name, fixtures));

// Minimal .npy reader for the f32 fixtures (C order, little endian).
function npy(name) {
  const buf = read(name);
  const headerLen = buf.readUInt16LE(8);
  const header = buf.subarray(10, 10 + headerLen).toString('latin1');
  if (!header.includes("'<f4'")) throw new Error(`${name}: expected float32, got ${header}`);
  const data = buf.subarray(10 + headerLen);
  return new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
}

await initSync({ module_or_path: read('../../pkg/websam_bg.wasm') });
const sam = await WebSam.load(read('sam_decoder.safetensors'), 'cpu');
if (sam.backend !== 'cpu') throw new Error(`backend ${sam.backend}`);
await sam.setEmbedding(npy('embedding.npy'), 640, 480);
const r = await sam.predict(undefined, new Float32Array([370, 50, 570, 210]), undefined, false);
const want = npy('case_predictor_box_low_res_logits.npy');
let worst = 0;
for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(r.lowResLogits[i] - want[i]));
if (!(worst <= 1e-3)) throw new Error(`low-res logits differ by ${worst}`);
if (r.masks.length !== 1 || r.masks[0].width !== 640 || r.masks[0].height !== 480) {
  throw new Error('unexpected masks');
}
let failed = false;
try {
  await sam.predict(new Float32Array([700, 10, 1]), undefined, undefined, true);
} catch (e) {
  failed = e instanceof Error && e.message.includes('outside the 640x480 image');
}
if (!failed) throw new Error('a point outside the image was not refused with a message');
console.log(`optimized package on Node (cpu): low-res logits within ${worst.toExponential(2)}`);
