// The websam demo and annotation page: a SamWorker (the model off the page's thread), an image
// on a canvas, prompts from pointer events, masks drawn on overlay canvases, objects with undo,
// "segment everything", fine-tuning on the objects kept ("Adapt"), and exports. The state is
// immutable and every action pushes the next one onto the history.
import { SamWorker, decodeMask } from './pkg/worker.js';
import {
  History, maskPolygons, maskStats, maskUnion, nonOverlapping, overlapFraction, rleCounts, rleToString,
} from './annotate.js';

const $ = (sel) => document.querySelector(sel);
const WEIGHT_FILE = /\.(pth|pt|safetensors|bin)$/i;
const PALETTE = [
  [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
  [227, 119, 194], [188, 189, 34], [23, 190, 207], [255, 187, 120], [152, 223, 138],
];
const CURRENT = [30, 144, 255];

// The checkpoints the model picker offers. The default is the trained MobileSAM that
// `./build.sh setup` fetches into models/ and `./build.sh serve` serves at /models/ (the path is
// relative to the page: www/ copied with pkg/ and models/ beside it works under any prefix).
// The official file is fetched from raw.githubusercontent.com, which answers with
// Access-Control-Allow-Origin: *; github.com's /raw/ address of the same file redirects there
// without that header, and the browser refuses the redirect, so a page cannot use it.
// SAM ViT-B/L/H come from the Hugging Face hub (transformers' SamModel, which websam reads as
// the official checkpoint): its /resolve/ addresses answer cross-origin requests, as browser
// libraries that load models from the hub rely on; the sizes are the official checkpoints'
// (about 375 MB, 1.25 GB, 2.56 GB). The weights stream into the model one tensor at a time, so
// even ViT-H fits the CPU path's 4 GB of wasm memory (3.1 GB at its peak, docs/PERFORMANCE.md).
// SAM 2.1's official checkpoints come from Meta's repositories on the same hub (the files
// `SAM2ImagePredictor.from_pretrained` reads, `{"model": state_dict}` with the video modules,
// which the image path leaves unread); their sizes are the official files' (about 156 MB,
// 185 MB, 324 MB, 898 MB).
const MODELS = {
  local: { name: 'MobileSAM (this server)', url: 'models/mobile_sam.pt', bytes: 40728226 },
  github: {
    name: 'MobileSAM (official, GitHub)',
    url: 'https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/master/weights/mobile_sam.pt',
    bytes: 40728226,
  },
  vitB: {
    name: 'SAM ViT-B (Meta, Hugging Face)',
    url: 'https://huggingface.co/facebook/sam-vit-base/resolve/main/model.safetensors',
    bytes: 375e6,
    approximate: true,
  },
  vitL: {
    name: 'SAM ViT-L (Meta, Hugging Face)',
    url: 'https://huggingface.co/facebook/sam-vit-large/resolve/main/model.safetensors',
    bytes: 1.25e9,
    approximate: true,
  },
  vitH: {
    name: 'SAM ViT-H (Meta, Hugging Face)',
    url: 'https://huggingface.co/facebook/sam-vit-huge/resolve/main/model.safetensors',
    bytes: 2.56e9,
    approximate: true,
  },
  sam21T: {
    name: 'SAM 2.1 Hiera-T (Meta, Hugging Face)',
    url: 'https://huggingface.co/facebook/sam2.1-hiera-tiny/resolve/main/sam2.1_hiera_tiny.pt',
    bytes: 156e6,
    approximate: true,
  },
  sam21S: {
    name: 'SAM 2.1 Hiera-S (Meta, Hugging Face)',
    url: 'https://huggingface.co/facebook/sam2.1-hiera-small/resolve/main/sam2.1_hiera_small.pt',
    bytes: 185e6,
    approximate: true,
  },
  sam21BPlus: {
    name: 'SAM 2.1 Hiera-B+ (Meta, Hugging Face)',
    url: 'https://huggingface.co/facebook/sam2.1-hiera-base-plus/resolve/main/sam2.1_hiera_base_plus.pt',
    bytes: 324e6,
    approximate: true,
  },
  sam21L: {
    name: 'SAM 2.1 Hiera-L (Meta, Hugging Face)',
    url: 'https://huggingface.co/facebook/sam2.1-hiera-large/resolve/main/sam2.1_hiera_large.pt',
    bytes: 898e6,
    approximate: true,
  },
};
const DEFAULT_MODEL = 'local';

const EMPTY = Object.freeze({
  prompt: { points: [], box: null },
  result: null, // { masks, best } of the prompt
  selected: 0, // the candidate shown
  objects: [], // [{ id, name, color, visible, mask, score, stabilityScore }]
  active: null, // id of the selected object
});

let sam = null; // the SamWorker
let modelLabel = '';
let modelUrl = null; // the address of the model in use (null: a file)
let image = null; // { name, width, height }
let imageState = 'none'; // none | encoding | ready
let history = new History(EMPTY);
let nextObjectId = 1;
let pending = 0; // actions queued or running
let chain = Promise.resolve();
let everything = null; // the "segment everything" run under way: { controller, reason, done, total }
let nextAutoName = 1; // the number in the name of the next object "segment everything" adds
let adapting = null; // the training run under way: { controller, reason, step }
// The objects kept on the images opened before this one with this model, with their embedding:
// [{ name, width, height, embedding, masks }] ("Adapt" trains on them and on this image's).
let earlier = [];
let lastAdapt = null; // the last run that ended: { losses, objects, images, ms }

/** The model is busy with a run (segment everything, adapt): no prompts until it ends. */
const busy = () => !!(everything || adapting);

// ---------------------------------------------------------------- status and messages

function setPending(delta) {
  pending += delta;
  document.body.dataset.pending = String(pending);
}

function message(text, isError = false) {
  const m = $('#message');
  m.textContent = text;
  m.classList.toggle('error', isError);
}

function fmtMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`;
}

function fmtBytes(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(0)} kB`;
}

// ---------------------------------------------------------------- actions and history

/** Runs actions one after another; `fn(state)` returns the next state, or undefined. */
function act(fn) {
  setPending(1);
  const run = chain.then(async () => {
    try {
      const next = await fn(history.current);
      if (next && next !== history.current) history.push(next);
      render();
    } catch (e) {
      message(e.message ?? String(e), true);
    } finally {
      setPending(-1);
      if (hover) scheduleHover();
    }
  });
  chain = run;
  return run;
}

const canDecode = () => sam && imageState === 'ready';

/** The SamWorker prompt for `prompt`; refining an object feeds its last logits back. */
function request(prompt, refine) {
  const points = prompt.points.map((p) => [p.x, p.y, p.label]);
  const single = points.length === 1 && !prompt.box;
  const req = { multimask: single };
  if (points.length) req.points = points;
  if (prompt.box) req.box = prompt.box;
  if (refine?.result && !single) req.maskInput = refine.result.masks[refine.selected].lowResLogits;
  return req;
}

