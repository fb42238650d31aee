// The annotation model of the page, free of the DOM: undo/redo history, COCO RLE (as
// pycocotools writes it) and polygons from binary masks, mask statistics, overlap of masks
// (which masks of "segment everything" to add to the objects kept). Masks are
// `{ data: Uint8Array(width*height) of 0/1, width, height }`, row by row.

/** Undo/redo over immutable states: every action pushes the state it leads to. */
export class History {
  #states;
  #at = 0;

  constructor(initial, limit = 200) {
    this.#states = [initial];
    this.limit = limit;
  }

  get current() {
    return this.#states[this.#at];
  }

  get canUndo() {
    return this.#at > 0;
  }

  get canRedo() {
    return this.#at < this.#states.length - 1;
  }

  /** Makes `state` current; what was undone before it can no longer be redone. */
  push(state) {
    this.#states.splice(this.#at + 1, Infinity, state);
    if (this.#states.length > this.limit) this.#states.shift();
    this.#at = this.#states.length - 1;
    return state;
  }

  undo() {
    if (this.canUndo) this.#at--;
    return this.current;
  }

  redo() {
    if (this.canRedo) this.#at++;
    return this.current;
  }
}

/**
 * COCO run-length encoding of a mask, as pycocotools' `encode(np.asfortranarray(mask))` gives
 * it: runs over the mask in column-major order, starting with a run of zeros (possibly empty).
 */
export function rleCounts({ data, width, height }) {
  const counts = [];
  let value = 0;
  let run = 0;
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      const v = data[y * width + x] ? 1 : 0;
      if (v !== value) {
        counts.push(run);
        run = 0;
        value = v;
      }
      run++;
    }
  }
  counts.push(run);
  return counts;
}

/**
 * pycocotools' compressed RLE string (`rleToString` in maskApi.c): each count, from the fourth
 * on as the difference to the count two before, in 5-bit groups with a continuation bit, as
 * characters 48..111.
 */
export function rleToString(counts) {
  let s = '';
  counts.forEach((count, i) => {
    let x = i > 2 ? count - counts[i - 2] : count;
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  });
  return s;
}

/** The counts of a compressed RLE string (`rleFrString` in maskApi.c). */
export function rleFromString(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++;
      k++;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** The mask of RLE counts (column-major runs from a zero run). */
export function rleDecode(counts, width, height) {
  const data = new Uint8Array(width * height);
  let i = 0;
  counts.forEach((run, j) => {
    if (j % 2 === 1) {
      for (let k = i; k < i + run; k++) {
        const x = Math.floor(k / height);
        const y = k - x * height;
        data[y * width + x] = 1;
      }
    }
    i += run;
  });
  if (i !== width * height) throw new Error(`RLE covers ${i} pixels, the mask has ${width * height}`);
  return { data, width, height };
}

/** Pixel count and tight bounding box `[x, y, width, height]` (COCO's bbox), or null if empty. */
export function maskStats({ data, width, height }) {
  let area = 0;
  let x0 = width;
  let y0 = height;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (data[y * width + x]) {
        area++;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return { area, bbox: area ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : null };
}

/** The union of masks of one size: 1 wherever any of them is 1 (all 0 for no masks). */
export function maskUnion(masks, width, height) {
  const data = new Uint8Array(width * height);
  for (const m of masks) {
    if (m.width !== width || m.height !== height) throw new Error(`a ${m.width}x${m.height} mask in a ${width}x${height} union`);
    const d = m.data;
    for (let i = 0; i < d.length; i++) if (d[i]) data[i] = 1;
  }
  return { data, width, height };
}

/** The fraction of `mask`'s pixels that are also in `other` (of the same size); 0 if it is empty. */
export function overlapFraction(mask, other) {
  if (mask.width !== other.width || mask.height !== other.height) {
    throw new Error(`overlap of a ${mask.width}x${mask.height} mask with a ${other.width}x${other.height} one`);
  }
  const a = mask.data;
  const b = other.data;
  let area = 0;
  let both = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i]) {
      area++;
      if (b[i]) both++;
    }
  }
  return area ? both / area : 0;
}

/**
 * The indices of the `masks` that may join the `existing` ones (the objects kept): those whose
 * overlap with the union of `existing` is at most `maxOverlap` of their own area. All of them
 * when there is nothing existing; the new masks are not compared with each other.
 */
export function nonOverlapping(masks, existing, maxOverlap) {
  const all = masks.map((_, i) => i);
  if (!masks.length || !existing.length) return all;
  const { width, height } = masks[0];
  const union = maskUnion(existing, width, height);
  return all.filter((i) => overlapFraction(masks[i], union) <= maxOverlap);
}

// Directions of boundary edges between pixel corners: right, down, left, up (y down).
const DX = [1, 0, -1, 0];
const DY = [0, 1, 0, -1];

/**
 * The mask's outlines as polygons through pixel corners, `[[x0, y0, x1, y1, ...], ...]`, one
 * per boundary loop: outer boundaries clockwise on screen (y down), holes counter-clockwise.
 * Filled with the even-odd rule and sampled at pixel centres they give back the mask exactly.
 * Pixels touching only at a corner belong to separate loops. Only the corners where the
 * outline turns are listed.
 */
export function maskPolygons({ data, width, height }) {
  const W = width + 1;
  const inside = (x, y) => x >= 0 && y >= 0 && x < width && y < height && data[y * width + x] === 1;
  // Boundary edges keep the inside on their right: clockwise around each pixel on screen. A
  // corner has one outgoing edge, or two where pixels touch diagonally.
  const outs = new Uint8Array(W * (height + 1));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (!inside(x, y)) continue;
      if (!inside(x, y - 1)) outs[y * W + x] |= 1 << 0;
      if (!inside(x + 1, y)) outs[y * W + x + 1] |= 1 << 1;
      if (!inside(x, y + 1)) outs[(y + 1) * W + x + 1] |= 1 << 2;
      if (!inside(x - 1, y)) outs[(y + 1) * W + x] |= 1 << 3;
    }
  }
  const all = outs.slice();
  // The edge after arriving at corner v going `dir`: the only one, or at a diagonal touch the
  // right turn, which keeps each 4-connected region's pixels on one loop.
  const next = (v, dir) => {
    const m = all[v];
    if (m & (m - 1)) return (dir + 1) % 4;
    return 31 - Math.clz32(m);
  };
  const polygons = [];
  for (let start = 0; start < outs.length; start++) {
    while (outs[start] !== 0) {
      const first = 31 - Math.clz32(outs[start]);
      const loop = [];
      let v = start;
      let dir = first;
      let prev = -1;
      do {
        outs[v] &= ~(1 << dir);
        if (dir !== prev) loop.push(v % W, Math.floor(v / W));
        prev = dir;
        v += DY[dir] * W + DX[dir];
        dir = next(v, dir);
      } while (!(v === start && dir === first));
      // The start corner is no turn when the loop arrives going the way it left.
      if (prev === first) loop.splice(0, 2);
      polygons.push(loop);
    }
  }
  return polygons;
}
