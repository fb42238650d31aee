// The page's annotation model (www/annotate.js) under Node: COCO RLE against pycocotools'
// encoding of the fixture masks (tests/fixtures/coco_rle.json, tools/golden/make_coco_rle.py),
// polygons that rasterize back to their mask, undo/redo, and the overlap rule of "segment
// everything".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { FIXTURES, npy, rasterize } from '../support/fixtures.mjs';
import {
  History, maskPolygons, maskStats, maskUnion, nonOverlapping, overlapFraction, rleCounts, rleDecode,
  rleFromString, rleToString,
} from '../../www/annotate.js';

/** Channel `c` of a logits fixture thresholded at 0, as SamPredictor does. */
function maskOf(name, c) {
  const { shape: [, h, w], data } = npy(name);
  return { data: Uint8Array.from(data.subarray(c * h * w, (c + 1) * h * w), (v) => (v > 0 ? 1 : 0)), width: w, height: h };
}

let seed = 7;
const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;

test('COCO RLE equals pycocotools on the fixture masks', () => {
  const golden = JSON.parse(readFileSync(new URL('coco_rle.json', FIXTURES), 'utf8'));
  assert.equal(golden.masks.length, 5);
  for (const g of golden.masks) {
    const mask = maskOf(g.logits, g.channel);
    assert.deepEqual(g.size, [mask.height, mask.width]);
    const counts = rleCounts(mask);
    assert.equal(rleToString(counts), g.counts, `${g.logits}[${g.channel}]`);
    assert.deepEqual(rleFromString(g.counts), counts);
    const { area, bbox } = maskStats(mask);
    assert.equal(area, g.area);
    assert.deepEqual(bbox, g.bbox);
    assert.deepEqual(rleDecode(counts, mask.width, mask.height).data, mask.data);
  }
});

test('RLE and polygons give back random masks exactly', () => {
  for (let t = 0; t < 400; t++) {
    const width = 1 + Math.floor(random() * 14);
    const height = 1 + Math.floor(random() * 14);
    const p = random();
    const mask = { data: new Uint8Array(width * height).map(() => (random() < p ? 1 : 0)), width, height };
    const counts = rleCounts(mask);
    assert.equal(counts.reduce((a, b) => a + b, 0), width * height);
    assert.deepEqual(rleFromString(rleToString(counts)), counts);
    assert.deepEqual(rleDecode(counts, width, height).data, mask.data);
    const polygons = maskPolygons(mask);
    assert.deepEqual(rasterize(polygons, width, height), mask.data, `polygons of ${JSON.stringify([...mask.data])} ${width}x${height}`);
    for (const poly of polygons) {
      const n = poly.length / 2;
      assert.ok(n >= 4 && n % 2 === 0, 'axis-aligned loops have an even number of corners');
      for (let i = 0; i < n; i++) {
        const a = (i + n - 1) % n;
        const b = (i + 1) % n;
        const cross = (poly[2 * i] - poly[2 * a]) * (poly[2 * b + 1] - poly[2 * i + 1])
          - (poly[2 * i + 1] - poly[2 * a + 1]) * (poly[2 * b] - poly[2 * i]);
        assert.notEqual(cross, 0, 'only turning corners are listed');
      }
    }
  }
});

test('polygons of a fixture mask rasterize back to it', () => {
  const mask = maskOf('case_predictor_box_logits.npy', 0);
  assert.deepEqual(rasterize(maskPolygons(mask), mask.width, mask.height), mask.data);
});

test('an empty mask has no runs of ones, no polygons, no bbox', () => {
  const mask = { data: new Uint8Array(12), width: 4, height: 3 };
  assert.deepEqual(rleCounts(mask), [12]);
  assert.deepEqual(maskPolygons(mask), []);
  assert.deepEqual(maskStats(mask), { area: 0, bbox: null });
});

test('history: undo, redo, and a new action drops the redo branch', () => {
  const h = new History('a');
  assert.equal(h.canUndo, false);
  h.push('b');
  h.push('c');
  assert.equal(h.undo(), 'b');
  assert.equal(h.undo(), 'a');
  assert.equal(h.undo(), 'a');
  assert.equal(h.redo(), 'b');
  h.push('d');
  assert.equal(h.canRedo, false);
  assert.equal(h.redo(), 'd');
  assert.equal(h.undo(), 'b');
  assert.equal(h.redo(), 'd');
});

test('overlap: union of masks, fraction of a mask on another, masks that may join the objects', () => {
  // 4x2 masks from rows of bits.
  const m = (...rows) => ({ data: Uint8Array.from(rows.join(''), Number), width: rows[0].length, height: rows.length });
  const a = m('1100', '1100');
  const b = m('0110', '0000');
  const c = m('0001', '0001');
  const empty = m('0000', '0000');
  assert.deepEqual(maskUnion([a, b], 4, 2), m('1110', '1100'));
  assert.deepEqual(maskUnion([], 4, 2), empty);
  assert.throws(() => maskUnion([m('11', '11')], 4, 2), /2x2 mask in a 4x2 union/);
  assert.equal(overlapFraction(b, a), 0.5);
  assert.equal(overlapFraction(a, b), 0.25);
  assert.equal(overlapFraction(c, a), 0);
  assert.equal(overlapFraction(a, a), 1);
  assert.equal(overlapFraction(empty, a), 0, 'an empty mask overlaps nothing');
  // Against the union of the objects, as a fraction of the new mask: b has half of its pixels
  // on a, c none; the threshold is inclusive.
  assert.deepEqual(nonOverlapping([b, c, a], [a], 0.1), [1]);
  assert.deepEqual(nonOverlapping([b, c, a], [a], 0.5), [0, 1]);
  assert.deepEqual(nonOverlapping([b, c, a], [a], 1), [0, 1, 2]);
  assert.deepEqual(nonOverlapping([b, c, a], [], 0), [0, 1, 2], 'no objects: every mask');
  assert.deepEqual(nonOverlapping([a, m('0010', '0010')], [b, c], 0.3), [0], 'the union of the objects');
  assert.deepEqual(nonOverlapping([], [a], 0.1), []);
  // The new masks are not compared with each other.
  assert.deepEqual(nonOverlapping([a, a], [c], 0), [0, 1]);
});