async function decode(req) {
  const t = performance.now();
  const r = await sam.predict(req);
  $('#decoder-status').textContent = `decoder ${fmtMs(performance.now() - t)}`;
  return r;
}

function withResult(state, prompt, r) {
  return { ...state, prompt, result: r, selected: r ? r.best : 0, active: null };
}

async function predictFor(state, prompt, refine) {
  if (!prompt.points.length && !prompt.box) return withResult(state, prompt, null);
  if (!canDecode()) throw new Error('Load a model and an image first.');
  return withResult(state, prompt, await decode(request(prompt, refine)));
}

function addPoint(x, y, label) {
  act(async (s) => {
    const prompt = { ...s.prompt, points: [...s.prompt.points, { x, y, label }] };
    const cached = previewCache && previewCache.state === s && previewCache.x === x && previewCache.y === y
      && previewCache.label === label ? previewCache.result : null;
    if (cached) return withResult(s, prompt, cached);
    return predictFor(s, prompt, s);
  });
}

function removePoint(i) {
  act((s) => predictFor(s, { ...s.prompt, points: s.prompt.points.filter((_, j) => j !== i) }, null));
}

function setBox(box) {
  act((s) => predictFor(s, { ...s.prompt, box }, null));
}

function selectCandidate(i) {
  act((s) => (s.result && i < s.result.masks.length && i !== s.selected ? { ...s, selected: i } : undefined));
}

function commit() {
  act((s) => {
    if (!s.result) return undefined;
    const m = s.result.masks[s.selected];
    const id = nextObjectId++;
    const object = {
      id,
      name: `object ${id}`,
      color: PALETTE[(id - 1) % PALETTE.length],
      visible: true,
      mask: { data: m.data, width: m.width, height: m.height },
      score: m.score,
      stabilityScore: m.stabilityScore,
    };
    return { ...EMPTY, objects: [...s.objects, object], active: id };
  });
}

function discardPrompt() {
  act((s) => (s.result || s.prompt.points.length || s.prompt.box
    ? { ...s, prompt: EMPTY.prompt, result: null, selected: 0 } : undefined));
}

const updateObject = (id, change) => act((s) => ({
  ...s, objects: s.objects.map((o) => (o.id === id ? { ...o, ...change } : o)),
}));

function deleteObject(id) {
  act((s) => ({ ...s, objects: s.objects.filter((o) => o.id !== id), active: s.active === id ? null : s.active }));
}

function selectObject(id) {
  act((s) => (s.active === id ? undefined : { ...s, active: id }));
}

function clearAll() {
  act((s) => (s === EMPTY ? undefined : EMPTY));
}

function undo() {
  act(() => {
    history.undo();
  });
}

function redo() {
  act(() => {
    history.redo();
  });
}

// ---------------------------------------------------------------- hover preview

let hover = null; // { x, y } in image pixels
let hoverBusy = false;
let hoverFrame = 0;
let previewCache = null; // { state, x, y, label, result }

function scheduleHover() {
  if (!hoverFrame) hoverFrame = requestAnimationFrame(runHover);
}

/** At most one preview decode in flight and one per frame; a stale hover is never decoded. */
async function runHover() {
  hoverFrame = 0;
  if (!hover || hoverBusy || pending > 0 || !canDecode() || !$('#hover-preview').checked) return;
  const state = history.current;
  const { x, y } = hover;
  const label = defaultLabel();
  if (previewCache?.state === state && previewCache.x === x && previewCache.y === y && previewCache.label === label) return;
  hoverBusy = true;
  try {
    const prompt = { ...state.prompt, points: [...state.prompt.points, { x, y, label }] };
    const r = await decode(request(prompt, state));
    previewCache = { state, x, y, label, result: r };
    if (hover && hover.x === x && hover.y === y && history.current === state) {
      drawMask($('#preview-layer'), r.masks[r.best], CURRENT, 70, 150);
    }
  } catch (e) {
    message(e.message ?? String(e), true);
  } finally {
    hoverBusy = false;
    if (hover && (hover.x !== x || hover.y !== y)) scheduleHover();
  }
}

function clearPreview() {
  const c = $('#preview-layer');
  c.getContext('2d').clearRect(0, 0, c.width, c.height);
}

// ---------------------------------------------------------------- segment everything

const MAX_OVERLAP = 0.1; // the default of the overlap control

/** The largest share of a new mask's area that may lie on the objects kept (the control, in [0, 1]). */
function maxOverlap() {
  const v = $('#max-overlap').valueAsNumber;
  return Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : MAX_OVERLAP;
}

/**
 * Prompts per batch, one progress step (and one GPU submit) each: at most 64 (the reference's
 * default) and small enough that a small grid still shows progress. The records do not depend
 * on it.
 */
const pointsPerBatch = (pointsPerSide) => Math.max(16, Math.min(64, Math.ceil((pointsPerSide * pointsPerSide) / 16)));

/**
 * Segments the whole image (the package's `generate`, a grid of point prompts), showing each
 * batch's masks as they come, then adds the masks as objects in one step: with objects kept,
 * only those that overlap their union by at most the control's share of their own area.
 * Prompting on the image is off until it ends (the model is busy); Cancel, Escape, a new image,
 * embedding or model stop it with nothing added.
 */
