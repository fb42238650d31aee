// Training throughput (issue 17; a benchmark, not part of the tests): one object of a training
// step is an interactive sequence of 11 predictions with their backward passes (docs/TRAINING.md).
// The trained MobileSAM (models/mobile_sam.pt), three objects (the masks it gives for the
// reference's box prompts on chelsea, coffee and astronaut, tests/fixtures/real, from the
// reference's embeddings), STEPS steps with all three in each batch, on:
// - PyTorch: the official modules doing the same work (bench/train_torch.py), 1 and 2 threads;
// - websam natively: `websam train` (target/release/websam), 1 and 2 threads (RAYON_NUM_THREADS);
// - websam in headless Chromium, the package's CPU path: Sam on the main thread (one thread),
//   SamWorker on a cross-origin isolated page with 1 and 2 threads.
// Each row: seconds per object (all steps, the first included) and its ratio to PyTorch on the
// same number of threads, measured in this one run.
//   node bench/train.mjs [STEPS]   (default 2; after `cargo build --release --bin websam` and the
//   package: ./build.sh bench-train does both; BENCH_PYTHON: the Python with torch and
//   segment_anything, default target/bench-venv/bin/python). Writes bench/out/train-bench/.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from '../tools/serve.mjs';
import { rleCounts } from '../www/annotate.js';
import { launch } from '../tests/browser/browser.mjs';

const root = fileURLToPath(new URL('../', import.meta.url));
const steps = Number(process.argv[2] ?? 2);
if (!Number.isInteger(steps) || steps < 1) {
  console.error('usage: node bench/train.mjs [STEPS]');
  process.exit(2);
}
const names = ['chelsea', 'coffee', 'astronaut'];
const dir = join(root, 'bench/out/train-bench');
const python = process.env.BENCH_PYTHON ?? join(root, 'target/bench-venv/bin/python');
const weights = '/models/mobile_sam.pt';
mkdirSync(join(dir, 'emb'), { recursive: true });

const server = await serve({
  '/': join(root, 'bench/page'), '/pkg/': join(root, 'pkg'), '/fixtures/': join(root, 'tests/fixtures'),
  '/models/': join(root, 'models'),
}, { isolated: true });
const browser = await launch({ webgpu: false });
const rows = [];
try {
  const inPage = async (fn, args) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
    await page.goto(`${server.url}/`);
    try {
      return await page.evaluate(([f, a]) => import('/train.js').then((m) => m[f](...a)), [fn, args]);
    } finally {
      await context.close();
    }
  };
  const objs = await inPage('objects', [weights, names]);
  const coco = { images: [], annotations: [], categories: [{ id: 1, name: 'object' }] };
  objs.forEach((o, i) => {
    copyFileSync(join(root, `tests/fixtures/real/${o.name}_embedding.npy`), join(dir, 'emb', `${o.name}.npy`));
    coco.images.push({ id: i + 1, file_name: `${o.name}.png`, height: o.height, width: o.width });
    coco.annotations.push({ id: i + 1, image_id: i + 1, category_id: 1, iscrowd: 0, segmentation: { size: [o.height, o.width], counts: rleCounts({ data: o.mask, width: o.width, height: o.height }) } });
    const pixels = o.mask.reduce((a, b) => a + b, 0);
    if (pixels === 0) throw new Error(`${o.name}: an empty object`);
    console.error(`${o.name}: ${o.width}x${o.height}, the object ${pixels} pixels`);
  });
  writeFileSync(join(dir, 'coco.json'), JSON.stringify(coco));
  const samples = steps * objs.length;
  const torch = {};
  for (const threads of [1, 2]) {
    console.error(`PyTorch, ${threads} thread(s)`);
    const out = execFileSync(python, [join(root, 'bench/train_torch.py'), dir, String(steps), String(threads)], { encoding: 'utf8' });
    const r = JSON.parse(out.trim().split('\n').pop());
    torch[threads] = r.seconds.reduce((a, b) => a + b, 0);
    rows.push({ system: 'PyTorch (official modules)', threads, seconds: torch[threads] });
  }
  for (const threads of [1, 2]) {
    console.error(`websam natively, ${threads} thread(s)`);
    const run = spawnSync(join(root, 'target/release/websam'), ['train', '--weights', join(root, 'models/mobile_sam.pt'),
      '--coco', join(dir, 'coco.json'), '--images', join(root, 'www/samples'), '--embeddings', join(dir, 'emb'),
      '--steps', String(steps), '--batch', String(objs.length), '--eval-every', String(steps),
      '--out', join(dir, 'tuned.safetensors')], { env: { ...process.env, RAYON_NUM_THREADS: String(threads) }, encoding: 'utf8' });
    if (run.status !== 0) throw new Error(`websam train failed: ${run.stderr}`);
    // The last "step S/S: ..., T s" line: seconds since training began.
    const last = run.stderr.match(/step \d+\/\d+: [^\n]*/g)?.pop();
    const seconds = Number(last?.match(/([\d.]+) s\b/)?.[1]);
    if (!Number.isFinite(seconds)) throw new Error(`no step time in: ${run.stderr}`);
    rows.push({ system: 'websam natively (websam train)', threads, seconds });
  }
  for (const [api, threads, label] of [['Sam', 1, 'websam in Chromium, Sam (main thread)'],
    ['SamWorker', 1, 'websam in Chromium, SamWorker'], ['SamWorker', 2, 'websam in Chromium, SamWorker']]) {
    console.error(`${label}, ${threads} thread(s)`);
    const r = await inPage('train', [weights, api, threads, objs, steps]);
    if (r.threads !== threads) throw new Error(`${label}: ${r.threads} threads, asked for ${threads}`);
    rows.push({ system: label, threads, seconds: r.ms / 1000, relaxedSimd: r.relaxedSimd, losses: r.losses });
  }
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  console.log(`\nTraining throughput: ${objs.length} objects, ${steps} steps of ${objs.length} (${samples} interactive `
    + `sequences of 11 predictions), ${cpu}, ${cpus().length} cores\n`);
  console.log('| system | threads | s per object | objects/s | over PyTorch, same threads |');
  console.log('|---|---|---|---|---|');
  for (const r of rows) {
    const per = r.seconds / samples;
    console.log(`| ${r.system} | ${r.threads} | ${per.toFixed(2)} | ${(1 / per).toFixed(3)} | ${(r.seconds / torch[r.threads]).toFixed(2)}x |`);
  }
  writeFileSync(join(dir, 'results.json'), JSON.stringify({ steps, objects: objs.length, cpu, cores: cpus().length, rows }, null, 2));
} finally {
  await browser.close();
  await server.close();
}
