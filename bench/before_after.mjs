// Two builds of the npm package, one run: websam's CPU path in headless Chromium (1 thread,
// and SamWorker on every core), the same measurement as `./build.sh bench` (bench/page), the two
// builds alternated A B A B ... so that drift of the machine falls on both. Prints each round and
// the medians of B over A. Writes nothing.
//   node bench/before_after.mjs PKG_A PKG_B [rounds]   (default 2 rounds; systems in BENCH_SYSTEMS,
//   default "websam-cpu websam-cpu-mt"). BENCH_WEIGHTS=FILE: the encoder alone on another
//   checkpoint (e.g. bench/out/sam_vit_b_seeded.safetensors; one encode after a warm-up per build
//   and round), as bench/vit_browser.mjs times it.
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from '../tools/serve.mjs';
import { launch } from '../tests/browser/browser.mjs';

const root = fileURLToPath(new URL('../', import.meta.url));
const [pkgA, pkgB, roundsArg] = process.argv.slice(2);
if (!pkgA || !pkgB) {
  console.error('usage: node bench/before_after.mjs PKG_A PKG_B [rounds]');
  process.exit(2);
}
const rounds = Number(roundsArg ?? 2);
const systems = (process.env.BENCH_SYSTEMS ?? 'websam-cpu websam-cpu-mt').split(/\s+/).filter(Boolean);
const weightsFile = process.env.BENCH_WEIGHTS ? resolve(process.env.BENCH_WEIGHTS) : null;
const keys = weightsFile ? ['encode'] : ['encode', 'point', 'box', 'points5'];

const browser = await launch();
const rows = [];
try {
  for (let round = 0; round < rounds; round++) {
    for (const [label, pkg] of [['A', pkgA], ['B', pkgB]]) {
      const server = await serve({
        '/': join(root, 'bench/page'), '/pkg/': resolve(pkg), '/fixtures/': join(root, 'tests/fixtures'),
        ...(weightsFile ? { '/weights/': dirname(weightsFile) } : {}),
      }, { isolated: true });
      try {
        for (const name of systems) {
          const context = await browser.newContext();
          const p = await context.newPage();
          p.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
          await p.goto(`${server.url}/`);
          p.setDefaultTimeout(0);
          const weights = weightsFile && `/weights/${basename(weightsFile)}`;
          const r = await p.evaluate(([n, w]) => import('/bench.js').then((b) => (w
            ? b.encodeOnly(n, { weights: w, runs: 1 })
            : b.measure(n, { hoverMs: 0 }))), [name, weights]);
          await context.close();
          const row = weightsFile
            ? { round, label, name, encode: r.encode.median }
            : { round, label, name, encode: r.encode.median, point: r.decode.point.median, box: r.decode.box.median, points5: r.decode.points5.median };
          console.log(JSON.stringify(row));
          rows.push(row);
        }
      } finally {
        await server.close();
      }
    }
  }
} finally {
  await browser.close();
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
console.log(`\nmedians over ${rounds} rounds (ms), A = ${pkgA}, B = ${pkgB}`);
for (const name of systems) {
  for (const key of keys) {
    const of = (label) => median(rows.filter((r) => r.name === name && r.label === label).map((r) => r[key]));
    const [a, b] = [of('A'), of('B')];
    console.log(`${name.padEnd(14)} ${key.padEnd(8)} A ${a.toFixed(1).padStart(8)}  B ${b.toFixed(1).padStart(8)}  B/A ${(b / a).toFixed(3)}`);
  }
}