async function segmentEverything() {
  if (busy() || !canDecode()) return;
  // `done` of `total` steps: the model's, also those it makes after a Cancel before it sees it.
  const run = { controller: new AbortController(), reason: null, done: 0, total: 0 };
  everything = run;
  const current = () => everything === run;
  const pointsPerSide = Number($('#points-per-side').value);
  const limit = maxOverlap();
  const { signal } = run.controller;
  const status = $('#everything-status');
  const bar = $('#everything-progress');
  const layer = $('#everything-layer');
  const ctx = layer.getContext('2d');
  const shown = ctx.createImageData(layer.width, layer.height);
  ctx.clearRect(0, 0, layer.width, layer.height);
  // The objects kept as it starts: the preview shows only the masks that could join them (the
  // objects kept when it ends decide which do).
  const kept = history.current.objects.map((o) => o.mask);
  const union = kept.length ? maskUnion(kept, image.width, image.height) : null;
  let previewed = 0;
  Object.assign(bar, { hidden: false, max: 1, value: 0 });
  status.classList.remove('error');
  status.textContent = `Segmenting everything: ${pointsPerSide}×${pointsPerSide} points…`;
  document.body.dataset.everything = 'running';
  hover = null;
  clearPreview();
  setPending(1);
  render();
  const t = performance.now();
  try {
    const records = await sam.generate({ pointsPerSide, pointsPerBatch: pointsPerBatch(pointsPerSide) }, {
      signal,
      onProgress: ({ done, total, masks, preview }) => {
        Object.assign(run, { done, total });
        if (!current() || signal.aborted) return;
        bar.max = total;
        bar.value = done;
        const fresh = [];
        for (const r of preview) {
          const mask = decodeMask(r.segmentation);
          if (union && overlapFraction(mask, union) > limit) continue;
          fresh.push({ mask, color: PALETTE[previewed++ % PALETTE.length], fill: 70, edge: 180 });
        }
        if (fresh.length) {
          paintInto(shown, fresh);
          ctx.putImageData(shown, 0, 0);
        }
        status.textContent = `Segmenting everything: step ${done} of ${total}, ${masks} mask${masks === 1 ? '' : 's'} so far…`;
      },
    });
    let added = -1; // the objects added; -1: none, the run was stopped or adding failed
    await act((s) => {
      if (!current() || signal.aborted) return undefined;
      const masks = records.map((r) => decodeMask(r.segmentation));
      const objects = nonOverlapping(masks, s.objects.map((o) => o.mask), limit).map((i) => {
        const id = nextObjectId++;
        return {
          id,
          name: `auto ${nextAutoName++}`,
          color: PALETTE[(id - 1) % PALETTE.length],
          visible: true,
          mask: masks[i],
          score: records[i].predicted_iou,
          stabilityScore: records[i].stability_score,
        };
      });
      added = objects.length;
      return objects.length ? { ...s, objects: [...s.objects, ...objects] } : undefined;
    });
    if (added < 0) {
      if (!current() || signal.aborted) throw new DOMException('generate was aborted', 'AbortError');
      throw new Error('the masks could not be added as objects');
    }
    const skipped = records.length - added;
    const over = skipped ? `; ${skipped} skipped, over ${limit} of their area on the objects kept` : '';
    status.textContent = records.length
      ? `Everything: ${added} object${added === 1 ? '' : 's'} added in ${fmtMs(performance.now() - t)}${over}.`
      : `Everything found no masks (${fmtMs(performance.now() - t)}).`;
    document.body.dataset.everything = 'done';
  } catch (e) {
    if (!current()) return;
    runStopped(e, 'everything', status, 'Everything', run.reason, run.total ? [run.done, run.total] : null, 'no objects added');
  } finally {
    if (current()) {
      everything = null;
      bar.hidden = true;
      ctx.clearRect(0, 0, layer.width, layer.height);
    }
    setPending(-1);
    render();
  }
}

/**
 * The status of a run (Everything, Adapt; `key` its body data attribute) that ended with `e`:
 * cancelled (why, after how many steps: `progress` [done, total] or null, and `outcome`) or
 * failed.
 */
function runStopped(e, key, status, label, reason, progress, outcome) {
  if (e?.name === 'AbortError') {
    const after = progress ? ` after ${progress[0]} of ${progress[1]} steps` : '';
    status.textContent = `${label} cancelled${reason ? ` (${reason})` : ''}${after}: ${outcome}.`;
    document.body.dataset[key] = 'cancelled';
  } else {
    status.textContent = `${label} failed: ${e.message ?? e}`;
    status.classList.add('error');
    document.body.dataset[key] = 'failed';
  }
}

/** Stops the run under way, if any (`reason`: why, when it is not the Cancel button). */
function cancelEverything(reason = null) {
  if (!everything || everything.controller.signal.aborted) return;
  everything.reason = reason;
  everything.controller.abort();
  $('#everything-status').textContent = 'Cancelling…';
  $('#everything-cancel').disabled = true;
}

// ---------------------------------------------------------------- adapt (fine-tuning)

/** Objects per training step: the package's default, or fewer when fewer are kept. */
const ADAPT_BATCH = 4;
/** The objects the loss is measured on before and after a run: at most this many, spread out. */
const ADAPT_MEASURED = 8;

/** The number of training steps the control asks for (a whole number, at least 1). */
function adaptSteps() {
  const v = Math.round($('#adapt-steps').valueAsNumber);
  return Number.isFinite(v) ? Math.min(10000, Math.max(1, v)) : 20;
}

/**
 * Keeps the objects of the image being left, with its embedding, so that "Adapt" trains on
 * every image of the session (the model's encoder is frozen: the embedding stays valid).
 */
async function keepForTraining() {
  const objects = history.current.objects;
  if (!sam || !image || imageState !== 'ready' || !objects.length) return;
  setPending(1);
  try {
    const embedding = await sam.getEmbedding();
    earlier.push({ name: image.name, width: image.width, height: image.height, embedding, masks: objects.map((o) => o.mask) });
  } catch (e) {
    message(`The objects of ${image.name} cannot be used to adapt: ${e.message ?? e}`, true);
  } finally {
    setPending(-1);
  }
}

/**
 * Fine-tunes the model on the objects kept (this image's and the earlier images'), in the
 * model's worker: progress and loss per step, Cancel (or Escape, a new image, embedding or
 * model) stops it between steps and leaves the model as it was. Prompting is off until it ends.
 */
async function adapt() {
  if (busy() || !canDecode()) return;
  const current = history.current.objects;
  const objects = [
    ...earlier.flatMap((e) => e.masks.map((m) => ({ mask: m.data, width: m.width, height: m.height, embedding: e.embedding }))),
    ...current.map((o) => ({ mask: o.mask.data, width: o.mask.width, height: o.mask.height })),
  ];
  if (!objects.length) return;
  const images = earlier.length + (current.length ? 1 : 0);
  const steps = adaptSteps();
  const batch = Math.min(ADAPT_BATCH, objects.length);
  const run = { controller: new AbortController(), reason: null, step: 0 };
  adapting = run;
  const status = $('#adapt-status');
  const bar = $('#adapt-progress');
  Object.assign(bar, { hidden: false, max: steps, value: 0 });
  status.classList.remove('error');
  const what = `${objects.length} object${objects.length === 1 ? '' : 's'} of ${images} image${images === 1 ? '' : 's'}`;
  status.textContent = `Adapting to ${what}: ${steps} step${steps === 1 ? '' : 's'} of ${batch}…`;
  document.body.dataset.adapt = 'running';
  hover = null;
  clearPreview();
  setPending(1);
  render();
  const t = performance.now();
  const losses = [];
  // The loss of first prompts on (some of) the objects, the same prompts before and after: what
  // the run did.
  const stride = Math.max(1, objects.length / ADAPT_MEASURED);
  const measured = Array.from({ length: Math.min(ADAPT_MEASURED, objects.length) }, (_, i) => objects[Math.floor(i * stride)]);
  try {
    status.textContent = `Adapting to ${what}: the loss before…`;
    const before = await sam.trainingLoss(measured);
    if (run.controller.signal.aborted) throw new DOMException('adapting was cancelled', 'AbortError');
    const trainStart = performance.now();
    await sam.train(objects, { steps, batch }, {
      signal: run.controller.signal,
      onProgress: ({ step, loss }) => {
        run.step = step;
        losses.push(loss);
        if (adapting !== run || run.controller.signal.aborted) return;
        bar.value = step;
        const elapsed = performance.now() - trainStart;
        const left = step < steps ? `, about ${fmtMs((elapsed / step) * (steps - step))} left` : '';
        status.textContent = `Adapting to ${what}: step ${step} of ${steps}, the step's loss ${lossText(losses)}${left}…`;
      },
    });
    status.textContent = `Adapting to ${what}: the loss after…`;
    const after = await sam.trainingLoss(measured);
    const ms = performance.now() - t;
    lastAdapt = { losses, before, after, measured: measured.length, objects: objects.length, images, ms };
    const on = measured.length < objects.length ? `on ${measured.length} of them` : 'on them';
    status.textContent = `Adapted to ${what} in ${fmtMs(ms)} (${steps} step${steps === 1 ? '' : 's'}): the loss ${on} `
      + `${before.toPrecision(3)} → ${after.toPrecision(3)} (the same prompts). The next clicks use the adapted model.`;
    document.body.dataset.adapt = 'done';
  } catch (e) {
    runStopped(e, 'adapt', status, 'Adapting', run.reason, run.step ? [run.step, steps] : null, 'the model is as it was');
  } finally {
    adapting = null;
    previewCache = null;
    bar.hidden = true;
    setPending(-1);
    render();
  }
}

