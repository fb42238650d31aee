// Runs in the test page: SAM's ViT encoder through the package's public API, against the
// PyTorch goldens of tests/fixtures/vit/ (two blocks of ViT-B's structure; the checkpoint is
// written to target/fixtures/ by `cargo run --example fixture_checkpoint -- vit`, see vit.test.mjs).
import { apis, f16npy, fetchOk, fixtureImage, maxAbsDiff, npy, promptOf, FIXTURES } from './harness.js';

export const CHECKPOINT = '/target/fixtures/vit_b2.safetensors';

/**
 * Load, setImage (the 640x480 fixture), the embedding against PyTorch's, then every predictor
 * case: low-res logits, IoU and the masks' pixels against the reference's full-size logits.
 */
export async function vitParity(api, backend, threads) {
  const t0 = performance.now();
  const sam = await apis[api].load({ weights: CHECKPOINT, backend, cache: false, threads });
  const out = { backend: sam.backend, threads: sam.threads, loadMs: performance.now() - t0 };
  out.afterLoad = await sam.memoryStats();
  const img = await fixtureImage();
  const t = performance.now();
  out.progress = [];
  await sam.setImage(img, { onProgress: ({ done, steps }) => out.progress.push([done, steps]) });
  out.setImageMs = performance.now() - t;
  out.afterEncode = await sam.memoryStats();
  const e = await sam.getEmbedding();
  out.embedding = maxAbsDiff(e.data, await npy('vit/embedding.npy'));
  const all = await (await fetchOk(FIXTURES + 'vit/cases.json')).json();
  out.cases = {};
  for (const c of all.cases) {
    const r = await sam.predict(promptOf(c));
    const reference = f16npy(await (await fetchOk(FIXTURES + 'vit/' + c.logits)).arrayBuffer());
    const [h, w] = c.orig_size;
    let differ = 0;
    r.masks.forEach((m, i) => {
      for (let p = 0; p < h * w; p++) {
        const ref = reference[i * h * w + p];
        if ((m.data[p] !== 0) !== (ref > 0) && Math.abs(ref) >= 1e-3) differ += 1;
      }
    });
    out.cases[c.name] = {
      logits: maxAbsDiff(r.lowResLogits, await npy('vit/' + c.low_res_logits)),
      iou: maxAbsDiff(r.iou, await npy('vit/' + c.iou)),
      masks: r.masks.length,
      differ,
    };
  }
  sam.dispose();
  return out;
}
