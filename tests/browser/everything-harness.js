// Runs in the test page: "segment everything" through the package's public API (Sam.generate,
// SamWorker.generate) against the official generator's records (tests/fixtures/amg, made by
// tools/golden/make_amg.py). everything.test.mjs calls these functions and asserts on what they
// return.
import { apis, fetchOk } from '/tests/browser/harness.js';
import { decodeMask } from '/pkg/websam.js';

const AMG = '/tests/fixtures/amg/';

/** The reference's option names (Python) in the API's camelCase; output_mode stays as given. */
export function camelOptions(python) {
  const out = {};
  for (const [k, v] of Object.entries(python)) {
    if (k === 'output_mode') continue;
    out[k.replace(/_([a-z])/g, (_, c) => c.toUpperCase())] = v;
  }
  return out;
}

async function photo(path) {
  const img = new Image();
  img.src = `/${path}`;
  await img.decode();
  return img;
}

/** Our records against the golden's: the same checks as tests/everything.rs. */
export function compare(golden, ours) {
  const bad = [];
  if (ours.length !== golden.records.length) {
    bad.push(`${ours.length} records, the reference has ${golden.records.length}`);
  }
  let flips = 0;
  let worstIou = 0;
  let worstStability = 0;
  ours.forEach((r, i) => {
    const want = golden.records[i];
    if (!want) return;
    const mask = decodeMask(r.segmentation).data;
    const ref = decodeMask(want.segmentation).data;
    const band = decodeMask(golden.band[i]).data;
    let differ = 0;
    for (let k = 0; k < mask.length; k++) {
      if (mask[k] !== ref[k]) {
        differ++;
        if (!band[k]) {
          bad.push(`record ${i}: a pixel differs outside the band`);
          break;
        }
      }
    }
    flips += differ;
    if (differ === 0) {
      if (r.area !== want.area) bad.push(`record ${i}: area ${r.area} vs ${want.area}`);
      // Numbers compare as numbers (the reference may write 0.0 where we write 0).
      if (JSON.stringify(r.bbox) !== JSON.stringify(want.bbox.map(Number))) bad.push(`record ${i}: bbox ${r.bbox} vs ${want.bbox}`);
      if (r.segmentation.counts !== want.segmentation.counts) bad.push(`record ${i}: RLE differs`);
    }
    for (const key of ['point_coords', 'crop_box']) {
      if (JSON.stringify(r[key]) !== JSON.stringify(want[key])) bad.push(`record ${i}: ${key} ${JSON.stringify(r[key])} vs ${JSON.stringify(want[key])}`);
    }
    worstIou = Math.max(worstIou, Math.abs(r.predicted_iou - want.predicted_iou));
    worstStability = Math.max(worstStability, Math.abs(r.stability_score - want.stability_score));
  });
  return { bad, flips, worstIou, worstStability, count: ours.length, reference: golden.records.length };
}

/**
 * Loads the checkpoint of `caseName` with `api` on `backend`, sets the photograph (or, with
 * `fromEmbedding`, the reference's stored embedding of it), generates with the case's options
 * and compares. Also reports the progress calls.
 */
export async function everythingParity(api, backend, caseName, { fromEmbedding = null } = {}) {
  const golden = await (await fetchOk(`${AMG}${caseName}.json`)).json();
  const weights = golden.weights === 'real' ? '/models/mobile_sam.pt' : '/tests/fixtures/mobile_sam.pth';
  const sam = await apis[api].load({ weights, backend, cache: false });
  try {
    const [height, width] = golden.image_size;
    let t = performance.now();
    if (fromEmbedding) {
      const emb = await (await fetchOk(fromEmbedding)).arrayBuffer();
      await sam.setEmbedding(emb, { width, height });
    } else {
      await sam.setImage(await photo(golden.image));
    }
    const setImageMs = performance.now() - t;
    const progress = [];
    t = performance.now();
    const records = await sam.generate(camelOptions(golden.options), {
      onProgress: (p) => progress.push({ done: p.done, total: p.total, crop: p.crop, crops: p.crops, preview: p.preview.length }),
    });
    const generateMs = performance.now() - t;
    return { backend: sam.backend, setImageMs, generateMs, progress, ...compare(golden, records) };
  } finally {
    sam.dispose();
  }
}

/**
 * Aborts a generation after its first step, then checks that the model still predicts (the same
 * masks as before) and that a new generation completes; also the errors of misuse.
 */
export async function everythingAbort(api, backend) {
  const golden = await (await fetchOk(`${AMG}fixture_crop.json`)).json();
  const sam = await apis[api].load({ weights: '/tests/fixtures/mobile_sam.pth', backend, cache: false });
  const errors = {};
  const attempt = async (name, fn) => {
    try {
      await fn();
      errors[name] = null;
    } catch (e) {
      errors[name] = `${e.name}: ${e.message}`;
    }
  };
  try {
    await attempt('noImage', () => sam.generate({ pointsPerSide: 2 }));
    await sam.setImage(await photo('tests/fixtures/image.png'));
    const click = { points: [[20, 30, 1]] };
    const before = await sam.predict(click);
    const options = camelOptions(golden.options);
    const controller = new AbortController();
    let steps = 0;
    let total = 0;
    await attempt('aborted', () => sam.generate(options, {
      signal: controller.signal,
      onProgress: (p) => {
        steps++;
        total = p.total;
        // Into the crop layer (a crop's embedding set), then stop.
        if (p.crop >= 2) controller.abort();
      },
    }));
    const after = await sam.predict(click);
    let same = before.iou.length === after.iou.length;
    for (let i = 0; i < before.lowResLogits.length; i++) same &&= before.lowResLogits[i] === after.lowResLogits[i];
    await attempt('alreadyAborted', () => sam.generate(options, { signal: controller.signal }));
    await attempt('pointsPerSide0', () => sam.generate({ pointsPerSide: 0 }));
    await attempt('both', () => sam.generate({ pointGrids: [[[0.5, 0.5]]] }));
    await attempt('threshold', () => sam.generate({ predIouThresh: 1.5 }));
    await attempt('unknown', () => sam.generate({ pointsPerSides: 4 }));
    await attempt('outputMode', () => sam.generate({ outputMode: 'polygons' }));
    // After the abort, a generation gives the reference's records (small regions removed: no
    // crops, so cheap), and the output modes agree with each other.
    const golden2 = await (await fetchOk(`${AMG}fixture_min_region.json`)).json();
    const records = await sam.generate(camelOptions(golden2.options));
    const cheap = { pointsPerSide: 4, predIouThresh: 0, stabilityScoreThresh: 0 };
    const coco = await sam.generate(cheap);
    const binary = await sam.generate({ ...cheap, outputMode: 'binary_mask' });
    const uncompressed = await sam.generate({ ...cheap, outputMode: 'uncompressed_rle' });
    const sameBinary = coco.length > 0 && binary.length === coco.length && binary.every((r, i) => {
      const m = decodeMask(coco[i].segmentation).data;
      return r.segmentation.data.length === m.length && r.segmentation.data.every((v, k) => v === m[k]);
    });
    const sameCounts = uncompressed.length === coco.length && uncompressed.every((r, i) => {
      const { size, counts } = r.segmentation;
      const m = decodeMask({ size, counts }).data;
      const ref = decodeMask(coco[i].segmentation).data;
      return counts.reduce((a, b) => a + b, 0) === size[0] * size[1] && m.every((v, k) => v === ref[k]);
    });
    return {
      errors, steps, total, samePrediction: same, sameBinary, sameCounts, ...compare(golden2, records),
    };
  } finally {
    sam.dispose();
  }
}