/** The loss of the first step and of the latest (each step's own clicks: they vary). */
function lossText(losses) {
  const f = (v) => v.toPrecision(3);
  return losses.length > 1 ? `${f(losses[0])} → ${f(losses.at(-1))}` : f(losses[0]);
}

/** Stops the training run under way, if any (`reason`: why, when it is not Cancel). */
function cancelAdapt(reason = null) {
  if (!adapting || adapting.controller.signal.aborted) return;
  adapting.reason = reason;
  adapting.controller.abort();
  $('#adapt-status').textContent = 'Cancelling at the end of the step under way…';
  $('#adapt-cancel').disabled = true;
}

/** Back to the checkpoint's weights (the image stays set). */
async function revertAdapt() {
  if (!sam?.tuned || busy()) return;
  setPending(1);
  try {
    await sam.revertTraining();
    previewCache = null;
    $('#adapt-status').textContent = `Back to the weights of ${modelLabel}.`;
    document.body.dataset.adapt = 'reverted';
  } catch (e) {
    message(`Could not revert: ${e.message ?? e}`, true);
  } finally {
    setPending(-1);
    render();
  }
}

/** The adapted model as a checkpoint (.safetensors, the official key names): any loader takes it. */
async function downloadAdapted() {
  if (!sam?.tuned || busy()) return;
  setPending(1);
  try {
    const bytes = await sam.checkpoint();
    const base = ((modelUrl ? new URL(modelUrl).pathname.split('/').pop() : modelLabel) || 'model').replace(/\.[^.]*$/, '');
    download(new Blob([bytes], { type: 'application/octet-stream' }), `${base}-adapted.safetensors`);
  } catch (e) {
    message(`Could not export the adapted weights: ${e.message ?? e}`, true);
  } finally {
    setPending(-1);
  }
}

// ---------------------------------------------------------------- drawing

/** Paints masks onto a canvas of the image's size: fill, and a full-alpha outline. */
function paintMasks(canvas, layers) {
  const ctx = canvas.getContext('2d');
  const out = ctx.createImageData(canvas.width, canvas.height);
  paintInto(out, layers);
  ctx.putImageData(out, 0, 0);
}

/** Paints masks into ImageData of the image's size, over what it holds. */
function paintInto(out, layers) {
  const { width: w, height: h } = out;
  const px = out.data;
  for (const { mask, color, fill, edge } of layers) {
    const d = mask.data;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (!d[i]) continue;
        const border = x === 0 || y === 0 || x === w - 1 || y === h - 1
          || !d[i - 1] || !d[i + 1] || !d[i - w] || !d[i + w];
        const o = i * 4;
        px[o] = color[0];
        px[o + 1] = color[1];
        px[o + 2] = color[2];
        px[o + 3] = border ? edge : fill;
      }
    }
  }
}

function drawMask(canvas, mask, color, fill, edge) {
  paintMasks(canvas, mask ? [{ mask, color, fill, edge }] : []);
}

let drawn = { objects: null, result: null, selected: -1 };

function render() {
  const s = history.current;
  if (drawn.objects !== s.objects || drawn.active !== s.active) {
    paintMasks($('#objects-layer'), s.objects.filter((o) => o.visible).map((o) => ({
      mask: o.mask, color: o.color, fill: o.id === s.active ? 140 : 100, edge: 255,
    })));
    drawn = { ...drawn, objects: s.objects, active: s.active };
  }
  if (drawn.result !== s.result || drawn.selected !== s.selected) {
    drawMask($('#current-layer'), s.result?.masks[s.selected], CURRENT, 120, 255);
    drawn = { ...drawn, result: s.result, selected: s.selected };
  }
  clearPreview();
  drawMarks(s);
  renderCandidates(s);
  renderObjects(s);
  $('#undo').disabled = !history.canUndo;
  $('#redo').disabled = !history.canRedo;
  $('#commit').disabled = !s.result;
  $('#clear-prompt').disabled = !s.result && !s.prompt.points.length && !s.prompt.box;
  $('#clear-all').disabled = s === EMPTY;
  $('#export-mask').disabled = !selectedMask(s);
  $('#export-cutout').disabled = !selectedMask(s);
  $('#export-coco').disabled = !s.objects.length;
  $('#export-polygons').disabled = !s.objects.length;
  $('#export-embedding').disabled = !canDecode() || busy();
  $('#everything').disabled = !canDecode() || busy();
  $('#everything-cancel').disabled = !everything || everything.controller.signal.aborted;
  $('#points-per-side').disabled = !!everything;
  $('#max-overlap').disabled = !!everything;
  const objects = s.objects.length + earlier.reduce((n, e) => n + e.masks.length, 0);
  // SAM 2's decoder is not trained here yet (websam refuses it by name): Adapt stays off.
  const sam2 = sam?.family === 'sam2';
  $('#adapt').disabled = !canDecode() || busy() || !objects || sam2;
  $('#adapt').title = sam2 ? 'Adapting is for SAM and MobileSAM; not yet for SAM 2'
    : objects ? `Trains on ${objects} object${objects === 1 ? '' : 's'}` : 'Keep an object first';
  $('#adapt-cancel').disabled = !adapting || adapting.controller.signal.aborted;
  $('#adapt-steps').disabled = !!adapting;
  $('#adapt-revert').disabled = !sam?.tuned || busy();
  $('#adapt-download').disabled = !sam?.tuned || busy();
  $('#adapted-status').textContent = sam?.tuned ? 'decoder: adapted' : '';
}

const SVG = 'http://www.w3.org/2000/svg';

