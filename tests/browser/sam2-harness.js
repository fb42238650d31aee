// Runs in the test page: SAM 2.1 through the package's public API, against sam2 1.1.0's goldens
// of tests/fixtures/sam2 (SAM 2.1-T's Hiera cut to stages [1, 2, 3, 2] at half its widths; the
// checkpoint, which names its trunk in its metadata, is written to target/fixtures/ by
// `cargo run --example fixture_checkpoint -- sam2`, see sam2.test.mjs).
import { apis, f16npy, fetchOk, maxAbsDiff, npy, promptOf, FIXTURES } from './harness.js';
import { camelOptions, compare } from './everything-harness.js';

export const CHECKPOINT = '/target/fixtures/sam2_fixture.safetensors';
/** The golden cases' image, and its size. */
const IMAGE = '/www/samples/chelsea.png';
const SIZE = { width: 451, height: 300 };

async function chelsea() {
  const blob = await (await fetchOk(IMAGE)).blob();
  const img = new Image();
  img.src = URL.createObjectURL(blob);
  await img.decode();
  return img;
}

/**
 * Each of SAM 2's three maps against the reference's sample of it (the values at `k * stride`):
 * the largest difference relative to the map's largest magnitude.
 */
async function maps(e) {
  const s = await (await fetchOk(FIXTURES + 'sam2/image.json')).json();
  const ours = { image_embed: e.data, high_res_feats_0: e.highRes[0], high_res_feats_1: e.highRes[1] };
  const out = {};
  for (const [name, values] of Object.entries(ours)) {
    const m = s.maps[name];
    const reference = await npy('sam2/' + m.sample);
    const got = reference.map((_, k) => values[(k * s.stride) % values.length]);
    out[name] = maxAbsDiff(got, reference) / m.max_abs;
  }
  return out;
}

/**
 * The golden cases `names` decoded: low-res logits (relative to the reference's largest
 * magnitude) and IoU against the reference's, whether the logits are clamped to +-32 as sam2's
 * predictor returns them, and, where the reference has its logits at the image's size, the
 * mask pixels that differ where the reference's logit is at least `band` from 0.
 */
async function decodes(sam, names, band) {
  const all = (await (await fetchOk(FIXTURES + 'sam2/cases.json')).json()).cases;
  const out = {};
  for (const name of names) {
    const c = all.find((x) => x.name === name);
    const prompt = promptOf(c);
    if (c.mask_input) prompt.maskInput = await npy('sam2/' + c.mask_input);
    // SAM2ImagePredictor's max_hole_area / max_sprinkle_area (the `imagefill_` cases).
    if (c.max_hole_area) prompt.maxHoleArea = c.max_hole_area;
    if (c.max_sprinkle_area) prompt.maxSprinkleArea = c.max_sprinkle_area;
    const t = performance.now();
    const r = await sam.predict(prompt);
    const ms = performance.now() - t;
    const reference = await npy('sam2/' + c.low_res_logits);
    const scale = reference.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const [h, w] = c.orig_size;
    let flipped = null;
    if (c.logits) {
      const full = f16npy(await (await fetchOk(FIXTURES + 'sam2/' + c.logits)).arrayBuffer());
      flipped = 0;
      r.masks.forEach((m, i) => {
        for (let p = 0; p < h * w; p++) {
          const ref = full[i * h * w + p];
          if ((m.data[p] !== 0) !== (ref > 0) && Math.abs(ref) >= band) flipped += 1;
        }
      });
    }
    out[name] = {
      ms,
      logits: maxAbsDiff(r.lowResLogits, reference) / scale,
      iou: maxAbsDiff(r.iou, await npy('sam2/' + c.iou)),
      clamped: r.lowResLogits.every((v) => Math.abs(v) <= 32),
      masks: r.masks.length,
      expected: reference.length / (256 * 256),
      shapes: r.masks.every((m) => m.width === w && m.height === h),
      flipped,
    };
  }
  return out;
}

const CPU_CASES = ['image_click', 'image_click_single', 'image_box', 'image_box_points', 'image_points', 'image_refine',
  'imagefill_click', 'imagefill_box'];
// SwiftShader takes seconds per decode: a multimask click (with its masks at the image's size),
// a single-mask click (the dynamic fallback), a refinement with a mask input, and a box with the
// holes of its mask filled.
const GPU_CASES = ['image_click', 'image_click_single', 'image_refine', 'imagefill_box'];

/**
 * `cpuApi` on the CPU path (`threads`) encodes chelsea: its three maps, every golden case and
 * segment everything (the sam2_fixture_grid golden);
 * its embedding goes out as `.npz` and into `Sam` on WebGPU (`gpu`: false leaves it out), which
 * decodes GPU_CASES from it (with `gpuEncode`, it also encodes chelsea). Also: the format errors,
 * and the memory after each step.
 */
export async function sam2Parity(cpuApi, threads, gpu = true, gpuEncode = false) {
  const out = {};
  let t = performance.now();
  const sam = await apis[cpuApi].load({ weights: CHECKPOINT, backend: 'cpu', cache: false, threads });
  out.cpu = { family: sam.family, backend: sam.backend, threads: sam.threads, loadMs: performance.now() - t };
  out.cpu.afterLoad = await sam.memoryStats();
  t = performance.now();
  await sam.setImage(await chelsea());
  out.cpu.setImageMs = performance.now() - t;
  out.cpu.afterEncode = await sam.memoryStats();
  const e = await sam.getEmbedding();
  out.cpu.maps = await maps(e);
  out.cpu.highResLengths = e.highRes.map((m) => m.length);
  out.cpu.size = [e.width, e.height];
  out.cpu.cases = await decodes(sam, CPU_CASES, 0.01);
  // Segment everything: SAM2AutomaticMaskGenerator's records on a 4x4 grid (tests/fixtures/amg).
  const golden = await (await fetchOk('/tests/fixtures/amg/sam2_fixture_grid.json')).json();
  const { maskThreshold, useM2m, multimaskOutput, ...options } = camelOptions(golden.options);
  out.sam2OnlyOptions = [maskThreshold, useM2m, multimaskOutput];
  t = performance.now();
  out.everything = compare(golden, await sam.generate(options));
  out.everything.ms = performance.now() - t;
  out.npyError = await sam.getEmbedding({ format: 'npy' }).then(() => null, (err) => String(err.message));
  const npz = await sam.getEmbedding({ format: 'npz' });
  out.npz = { bytes: npz.data.length, magic: Array.from(npz.data.subarray(0, 4)), size: [npz.width, npz.height] };
  // The f32 object without its high-resolution maps is not SAM 2's embedding.
  out.withoutHighRes = await sam.setEmbedding({ data: e.data, width: e.width, height: e.height })
    .then(() => null, (err) => String(err.message));
  sam.dispose();
  if (!gpu) return out;
  t = performance.now();
  const g = await apis.Sam.load({ weights: CHECKPOINT, backend: 'webgpu', cache: false });
  out.gpu = { family: g.family, backend: g.backend, adapter: g.adapterName ?? null, loadMs: performance.now() - t };
  await g.setEmbedding(npz.data, SIZE);
  out.gpu.cases = await decodes(g, GPU_CASES, 0.05);
  if (gpuEncode) {
    // The encoder on WebGPU too (minutes on SwiftShader): its maps, and a click from them.
    t = performance.now();
    await g.setImage(await chelsea());
    out.gpu.setImageMs = performance.now() - t;
    out.gpu.maps = await maps(await g.getEmbedding());
    out.gpu.fromImage = await decodes(g, ['image_click'], 0.05);
  }
  g.dispose();
  return out;
}
