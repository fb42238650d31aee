// A page as an app using websam from npm would write it: import the package, load weights by
// URL, set the embedding, predict a box, on the page's thread and in the worker.
import { Sam } from 'websam';
import { SamWorker } from 'websam/worker';

async function segment(API) {
  const sam = await API.load({ weights: '/sam_decoder.safetensors', backend: 'auto' });
  const embedding = await (await fetch('/embedding.npy')).arrayBuffer();
  await sam.setEmbedding(embedding, { width: 640, height: 480 });
  const r = await sam.predict({ box: [370, 50, 570, 210], multimask: false });
  const mask = r.masks[r.best];
  const out = {
    backend: sam.backend,
    relaxedSimd: sam.relaxedSimd,
    width: mask.width,
    height: mask.height,
    ones: mask.data.reduce((n, v) => n + v, 0),
    lowResLogits: Array.from(r.lowResLogits),
  };
  sam.dispose();
  return out;
}

window.result = (async () => ({ Sam: await segment(Sam), SamWorker: await segment(SamWorker) }))();
window.result.then(
  () => { document.getElementById('status').textContent = 'done'; },
  (e) => { document.getElementById('status').textContent = `failed: ${e.message}`; },
);