/** Points and the box, in image pixels on an SVG the size of the image. */
function drawMarks(s, rubber = null) {
  const svg = $('#marks');
  svg.replaceChildren();
  if (!image) return;
  const scale = image.width / svg.getBoundingClientRect().width || 1;
  const box = rubber ?? s.prompt.box;
  if (box) {
    const r = document.createElementNS(SVG, 'rect');
    const [x0, y0, x1, y1] = box;
    Object.entries({ x: Math.min(x0, x1), y: Math.min(y0, y1), width: Math.abs(x1 - x0), height: Math.abs(y1 - y0), 'stroke-width': 2 * scale })
      .forEach(([k, v]) => r.setAttribute(k, v));
    svg.append(r);
  }
  for (const p of s.prompt.points) {
    const c = document.createElementNS(SVG, 'circle');
    c.setAttribute('cx', p.x + 0.5);
    c.setAttribute('cy', p.y + 0.5);
    c.setAttribute('r', 6 * scale);
    c.setAttribute('stroke-width', 1.5 * scale);
    c.setAttribute('class', p.label ? 'pos' : 'neg');
    svg.append(c);
  }
}

function thumbnail(mask) {
  const c = document.createElement('canvas');
  const f = Math.max(1, Math.ceil(Math.max(mask.width, mask.height) / 96));
  c.width = Math.ceil(mask.width / f);
  c.height = Math.ceil(mask.height / f);
  const ctx = c.getContext('2d');
  const img = ctx.createImageData(c.width, c.height);
  for (let y = 0; y < c.height; y++) {
    for (let x = 0; x < c.width; x++) {
      const v = mask.data[y * f * mask.width + x * f] ? 255 : 0;
      img.data.set([v, v, v, 255], (y * c.width + x) * 4);
    }
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

function renderCandidates(s) {
  const list = $('#candidates');
  if (list._result === s.result && list._selected === s.selected) return;
  list._result = s.result;
  list._selected = s.selected;
  list.replaceChildren();
  (s.result?.masks ?? []).forEach((m, i) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.index = String(i);
    b.setAttribute('aria-pressed', String(i === s.selected));
    b.title = `Candidate ${i + 1} (key ${i + 1})`;
    const info = document.createElement('small');
    info.innerHTML = `<b>${i + 1}</b> IoU <span class="iou">${m.score.toFixed(3)}</span><br>stability <span class="stability">${m.stabilityScore.toFixed(3)}</span>`;
    b.append(thumbnail(m), info);
    b.addEventListener('click', () => selectCandidate(i));
    const li = document.createElement('li');
    li.append(b);
    list.append(li);
  });
}

function renderObjects(s) {
  const list = $('#objects');
  if (list._objects !== s.objects) {
    list._objects = s.objects;
    list.replaceChildren(...s.objects.map(objectRow));
  }
  // Selection only restyles the rows (a name being edited keeps its element).
  for (const li of list.children) li.classList.toggle('selected', Number(li.dataset.id) === s.active);
}

function objectRow(o) {
  const li = document.createElement('li');
  li.dataset.id = String(o.id);
  const swatch = document.createElement('span');
  swatch.className = 'swatch';
  swatch.style.background = `rgb(${o.color.join(',')})`;
  const visible = Object.assign(document.createElement('input'), { type: 'checkbox', checked: o.visible, title: 'Show' });
  visible.className = 'visible';
  visible.addEventListener('change', () => updateObject(o.id, { visible: visible.checked }));
  const name = Object.assign(document.createElement('input'), { type: 'text', value: o.name, title: 'Rename' });
  name.className = 'name';
  name.addEventListener('change', () => updateObject(o.id, { name: name.value.trim() || o.name }));
  name.addEventListener('focus', () => selectObject(o.id));
  name.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') name.blur();
    if (e.key === 'Escape') {
      name.value = o.name;
      name.blur();
    }
  });
  const del = Object.assign(document.createElement('button'), { type: 'button', textContent: '✕', title: 'Delete' });
  del.className = 'delete';
  del.addEventListener('click', () => deleteObject(o.id));
  li.addEventListener('click', (e) => {
    if (e.target === li || e.target === swatch) selectObject(o.id);
  });
  li.append(swatch, visible, name, del);
  return li;
}

// ---------------------------------------------------------------- the stage: layout and pointer

function layout() {
  if (!image) return;
  const stage = $('#stage').getBoundingClientRect();
  const scale = Math.min((stage.width - 16) / image.width, (stage.height - 16) / image.height, 4);
  const layers = $('#layers');
  layers.style.width = `${Math.floor(image.width * scale)}px`;
  layers.style.height = `${Math.floor(image.height * scale)}px`;
  $('#image').style.width = '100%';
  $('#image').style.height = '100%';
  drawMarks(history.current);
}

/**
 * Where a pointer event is on the image: the pixel under it (`corner` false: its column and
 * row), or the nearest pixel corner (`corner` true, for box edges), kept inside the image.
 */
function toImage(e, corner = false) {
  const r = $('#layers').getBoundingClientRect();
  const fx = ((e.clientX - r.left) / r.width) * image.width;
  const fy = ((e.clientY - r.top) / r.height) * image.height;
  const snap = corner ? Math.round : Math.floor;
  const max = corner ? 0 : 1;
  return {
    x: Math.min(image.width - max, Math.max(0, snap(fx))),
    y: Math.min(image.height - max, Math.max(0, snap(fy))),
  };
}

function defaultLabel() {
  return Number(document.querySelector('input[name=label]:checked').value);
}

/** Index of the prompt point within 8 screen pixels of the event, or -1. */
function pointAt(e) {
  const r = $('#layers').getBoundingClientRect();
  const perPixel = r.width / image.width;
  let best = -1;
  let bestD = 8;
  history.current.prompt.points.forEach((p, i) => {
    const d = Math.hypot(r.left + (p.x + 0.5) * perPixel - e.clientX, r.top + (p.y + 0.5) * perPixel - e.clientY);
    if (d <= bestD) {
      best = i;
      bestD = d;
    }
  });
  return best;
}

let drag = null;

function setupPointer() {
  const layers = $('#layers');
  layers.addEventListener('contextmenu', (e) => e.preventDefault());
  layers.addEventListener('pointerdown', (e) => {
    // No prompts while "segment everything" or "Adapt" runs: the model is busy until it ends.
    if (!image || busy() || (e.button !== 0 && e.button !== 2)) return;
    layers.setPointerCapture(e.pointerId);
    // preventDefault below also prevents the focus change a click would make: move the focus to
    // the image, so that the keys (Enter, Escape, 1-3) reach the page after a toolbar control.
    $('#stage').focus({ preventScroll: true });
    drag = { id: e.pointerId, start: toImage(e, true), cx: e.clientX, cy: e.clientY, button: e.button, alt: e.altKey, boxing: false };
    e.preventDefault();
  });
  layers.addEventListener('pointermove', (e) => {
    if (!image) return;
    if (drag && e.pointerId === drag.id) {
      if (!drag.boxing && drag.button === 0 && Math.hypot(e.clientX - drag.cx, e.clientY - drag.cy) > 5) {
        drag.boxing = true;
        hover = null;
        clearPreview();
      }
      if (drag.boxing) {
        const end = toImage(e, true);
        drawMarks(history.current, [drag.start.x, drag.start.y, end.x, end.y]);
      }
      return;
    }
    if (e.pointerType !== 'mouse' || drag) return;
    const p = toImage(e);
    if (hover && hover.x === p.x && hover.y === p.y) return;
    hover = p;
    scheduleHover();
  });
  layers.addEventListener('pointerup', (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    const d = drag;
    drag = null;
    if (d.boxing) {
      const end = toImage(e, true);
      const box = [Math.min(d.start.x, end.x), Math.min(d.start.y, end.y), Math.max(d.start.x, end.x), Math.max(d.start.y, end.y)];
      if (box[2] > box[0] && box[3] > box[1]) setBox(box);
      else drawMarks(history.current);
      return;
    }
    const hit = pointAt(e);
    if (hit >= 0) {
      removePoint(hit);
      return;
    }
    const p = toImage(e);
    const label = d.button === 2 || d.alt ? 1 - defaultLabel() : defaultLabel();
    addPoint(p.x, p.y, label);
  });
  layers.addEventListener('pointercancel', () => {
    drag = null;
    drawMarks(history.current);
  });
  layers.addEventListener('pointerleave', () => {
    hover = null;
    clearPreview();
  });
  new ResizeObserver(layout).observe($('#stage'));
}

