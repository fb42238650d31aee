// Shared by the Node-side tests: the fixture .npy files (float32 and float16, C order, little
// endian) and an even-odd polygon fill, written independently of the page's code they check.
import { readFileSync } from 'node:fs';
import { f16 } from './half.mjs';

export const FIXTURES = new URL('../fixtures/', import.meta.url);

/** A fixture .npy: `{ shape, data: Float32Array }` (float16 files are widened). */
export function npy(name) {
  const buf = readFileSync(new URL(name, FIXTURES));
  const headerLen = buf.readUInt16LE(8);
  const header = buf.subarray(10, 10 + headerLen).toString('latin1');
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(',').filter((d) => d.trim()).map(Number);
  const bytes = buf.buffer.slice(buf.byteOffset + 10 + headerLen, buf.byteOffset + buf.length);
  if (header.includes("'<f4'")) return { shape, data: new Float32Array(bytes) };
  if (header.includes("'<f2'")) return { shape, data: Float32Array.from(new Uint16Array(bytes), f16) };
  throw new Error(`${name}: not float32 or float16 (${header})`);
}

/** Even-odd fill of polygons `[[x0, y0, x1, y1, ...], ...]` sampled at pixel centres. */
export function rasterize(polygons, width, height) {
  const out = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) {
    const py = y + 0.5;
    const xs = [];
    for (const p of polygons) {
      for (let i = 0, n = p.length / 2, j = n - 1; i < n; j = i++) {
        const [xi, yi, xj, yj] = [p[2 * i], p[2 * i + 1], p[2 * j], p[2 * j + 1]];
        if ((yi > py) !== (yj > py)) xs.push(xi + ((py - yi) * (xj - xi)) / (yj - yi));
      }
    }
    xs.sort((a, b) => a - b);
    for (let k = 0; k + 1 < xs.length; k += 2) {
      for (let x = Math.ceil(xs[k] - 0.5); x + 0.5 < xs[k + 1]; x++) out[y * width + x] = 1;
    }
  }
  return out;
}