/** Whether keys pressed in `el` are its own: text fields and menus, not buttons or checkboxes. */
function typesText(el) {
  if (el.isContentEditable || el.closest?.('textarea, select')) return true;
  return el.tagName === 'INPUT' && !['checkbox', 'radio', 'button', 'submit', 'reset', 'file', 'range', 'color'].includes(el.type);
}

function setupKeys() {
  document.addEventListener('keydown', (e) => {
    if (typesText(e.target)) return;
    // Enter on a focused button is that button's click.
    if (e.key === 'Enter' && e.target.closest?.('button, a[href], input[type=button], input[type=submit], input[type=file]')) return;
    const ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && (e.key === 'z' || e.key === 'Z')) {
      e.preventDefault();
      if (e.shiftKey) redo();
      else undo();
    } else if (ctrl && (e.key === 'y' || e.key === 'Y')) {
      e.preventDefault();
      redo();
    } else if (e.key === 'Enter') {
      e.preventDefault();
      commit();
    } else if (e.key === 'Escape') {
      if (everything) cancelEverything();
      else if (adapting) cancelAdapt();
      else discardPrompt();
    } else if (['1', '2', '3'].includes(e.key) && !ctrl) {
      selectCandidate(Number(e.key) - 1);
    } else if ((e.key === 'Delete' || e.key === 'Backspace') && history.current.active) {
      e.preventDefault();
      deleteObject(history.current.active);
    }
  });
}

// ---------------------------------------------------------------- model

function showProgress({ stage, loaded, total }) {
  const bar = $('#load-progress');
  bar.hidden = false;
  if (total) {
    bar.max = total;
    bar.value = loaded;
  } else {
    bar.removeAttribute('value');
  }
  const what = { download: 'Downloading', cache: 'Reading from the cache', read: 'Reading', init: 'Building the model', ready: 'Ready' }[stage] ?? stage;
  $('#model-status').textContent = stage === 'init' || stage === 'ready'
    ? `${what}…` : `${what}: ${fmtBytes(loaded)}${total ? ` of ${fmtBytes(total)}` : ''}`;
}

/** Why a checkpoint could not be had, as a person reads it, and what to do about it. */
function loadError(e, weights, label) {
  const text = e.message ?? String(e);
  // The package says `fetching weights from URL failed: REASON` when the download itself failed;
  // REASON is the HTTP status, or the bare TypeError of fetch() ("Failed to fetch") when no
  // answer came: no network, a host that cannot be reached, or one that refuses cross-origin
  // requests (the browser does not say which).
  const failed = typeof weights === 'string' && /^fetching weights from (\S+) failed: (.*)$/s.exec(text);
  let url = null;
  try {
    if (failed) url = new URL(failed[1]);
  } catch {
    // not an address: said as it is below
  }
  if (!url) return `Could not load ${label}: ${text}`;
  const reason = failed[2];
  const sameServer = url.origin === location.origin;
  if (/^HTTP 404\b/.test(reason) && sameServer) {
    return `${label}: this server has no ${url.pathname} (\`./build.sh setup\` fetches it, \`./build.sh serve\` serves it). `
      + `Choose another model above (${MODELS.github.name}, ${fmtBytes(MODELS.github.bytes)}), a URL or a file.`;
  }
  if (/^HTTP /.test(reason)) return `Could not download ${label}: ${url.host} answered ${reason}.`;
  if (navigator.onLine === false) {
    return `Could not download ${label}: this browser is offline. Try again online, or load a checkpoint from a file.`;
  }
  if (!sameServer) {
    return `Could not download ${label}: ${url.host} cannot be reached (no network, or the server does not let `
      + 'other sites fetch the file). Choose another model, or load a checkpoint from a file.';
  }
  return `Could not download ${label}: this page's server cannot be reached.`;
}

let loadGeneration = 0; // the latest model asked for; an older load that ends later is dropped
let modelLoading = false; // the latest load is under way (an image opened meanwhile waits for it)

/** Loads a checkpoint; true once it is in use, false if it failed, undefined if superseded. */
async function loadModel(weights, label) {
  const generation = ++loadGeneration;
  const latest = () => generation === loadGeneration;
  const status = $('#model-status');
  status.classList.remove('error');
  const backend = $('#backend').value;
  const t = performance.now();
  modelLoading = true;
  setPending(1);
  try {
    const next = await SamWorker.load({ weights, backend, onProgress: (p) => latest() && showProgress(p) });
    if (!latest()) {
      next.dispose();
      return undefined;
    }
    cancelEverything('a new model');
    cancelAdapt('a new model');
    sam?.dispose();
    sam = next;
    // The embeddings kept for "Adapt" are the previous model's encoder's.
    earlier = [];
    lastAdapt = null;
    $('#adapt-status').textContent = '';
    modelLabel = label;
    modelUrl = typeof weights === 'string' ? new URL(weights, location.href).href : null;
    const on = sam.backend === 'webgpu' ? 'WebGPU' : 'CPU';
    status.textContent = `${label} loaded on ${on} in ${fmtMs(performance.now() - t)}.`
      + (sam.fallbackReason ? ` WebGPU not used: ${sam.fallbackReason}.` : '');
    const threads = sam.backend === 'cpu' && sam.threads > 1 ? `, ${sam.threads} threads` : '';
    $('#backend-status').textContent = `backend: ${on}${threads}${sam.fallbackReason ? ' (auto)' : ''}`;
    $('#backend-status').title = sam.fallbackReason ?? sam.adapterName ?? '';
    document.body.dataset.backend = sam.backend;
    if (image) await encode();
    return true;
  } catch (e) {
    if (!latest()) return undefined;
    status.textContent = loadError(e, weights, label) + (sam ? ` Still using ${modelLabel}.` : '');
    status.classList.add('error');
    if (image && !sam) $('#image-status').textContent = `${image.name}: ${image.width}×${image.height}. Load a model to segment it.`;
    return false;
  } finally {
    if (latest()) {
      $('#load-progress').hidden = true;
      modelLoading = false;
    }
    setPending(-1);
    render();
  }
}

/** The picker's preset (its key in MODELS) whose address is `url`, or 'custom'. */
function presetOf(url) {
  let href;
  try {
    href = new URL(url, location.href).href;
  } catch {
    return 'custom';
  }
  return Object.keys(MODELS).find((k) => new URL(MODELS[k].url, location.href).href === href) ?? 'custom';
}

/** Shows a checkpoint's address in the picker (as given when it is no URL: loading says so). */
function showModelUrl(url) {
  $('#model-preset').value = presetOf(url);
  try {
    $('#weights-url').value = new URL(url, location.href).href;
  } catch {
    $('#weights-url').value = url;
  }
}

/** Loads a checkpoint by address, showing it in the picker. */
async function loadUrl(url) {
  const preset = presetOf(url);
  showModelUrl(url);
  const loaded = await loadModel(url, preset === 'custom' ? url.split('/').pop() || url : MODELS[preset].name);
  // A preset that could not be had: the picker shows the model still in use (choosing the preset
  // again tries again). A typed address stays, to be corrected.
  if (loaded === false && preset !== 'custom' && modelUrl) showModelUrl(modelUrl);
}

// ---------------------------------------------------------------- image and embedding

/** Shows an image and encodes it; `sample` is the address of a sample photograph shown. */
async function openImage(blob, name, embedding = null, sample = null) {
  let bitmap;
  try {
    // The file's own pixels, as the Python reference reads them (no colour-profile conversion).
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch {
    message(`${name} is not an image this browser can decode.`, true);
    return;
  }
  cancelEverything('a new image');
  cancelAdapt('a new image');
  await chain;
  await keepForTraining();
  const canvas = $('#image');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext('2d').drawImage(bitmap, 0, 0);
  bitmap.close();
  for (const id of ['#objects-layer', '#everything-layer', '#current-layer', '#preview-layer']) {
    Object.assign($(id), { width: canvas.width, height: canvas.height });
  }
  image = { name, width: canvas.width, height: canvas.height };
  $('#marks').setAttribute('viewBox', `0 0 ${image.width} ${image.height}`);
  history = new History(EMPTY);
  drawn = { objects: null, result: null, selected: -1 };
  previewCache = null;
  imageState = 'none';
  $('#layers').classList.add('ready');
  $('#placeholder').hidden = true;
  layout();
  render();
  $('#image-status').textContent = `${name}: ${image.width}×${image.height}`;
  for (const b of $('#samples').children) b.setAttribute('aria-pressed', String(b.dataset.src === sample));
  if (embedding) await useEmbedding(embedding);
  else if (sam) await encode();
  else $('#image-status').textContent += modelLoading ? '. It is encoded once the model has loaded.' : '. Load a model to segment it.';
}

/** Opens an image by address (a sample photograph, `?image=`), as if it were a file. */
async function openImageUrl(url, embedding = null) {
  let blob;
  try {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    blob = await r.blob();
  } catch (e) {
    message(`Could not open ${url}: ${e.message}`, true);
    return;
  }
  await openImage(blob, url.split('/').pop(), embedding, url);
}

async function encode() {
  const status = $('#image-status');
  imageState = 'encoding';
  document.body.dataset.image = 'encoding';
  render();
  const t = performance.now();
  let blocks = ''; // "block 3 of 12, " once a multi-block encoder reports
  const tick = setInterval(() => {
    status.textContent = `Encoding ${image.name} on ${sam.backend === 'webgpu' ? 'WebGPU' : 'the CPU'}… ${blocks}${((performance.now() - t) / 1000).toFixed(1)} s`;
  }, 100);
  setPending(1);
  try {
    const canvas = $('#image');
    const onProgress = ({ done, steps }) => {
      if (steps > 1) blocks = `${done} of ${steps} blocks, `;
    };
    await sam.setImage(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height), { onProgress });
    const ms = performance.now() - t;
    $('#encoder-status').textContent = `encoder ${fmtMs(ms)}`;
    status.textContent = `${image.name}: ${image.width}×${image.height}, encoded in ${fmtMs(ms)}. Click to segment.`;
    imageState = 'ready';
  } catch (e) {
    status.textContent = `Could not encode ${image.name}: ${e.message}`;
    imageState = 'none';
  } finally {
    clearInterval(tick);
    document.body.dataset.image = imageState;
    setPending(-1);
    render();
  }
}

async function useEmbedding(bytes) {
  if (!sam) {
    message('Load a model before importing an embedding.', true);
    return;
  }
  cancelEverything('a new embedding');
  cancelAdapt('a new embedding');
  setPending(1);
  try {
    await sam.setEmbedding(bytes, { width: image.width, height: image.height });
    imageState = 'ready';
    $('#image-status').textContent = `${image.name}: ${image.width}×${image.height}, embedding imported. Click to segment.`;
  } catch (e) {
    message(`Could not use the embedding: ${e.message}`, true);
  } finally {
    document.body.dataset.image = imageState;
    setPending(-1);
    render();
  }
}

/** Routes files from the picker, a drop or a paste: weights, an image, a .npy or .npz embedding. */
async function openFiles(files) {
  const list = [...files];
  const weights = list.find((f) => WEIGHT_FILE.test(f.name));
  const npy = list.find((f) => /\.np[yz]$/i.test(f.name));
  const img = list.find((f) => f.type.startsWith('image/'));
  if (weights) await loadModel(weights, weights.name);
  if (img) await openImage(img, img.name || 'pasted image', npy ? await npy.arrayBuffer() : null);
  else if (npy && image) await useEmbedding(await npy.arrayBuffer());
  else if (npy) message('Open the image before its embedding.', true);
  if (!weights && !img && !npy && list.length) message(`${list[0].name || 'That'} is not an image, a checkpoint or a .npy / .npz embedding.`, true);
}

// ---------------------------------------------------------------- export

function selectedMask(s) {
  if (s.result) return s.result.masks[s.selected];
  return s.objects.find((o) => o.id === s.active)?.mask ?? null;
}

function baseName() {
  return (image?.name ?? 'image').replace(/\.[^.]*$/, '');
}

function download(blob, name) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function canvasPng(width, height, fill) {
  const c = document.createElement('canvas');
  c.width = width;
  c.height = height;
  const ctx = c.getContext('2d');
  const img = ctx.createImageData(width, height);
  fill(img.data);
  ctx.putImageData(img, 0, 0);
  return new Promise((ok) => c.toBlob(ok, 'image/png'));
}

async function exportMask() {
  const m = selectedMask(history.current);
  if (!m) return;
  const png = await canvasPng(m.width, m.height, (px) => {
    for (let i = 0; i < m.data.length; i++) {
      const v = m.data[i] ? 255 : 0;
      px[i * 4] = v;
      px[i * 4 + 1] = v;
      px[i * 4 + 2] = v;
      px[i * 4 + 3] = 255;
    }
  });
  download(png, `${baseName()}-mask.png`);
}

/** The image's pixels inside the mask's bounding box, transparent outside the mask. */
async function exportCutout() {
  const m = selectedMask(history.current);
  if (!m) return;
  const { bbox } = maskStats(m);
  if (!bbox) {
    message('The mask is empty.', true);
    return;
  }
  const [x0, y0, w, h] = bbox;
  const src = $('#image').getContext('2d').getImageData(x0, y0, w, h).data;
  const png = await canvasPng(w, h, (px) => {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const o = (y * w + x) * 4;
        const inside = m.data[(y0 + y) * m.width + x0 + x];
        px[o] = src[o];
        px[o + 1] = src[o + 1];
        px[o + 2] = src[o + 2];
        px[o + 3] = inside ? 255 : 0;
      }
    }
  });
  download(png, `${baseName()}-cutout.png`);
}

/** All objects, COCO-style: RLE as pycocotools writes it, or polygons. */
function exportCoco(kind) {
  const s = history.current;
  const annotations = s.objects.map((o, i) => {
    const { area, bbox } = maskStats(o.mask);
    const segmentation = kind === 'rle'
      ? { size: [o.mask.height, o.mask.width], counts: rleToString(rleCounts(o.mask)) }
      : maskPolygons(o.mask);
    return {
      id: i + 1,
      image_id: 1,
      category_id: 1,
      name: o.name,
      segmentation,
      area,
      bbox: bbox ?? [0, 0, 0, 0],
      iscrowd: 0,
      predicted_iou: o.score,
      stability_score: o.stabilityScore,
    };
  });
  const coco = {
    info: { description: `websam annotations (${modelLabel})`, date_created: new Date().toISOString() },
    images: [{ id: 1, file_name: image.name, width: image.width, height: image.height }],
    categories: [{ id: 1, name: 'object', supercategory: 'object' }],
    annotations,
  };
  download(new Blob([JSON.stringify(coco)], { type: 'application/json' }), `${baseName()}-${kind === 'rle' ? 'coco' : 'polygons'}.json`);
}

async function exportEmbedding() {
  setPending(1);
  try {
    // SAM's embedding is one array (.npy); SAM 2's three (.npz, as `websam embed` writes it).
    const format = sam.family === 'sam2' ? 'npz' : 'npy';
    const e = await sam.getEmbedding({ format });
    download(new Blob([e.data], { type: 'application/octet-stream' }), `${baseName()}.${format}`);
  } catch (err) {
    message(err.message, true);
  } finally {
    setPending(-1);
  }
}

// ---------------------------------------------------------------- start

function setupControls() {
  const presets = $('#model-preset');
  for (const [key, m] of Object.entries(MODELS)) presets.add(new Option(`${m.name} · ${m.approximate ? 'about ' : ''}${fmtBytes(m.bytes)}`, key));
  presets.add(new Option('Custom URL…', 'custom'));
  presets.addEventListener('change', () => {
    if (presets.value === 'custom') {
      $('#weights-url').select();
      $('#weights-url').focus();
    } else {
      loadUrl(MODELS[presets.value].url);
    }
  });
  $('#weights-url').addEventListener('input', (e) => {
    presets.value = presetOf(e.target.value.trim());
  });
  $('#model-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const url = $('#weights-url').value.trim();
    if (url) loadUrl(url);
  });
  $('#weights-file').addEventListener('change', (e) => {
    const f = e.target.files[0];
    if (f) loadModel(f, f.name);
  });
  $('#image-file').addEventListener('change', (e) => openFiles(e.target.files));
  for (const b of $('#samples').children) b.addEventListener('click', () => openImageUrl(b.dataset.src));
  $('#commit').addEventListener('click', commit);
  $('#clear-prompt').addEventListener('click', discardPrompt);
  $('#undo').addEventListener('click', undo);
  $('#redo').addEventListener('click', redo);
  $('#clear-all').addEventListener('click', clearAll);
  $('#everything').addEventListener('click', segmentEverything);
  $('#everything-cancel').addEventListener('click', () => cancelEverything());
  $('#adapt').addEventListener('click', adapt);
  $('#adapt-cancel').addEventListener('click', () => cancelAdapt());
  $('#adapt-revert').addEventListener('click', revertAdapt);
  $('#adapt-download').addEventListener('click', downloadAdapted);
  $('#export-mask').addEventListener('click', exportMask);
  $('#export-cutout').addEventListener('click', exportCutout);
  $('#export-coco').addEventListener('click', () => exportCoco('rle'));
  $('#export-polygons').addEventListener('click', () => exportCoco('polygons'));
  $('#export-embedding').addEventListener('click', exportEmbedding);
  $('#hover-preview').addEventListener('change', clearPreview);
  const stage = $('#stage');
  document.addEventListener('dragover', (e) => {
    e.preventDefault();
    stage.classList.add('dragover');
  });
  document.addEventListener('dragleave', () => stage.classList.remove('dragover'));
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    stage.classList.remove('dragover');
    openFiles(e.dataTransfer.files);
  });
  document.addEventListener('paste', (e) => {
    const files = [...(e.clipboardData?.files ?? [])];
    if (files.length) openFiles(files);
  });
}

/**
 * The model and image the address asks for: `?weights=` (else the default model), `?image=`
 * with its `?embedding=`, `?backend=`. The image is shown while the model loads, unless it
 * comes with an embedding, which needs the model first.
 */
async function fromAddress() {
  const q = new URLSearchParams(location.search);
  if (q.get('backend')) $('#backend').value = q.get('backend');
  const model = loadUrl(q.get('weights') || MODELS[DEFAULT_MODEL].url);
  const img = q.get('image');
  if (img) {
    let embedding = null;
    if (q.get('embedding')) {
      const r = await fetch(q.get('embedding'));
      if (!r.ok) throw new Error(`${q.get('embedding')}: HTTP ${r.status}`);
      embedding = await r.arrayBuffer();
      await model;
    }
    await openImageUrl(img, embedding);
  }
  await model;
}

setupControls();
setupPointer();
setupKeys();
render();
document.body.dataset.pending = '0';
document.body.dataset.image = 'none';
document.body.dataset.everything = 'idle';
document.body.dataset.adapt = 'idle';
if ('serviceWorker' in navigator && !new URLSearchParams(location.search).has('nosw')) {
  navigator.serviceWorker.register('sw.js').catch(() => {});
}
fromAddress().catch((e) => message(e.message, true));

/** Read-only view for tests and the console. */
window.websamApp = {
  state: () => history.current,
  // The last "Adapt" run that ended (its losses, one per step), and the objects kept for it.
  adapt: () => ({ last: lastAdapt, earlier: earlier.map((e) => ({ name: e.name, objects: e.masks.length })) }),
  // Tests: the model fails as a bug would, inside an action like any click's decode.
  failForTesting: (kind) => act(async () => {
    await sam.failForTesting(kind);
  }),
  idle: async () => {
    while (pending > 0 || hoverBusy) await new Promise((r) => setTimeout(r, 20));
  },
};
