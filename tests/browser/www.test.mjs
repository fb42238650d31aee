// The demo and annotation page (www/) in headless Chromium, driven as a user drives it: the
// default model (the trained MobileSAM from the page's own server) and a sample photograph, a
// click on the cat checked against the official code's golden; keys after toolbar controls;
// weights by URL parameter and by file input, an image by file input, hover, clicks, a dragged
// box, candidates, objects, undo/redo, every export, offline reload, "segment everything" (with
// cancel, and added to objects kept), "Adapt" (fine-tuning on the objects kept, revert, the
// adapted weights downloaded); on the CPU and on WebGPU.
// What the page draws is compared with what the package's API returns for the same prompt (a
// reference model in the same page, on the page's own exported embedding), and the box with
// the PyTorch golden.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inflateSync } from 'node:zlib';
import { serve } from '../../tools/serve.mjs';
import { launch } from './browser.mjs';
import { maskStats, rleDecode, rleFromString } from '../../www/annotate.js';
import { npy, rasterize } from '../support/fixtures.mjs';

const root = fileURLToPath(new URL('../../', import.meta.url));
const fixtures = join(root, 'tests/fixtures');
const models = join(root, 'models');
const W = 640;
const H = 480;
const DEFAULT_MODEL = '/models/mobile_sam.pt';
let server;
let bare; // the page deployed without models/: no default model to load
let browser;
let downloads;

// The SAM 2.1 fixture (tests/fixtures/sam2) as a checkpoint that names its trunk, as
// tests/browser/sam2.test.mjs writes it.
const SAM2_CHECKPOINT = join(root, 'target/fixtures/sam2_fixture.safetensors');

before(async () => {
  assert.ok(existsSync(join(models, 'mobile_sam.pt')), 'models/mobile_sam.pt is missing: run ./build.sh setup');
  if (!existsSync(SAM2_CHECKPOINT)) {
    execFileSync('cargo', ['run', '-q', '--example', 'fixture_checkpoint', '--', 'sam2', SAM2_CHECKPOINT], { cwd: root, stdio: 'inherit' });
  }
  downloads = mkdtempSync(join(tmpdir(), 'websam-www-'));
  const mounts = {
    '/': join(root, 'www'), '/pkg/': join(root, 'pkg'), '/fixtures/': fixtures,
    '/test/': join(root, 'tests/browser'), '/downloads/': downloads,
    '/target-fixtures/': join(root, 'target/fixtures'),
  };
  // As ./build.sh serve: the trained model at /models/, cross-origin isolated (so the CPU path
  // has threads).
  server = await serve({ ...mounts, '/models/': models }, { isolated: true });
  bare = await serve(mounts, { isolated: true });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.close();
  await bare?.close();
  rmSync(downloads, { recursive: true, force: true });
});

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') console.log(`[page console] ${m.text()}`);
  });
  return page;
}

const idle = (page) => page.evaluate(() => window.websamApp.idle());
const state = (page) => page.evaluate(() => {
  const s = window.websamApp.state();
  return {
    prompt: s.prompt,
    selected: s.selected,
    candidates: s.result?.masks.length ?? 0,
    objects: s.objects.map((o) => ({ id: o.id, name: o.name, visible: o.visible })),
    active: s.active,
  };
});
const helpers = (page, fn, ...args) => page.evaluate(async ([f, a]) => (await import('/test/www-helpers.js'))[f](...a), [fn, args]);

/** Client coordinates of an image position (pixel centre, or corner with `corner`). */
async function at(page, x, y, corner = false) {
  const b = await page.locator('#layers').boundingBox();
  const [w, h] = await page.evaluate(() => [document.getElementById('image').width, document.getElementById('image').height]);
  const d = corner ? 0 : 0.5;
  return [b.x + ((x + d) * b.width) / w, b.y + ((y + d) * b.height) / h];
}

function diffCount(a, b) {
  assert.equal(a.length, b.length);
  let n = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) n++;
  return n;
}

/** Saves a download under the served /downloads/ folder; returns its path and bytes. */
async function download(page, button) {
  const [d] = await Promise.all([page.waitForEvent('download'), page.click(button)]);
  const path = join(downloads, d.suggestedFilename());
  await d.saveAs(path);
  return { name: d.suggestedFilename(), path, bytes: readFileSync(path) };
}

const bitsOf = (data) => Array.from(data, (v) => (v ? '1' : '0')).join('');

/** An 8-bit greyscale, non-interlaced PNG (the real goldens' logits): `{ width, height, data }`. */
function greyPng(path) {
  const bytes = readFileSync(path);
  let width;
  let height;
  const idat = [];
  for (let at = 8; at < bytes.length;) {
    const len = bytes.readUInt32BE(at);
    const type = bytes.toString('latin1', at + 4, at + 8);
    const body = bytes.subarray(at + 8, at + 8 + len);
    if (type === 'IHDR') {
      width = body.readUInt32BE(0);
      height = body.readUInt32BE(4);
      assert.deepEqual([body[8], body[9], body[12]], [8, 0, 0], `${path}: not an 8-bit grey, non-interlaced PNG`);
    } else if (type === 'IDAT') {
      idat.push(body);
    } else if (type === 'IEND') {
      break;
    }
    at += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const data = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (width + 1)];
    for (let x = 0; x < width; x++) {
      const v = raw[y * (width + 1) + 1 + x];
      const a = x > 0 ? data[y * width + x - 1] : 0;
      const b = y > 0 ? data[(y - 1) * width + x] : 0;
      const c = x > 0 && y > 0 ? data[(y - 1) * width + x - 1] : 0;
      let p;
      if (filter === 0) p = 0;
      else if (filter === 1) p = a;
      else if (filter === 2) p = b;
      else if (filter === 3) p = (a + b) >> 1;
      else if (filter === 4) {
        const pa = Math.abs(b - c);
        const pb = Math.abs(a - c);
        const pc = Math.abs(a + b - 2 * c);
        p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else throw new Error(`${path}: PNG filter ${filter}`);
      data[y * width + x] = (v + p) & 255;
    }
  }
  return { width, height, data };
}

/** A case of the real-weights goldens (tests/fixtures/real/cases.json): its photograph and prompt. */
function realCase(photo, name) {
  const cases = JSON.parse(readFileSync(join(fixtures, 'real/cases.json'), 'utf8'));
  const p = cases.photos.find((q) => q.name === photo);
  return { photo: p, ...p.cases.find((c) => c.name === name) };
}

/**
 * The page's current mask (the overlay the person sees) against the reference's full-size
 * logits, plane `plane` of the golden PNG (value = round(100 * logit) + 128, clipped): pixels
 * off the reference's mask where |logit| >= `band`, and within the band.
 */
async function againstGolden(page, c, plane, band) {
  const golden = greyPng(join(fixtures, c.logits_png));
  const [h, w] = c.orig_size;
  assert.equal(golden.width, w);
  // Read in the page itself (no test module to import: the page may be offline).
  const shown = await page.evaluate(() => {
    const c = document.getElementById('current-layer');
    const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let bits = '';
    for (let i = 3; i < px.length; i += 4) bits += px[i] > 0 ? '1' : '0';
    return bits;
  });
  assert.equal(shown.length, w * h);
  let off = 0;
  let inBand = 0;
  let area = 0;
  for (let i = 0; i < w * h; i++) {
    const v = golden.data[plane * w * h + i];
    if (shown[i] === '1') area++;
    if ((v > 128) !== (shown[i] === '1')) {
      if (Math.abs(v - 128) >= band * 100) off++;
      else inBand++;
    }
  }
  return { off, inBand, area: area / (w * h) };
}

describe('the trained MobileSAM, by default', () => {
  let page;
  const cat = realCase('chelsea', 'point_multimask');
  const requests = () => server.requests.get(DEFAULT_MODEL) ?? 0;

  test('the default model from this server; a sample photograph; a click on the cat gives the reference mask', async (t) => {
    const before = requests();
    page = await newPage();
    // No model asked for: the page loads the default from its own server (on the CPU backend,
    // whose masks match the reference exactly but for logits within ~1e-4 of 0).
    await page.goto(`${server.url}/?backend=cpu`);
    // One click on a sample photograph, while the model may still be loading.
    await page.click('#samples button[data-src="samples/chelsea.png"]');
    await page.waitForSelector('body[data-backend=cpu]', { timeout: 120000 });
    assert.match(await page.textContent('#model-status'), /^MobileSAM \(this server\) loaded on CPU in /);
    assert.equal(await page.inputValue('#model-preset'), 'local');
    // The presets, each with its download size.
    assert.deepEqual(await page.$$eval('#model-preset option', (os) => os.map((o) => o.textContent)), [
      'MobileSAM (this server) · 40.7 MB', 'MobileSAM (official, GitHub) · 40.7 MB',
      'SAM ViT-B (Meta, Hugging Face) · about 375.0 MB', 'SAM ViT-L (Meta, Hugging Face) · about 1.25 GB',
      'SAM ViT-H (Meta, Hugging Face) · about 2.56 GB',
      'SAM 2.1 Hiera-T (Meta, Hugging Face) · about 156.0 MB', 'SAM 2.1 Hiera-S (Meta, Hugging Face) · about 185.0 MB',
      'SAM 2.1 Hiera-B+ (Meta, Hugging Face) · about 324.0 MB', 'SAM 2.1 Hiera-L (Meta, Hugging Face) · about 898.0 MB',
      'Custom URL…',
    ]);
    assert.equal(await page.inputValue('#weights-url'), `${server.url}${DEFAULT_MODEL}`);
    assert.equal(requests() - before, 1, 'the default model fetched once from the page\'s server');
    await page.waitForSelector('body[data-image=ready]', { timeout: 120000 });
    assert.match(await page.textContent('#image-status'), /^chelsea\.png: 451×300, encoded in /);
    assert.equal(await page.getAttribute('#samples button[data-src="samples/chelsea.png"]', 'aria-pressed'), 'true');
    const [x, y] = cat.points[0];
    await page.mouse.click(...(await at(page, x, y)));
    await idle(page);
    const s = await state(page);
    assert.deepEqual(s.prompt.points, [{ x, y, label: 1 }]);
    assert.equal(s.candidates, 3);
    assert.equal(s.selected, cat.best, 'the best candidate is the reference\'s');
    // Off the reference's mask only where the reference's logit is within 0.05 of 0.
    const d = await againstGolden(page, cat, cat.best, 0.05);
    t.diagnostic(`mask: ${(d.area * 100).toFixed(1)}% of the photograph; ${d.inBand} pixels off the reference's, all with |logit| < 0.05`);
    assert.equal(d.off, 0, `pixels off the reference's mask with |logit| >= 0.05 (${d.inBand} within the band)`);
    assert.ok(d.area > 0.6, `the cat: ${(d.area * 100).toFixed(1)}% of the photograph`);
  });

  test('keys after a toolbar control: Enter keeps the object, 1-3 choose a candidate, Escape discards', async () => {
    // The background radio, then a click on the image: a background point refines the cat.
    await page.click('#toolbar input[name=label][value="0"]');
    await page.mouse.click(...(await at(page, 420, 40)));
    await idle(page);
    let s = await state(page);
    assert.deepEqual(s.prompt.points.map((p) => p.label), [1, 0]);
    assert.equal(s.candidates, 1);
    await page.keyboard.press('Enter');
    await idle(page);
    s = await state(page);
    assert.deepEqual(s.objects.map((o) => o.name), ['object 1'], 'Enter kept the object');
    assert.deepEqual(s.prompt, { points: [], box: null });
    // The foreground radio and the hover-preview checkbox, then a click: the keys still work.
    await page.click('#toolbar input[name=label][value="1"]');
    await page.click('#hover-preview');
    assert.equal(await page.isChecked('#hover-preview'), false);
    const [x, y] = cat.points[0];
    await page.mouse.click(...(await at(page, x, y)));
    await idle(page);
    assert.equal((await state(page)).candidates, 3);
    for (const key of ['3', '2', '1', '2']) {
      await page.keyboard.press(key);
      await idle(page);
      assert.equal((await state(page)).selected, Number(key) - 1, `key ${key}`);
    }
    const candidate2 = await helpers(page, 'layer', 'current-layer');
    assert.ok(candidate2.includes('1'), 'candidate 2 drawn');
    await page.keyboard.press('Escape');
    await idle(page);
    s = await state(page);
    assert.deepEqual(s.prompt, { points: [], box: null }, 'Escape discarded the prompt');
    assert.equal(s.candidates, 0);
    assert.equal(s.objects.length, 1, 'the kept object stays');
    assert.equal((await helpers(page, 'layer', 'current-layer')).indexOf('1'), -1, 'no current mask');
  });

  test('Adapt: objects of two images, progress and loss, the adapted masks on the next click, revert bit for bit, the adapted weights downloaded and loaded', async (t) => {
    // The cat kept on chelsea (the test above); a second image: chelsea's object is kept for
    // training with its embedding, and the cup is kept on coffee.
    await page.click('#samples button[data-src="samples/coffee.png"]');
    await page.waitForFunction(() => document.body.dataset.image === 'ready'
      && /^coffee\.png: .*encoded/.test(document.getElementById('image-status').textContent), null, { timeout: 120000 });
    assert.deepEqual((await page.evaluate(() => window.websamApp.adapt())).earlier, [{ name: 'chelsea.png', objects: 1 }]);
    const cup = [290, 150];
    const logits = () => page.evaluate(() => window.websamApp.state().result.masks.map((m) => Array.from(m.lowResLogits)));
    const clickCup = async () => {
      await page.mouse.click(...(await at(page, ...cup)));
      await idle(page);
      return logits();
    };
    const original = await clickCup();
    assert.equal(original.length, 3);
    await page.keyboard.press('Enter');
    await idle(page);
    assert.equal((await state(page)).objects.length, 1);
    assert.equal(await page.isDisabled('#adapt-revert'), true, 'nothing to revert before adapting');
    // Three steps of both objects, in the page's worker (the first steps of AdamW move every
    // weight by about the rate whatever its gradient: a shorter run may not lower the loss yet).
    await page.fill('#adapt-steps', '3');
    await page.click('#adapt');
    await page.waitForSelector('body[data-adapt=running]');
    assert.equal(await page.isDisabled('#adapt-cancel'), false);
    assert.match(await page.textContent('#adapt-status'), /^Adapting to 2 objects of 2 images/);
    await page.waitForSelector('body[data-adapt=done]', { timeout: 600000 });
    const { last } = await page.evaluate(() => window.websamApp.adapt());
    const said = await page.textContent('#adapt-status');
    t.diagnostic(`${said} The steps' losses: ${last.losses.join(', ')}`);
    assert.equal(last.objects, 2);
    assert.equal(last.images, 2);
    assert.equal(last.measured, 2);
    assert.equal(last.losses.length, 3);
    assert.ok(last.losses.every((l) => Number.isFinite(l) && l > 0), `losses ${last.losses}`);
    // The loss on the two objects, the same prompts before and after, fell.
    assert.ok(last.after < last.before, `the loss went from ${last.before} to ${last.after}`);
    assert.equal(said, `Adapted to 2 objects of 2 images in ${said.split(' in ')[1].split(' (')[0]} (3 steps): the loss on them `
      + `${last.before.toPrecision(3)} → ${last.after.toPrecision(3)} (the same prompts). The next clicks use the adapted model.`);
    assert.equal(await page.textContent('#adapted-status'), 'decoder: adapted');
    // The next click is decoded by the adapted model.
    const tuned = await clickCup();
    let change = 0;
    tuned.forEach((m, i) => m.forEach((v, j) => {
      change = Math.max(change, Math.abs(v - original[i][j]));
    }));
    t.diagnostic(`the cup's logits moved by up to ${change.toFixed(4)}`);
    assert.ok(change > 1e-3, `the adapted model predicts as the original (${change})`);
    await page.keyboard.press('Escape');
    // The adapted weights as a checkpoint: safetensors (an 8-byte header length, then JSON).
    const file = await download(page, '#adapt-download');
    assert.equal(file.name, 'mobile_sam-adapted.safetensors');
    assert.equal(file.bytes[8], '{'.charCodeAt(0));
    assert.ok(file.bytes.length > 1e6, `${file.bytes.length} bytes`);
    // Revert: the original masks, bit for bit.
    await page.click('#adapt-revert');
    await idle(page);
    assert.equal(await page.textContent('#adapt-status'), 'Back to the weights of MobileSAM (this server).');
    assert.equal(await page.textContent('#adapted-status'), '');
    assert.deepEqual(await clickCup(), original, 'after revert, the original logits');
    await page.keyboard.press('Escape');
    // The downloaded file loads as any checkpoint and decodes as the adapted model did.
    await page.fill('#weights-url', `${server.url}/downloads/${file.name}`);
    await page.click('#load-url');
    await page.waitForFunction(() => /^mobile_sam-adapted\.safetensors loaded/.test(document.getElementById('model-status').textContent), null, { timeout: 120000 });
    await page.waitForSelector('body[data-image=ready]', { timeout: 120000 });
    assert.deepEqual(await clickCup(), tuned, 'the downloaded weights give the adapted logits');
    await page.context().close();
  });

  test('offline: the page starts with the cached default model, a remote model that cannot be fetched says so', async (t) => {
    const before = requests();
    const page = await newPage();
    await page.goto(`${server.url}/?backend=cpu`);
    await page.waitForSelector('body[data-backend=cpu]', { timeout: 120000 });
    await page.evaluate(() => navigator.serviceWorker.ready);
    await page.reload();
    await page.waitForSelector('body[data-backend=cpu]', { timeout: 60000 });
    assert.equal(requests() - before, 1, 'the second visit reads the default model from the cache');
    await page.context().setOffline(true);
    await page.reload();
    await page.waitForSelector('body[data-backend=cpu]', { timeout: 60000 });
    assert.match(await page.textContent('#model-status'), /^MobileSAM \(this server\) loaded on CPU/);
    assert.equal(requests() - before, 1);
    // The official file on GitHub cannot be had offline: a readable message, the model kept.
    await page.selectOption('#model-preset', 'github');
    await page.waitForSelector('#model-status.error', { timeout: 30000 });
    const said = await page.textContent('#model-status');
    t.diagnostic(said);
    assert.match(said, /^Could not download MobileSAM \(official, GitHub\): (this browser is offline|raw\.githubusercontent\.com cannot be reached)/);
    assert.match(said, /Still using MobileSAM \(this server\)\.$/);
    assert.doesNotMatch(said, /TypeError|Failed to fetch|NetworkError/);
    assert.equal(await page.getAttribute('body', 'data-backend'), 'cpu');
    assert.equal(await page.inputValue('#model-preset'), 'local', 'the picker shows the model in use again');
    // The page still works: the sample photographs come from the service worker's cache.
    assert.ok(await page.$eval('#samples img[src="samples/thumbs/coffee.jpg"]', (img) => img.complete && img.naturalWidth === 180));
    await page.click('#samples button[data-src="samples/chelsea.png"]');
    await page.waitForSelector('body[data-image=ready]', { timeout: 120000 });
    const [x, y] = cat.points[0];
    await page.mouse.click(...(await at(page, x, y)));
    await idle(page);
    const s = await state(page);
    assert.equal(s.candidates, 3);
    assert.equal(s.selected, cat.best);
    const d = await againstGolden(page, cat, cat.best, 0.05);
    assert.equal(d.off, 0, `pixels off the reference's mask with |logit| >= 0.05 (${d.inBand} within the band)`);
    await page.context().close();
  });
});

describe('the demo page with SAM 2.1', () => {
  test('a SAM 2.1 checkpoint: a click segments, the embedding goes out as .npz and back in, everything runs, Adapt is off', async () => {
    const page = await newPage();
    await page.goto(`${server.url}/?weights=/target-fixtures/sam2_fixture.safetensors&backend=cpu&nosw`);
    await page.waitForSelector('body[data-backend=cpu]', { timeout: 60000 });
    assert.match(await page.textContent('#model-status'), /sam2_fixture\.safetensors loaded on CPU/);
    const chelsea = join(root, 'www/samples/chelsea.png');
    await page.setInputFiles('#image-file', chelsea);
    await page.waitForSelector('body[data-image=ready]', { timeout: 120000 });
    await page.mouse.click(...(await at(page, 250, 170)));
    await idle(page);
    assert.equal((await state(page)).candidates, 3, 'a click gives three candidates');
    // Kept: an object, yet Adapt stays off for SAM 2, saying why.
    await page.keyboard.press('Enter');
    await idle(page);
    assert.equal((await state(page)).objects.length, 1);
    assert.equal(await page.isDisabled('#adapt'), true);
    assert.match(await page.getAttribute('#adapt', 'title'), /not yet for SAM 2/);
    // SAM 2's embedding is exported as .npz (a zip of its three arrays) ...
    const exported = await download(page, '#export-embedding');
    assert.equal(exported.name, 'chelsea.npz');
    assert.deepEqual([...exported.bytes.subarray(0, 4)], [0x50, 0x4b, 0x03, 0x04]);
    // ... and opened with its image, it is used instead of an encode.
    await page.setInputFiles('#image-file', [chelsea, exported.path]);
    await page.waitForFunction(() => /embedding imported/.test(document.getElementById('image-status').textContent), null, { timeout: 60000 });
    // Segment everything: with SAM2AutomaticMaskGenerator's default IoU threshold (0.8) the
    // fixture's random weights (predicted IoU 0.50 to 0.70 on this image) keep no mask, and the
    // run ends as any other does (its records: tests/everything.rs, tests/browser/sam2.test.mjs).
    await page.selectOption('#points-per-side', '8');
    await page.click('#everything');
    await page.waitForSelector('body[data-everything=done]', { timeout: 120000 });
    assert.match(await page.textContent('#everything-status'), /^Everything found no masks \(/);
    await page.context().close();
  });
});

describe('the demo page on the CPU', () => {
  let page;
  const ref = {};

  test('weights by URL parameter, image by file input, embedding exported', async () => {
    page = await newPage();
    await page.goto(`${server.url}/?weights=/fixtures/mobile_sam.pth&backend=cpu&nosw`);
    await page.waitForSelector('body[data-backend=cpu]', { timeout: 60000 });
    assert.match(await page.textContent('#model-status'), /mobile_sam\.pth loaded on CPU/);
    assert.match(await page.textContent('#backend-status'), /CPU/);
    await page.setInputFiles('#image-file', join(fixtures, 'image.png'));
    await page.waitForSelector('body[data-image=ready]', { timeout: 120000 });
    assert.match(await page.textContent('#encoder-status'), /encoder \d/);
    const exported = await download(page, '#export-embedding');
    assert.equal(exported.name, 'image.npy');
    // The page's embedding of the image is PyTorch's (the fixture) to within the parity bound.
    const headerLen = exported.bytes.readUInt16LE(8);
    const got = new Float32Array(exported.bytes.buffer.slice(exported.bytes.byteOffset + 10 + headerLen, exported.bytes.byteOffset + exported.bytes.length));
    const want = npy('embedding.npy').data;
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    assert.ok(worst <= 2e-3, `embedding differs by ${worst}`);
    assert.equal(await helpers(page, 'reference', '/downloads/image.npy'), 'cpu');
  });

  test('hover shows the preview a click would give', async () => {
    await page.mouse.move(...(await at(page, 300, 200)));
    await page.waitForFunction(() => {
      const c = document.getElementById('preview-layer');
      const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      for (let i = 3; i < px.length; i += 4) if (px[i]) return true;
      return false;
    }, null, { timeout: 30000 });
    const r = await helpers(page, 'predict', { points: [[300, 200, 1]], multimask: true });
    assert.equal(diffCount(await helpers(page, 'layer', 'preview-layer'), r.masks[r.best]), 0);
  });

  test('a click draws the mask the API gives; candidates; a negative click refines it', async () => {
    await page.mouse.click(...(await at(page, 161, 150)));
    await idle(page);
    let s = await state(page);
    assert.deepEqual(s.prompt.points, [{ x: 161, y: 150, label: 1 }]);
    assert.equal(s.candidates, 3);
    const r1 = await helpers(page, 'predict', { points: [[161, 150, 1]], multimask: true });
    assert.equal(s.selected, r1.best);
    const first = await helpers(page, 'layer', 'current-layer');
    assert.equal(diffCount(first, r1.masks[r1.best]), 0, 'overlay = API mask');
    // The three candidates with their predicted IoU and stability, the best preselected.
    const shown = await page.$$eval('#candidates button', (bs) => bs.map((b) => ({
      pressed: b.getAttribute('aria-pressed'), iou: b.querySelector('.iou').textContent, stability: b.querySelector('.stability').textContent,
    })));
    assert.deepEqual(shown.map((c) => c.iou), r1.scores.map((v) => v.toFixed(3)));
    assert.deepEqual(shown.map((c) => c.stability), r1.stability.map((v) => v.toFixed(3)));
    assert.equal(shown.findIndex((c) => c.pressed === 'true'), r1.best);
    const other = (r1.best + 1) % 3;
    await page.click(`#candidates button[data-index="${other}"]`);
    await idle(page);
    assert.equal((await state(page)).selected, other);
    assert.equal(diffCount(await helpers(page, 'layer', 'current-layer'), r1.masks[other]), 0, 'selected candidate drawn');
    // A negative click refines the selected candidate: its low-res logits are the mask input.
    await page.mouse.click(...(await at(page, 470, 130)), { button: 'right' });
    await idle(page);
    s = await state(page);
    assert.deepEqual(s.prompt.points[1], { x: 470, y: 130, label: 0 });
    assert.equal(s.candidates, 1);
    const r2 = await helpers(page, 'predict', { points: [[161, 150, 1], [470, 130, 0]], multimask: false }, { result: r1.result, index: other });
    const second = await helpers(page, 'layer', 'current-layer');
    assert.equal(diffCount(second, r2.masks[0]), 0, 'refined overlay = API mask');
    assert.ok(diffCount(second, first) > 0, 'the negative click changed the mask');
    // Clicking a point removes it.
    await page.mouse.click(...(await at(page, 470, 130)));
    await idle(page);
    assert.equal((await state(page)).prompt.points.length, 1);
  });

  test('a dragged box gives the PyTorch box golden; two objects committed', async () => {
    await page.keyboard.press('Escape');
    await idle(page);
    assert.deepEqual((await state(page)).prompt, { points: [], box: null });
    await page.mouse.move(...(await at(page, 370, 50, true)));
    await page.mouse.down();
    await page.mouse.move(...(await at(page, 470, 130, true)), { steps: 4 });
    await page.mouse.move(...(await at(page, 570, 210, true)), { steps: 4 });
    await page.mouse.up();
    await idle(page);
    assert.deepEqual((await state(page)).prompt.box, [370, 50, 570, 210]);
    const overlay = await helpers(page, 'layer', 'current-layer');
    const golden = npy('case_predictor_box_logits.npy').data;
    let outsideBand = 0;
    let inBand = 0;
    golden.forEach((v, i) => {
      if ((v > 0) !== (overlay[i] === '1')) {
        if (Math.abs(v) < 1e-2) inBand++;
        else outsideBand++;
      }
    });
    assert.equal(outsideBand, 0, `pixels off the PyTorch mask (|logit| >= 1e-2); ${inBand} within the band`);
    ref.box = overlay;
    await page.keyboard.press('Enter');
    await idle(page);
    await page.mouse.click(...(await at(page, 100, 400)));
    await idle(page);
    const r3 = await helpers(page, 'predict', { points: [[100, 400, 1]], multimask: true });
    ref.second = r3.masks[r3.best];
    assert.equal(diffCount(await helpers(page, 'layer', 'current-layer'), ref.second), 0);
    await page.keyboard.press('Enter');
    await idle(page);
    const s = await state(page);
    assert.deepEqual(s.objects.map((o) => o.name), ['object 1', 'object 2']);
    assert.equal(await page.locator('#objects li').count(), 2);
    assert.equal((await helpers(page, 'colours', 'objects-layer')).length, 2, 'each object its own colour');
    assert.equal((await helpers(page, 'layer', 'current-layer')).indexOf('1'), -1, 'no current mask after commit');
  });

  test('undo and redo over commits, renames, hiding and deleting', async () => {
    await page.keyboard.press('Control+z');
    await idle(page);
    assert.equal((await state(page)).objects.length, 1);
    assert.equal((await state(page)).candidates, 3, 'undo brings back the prompt that was committed');
    await page.keyboard.press('Control+Shift+z');
    await idle(page);
    assert.equal((await state(page)).objects.length, 2);
    await page.fill('#objects li[data-id="1"] input.name', 'red disc');
    await page.press('#objects li[data-id="1"] input.name', 'Enter');
    await idle(page);
    await page.uncheck('#objects li[data-id="2"] input.visible');
    await idle(page);
    let s = await state(page);
    assert.deepEqual(s.objects.map((o) => [o.name, o.visible]), [['red disc', true], ['object 2', false]]);
    assert.equal((await helpers(page, 'colours', 'objects-layer')).length, 1, 'hidden object not drawn');
    await page.click('#undo');
    await idle(page);
    await page.click('#undo');
    await idle(page);
    s = await state(page);
    assert.deepEqual(s.objects.map((o) => [o.name, o.visible]), [['object 1', true], ['object 2', true]]);
    await page.click('#redo');
    await idle(page);
    assert.equal((await state(page)).objects[0].name, 'red disc');
    await page.click('#objects li[data-id="2"] button.delete');
    await idle(page);
    assert.deepEqual((await state(page)).objects.map((o) => o.id), [1]);
    await page.keyboard.press('Control+y');
    await idle(page);
    assert.equal((await state(page)).objects.length, 1, 'nothing to redo after a new action');
    await page.keyboard.press('Control+z');
    await idle(page);
    assert.deepEqual((await state(page)).objects.map((o) => o.id), [1, 2]);
  });

  test('exports: mask PNG, cut-out PNG, COCO RLE and polygons', async () => {
    // The second object is selected (the last committed); make the first one active.
    await page.click('#objects li[data-id="1"] .swatch');
    await idle(page);
    assert.equal((await state(page)).active, 1);
    const mask = await download(page, '#export-mask');
    const png = await helpers(page, 'decodePng', mask.bytes.toString('base64'));
    assert.deepEqual([png.width, png.height], [W, H]);
    const rgba = Buffer.from(png.rgba, 'base64');
    let pngBits = '';
    for (let i = 0; i < W * H; i++) pngBits += rgba[i * 4] === 255 ? '1' : '0';
    assert.equal(diffCount(pngBits, ref.box), 0, 'mask PNG = the object');

    const cut = await download(page, '#export-cutout');
    const cutPng = await helpers(page, 'decodePng', cut.bytes.toString('base64'));
    const { bbox } = maskStats({ data: Uint8Array.from(ref.box, Number), width: W, height: H });
    assert.deepEqual([cutPng.width, cutPng.height], [bbox[2], bbox[3]], 'cropped to the bounding box');
    const cutRgba = Buffer.from(cutPng.rgba, 'base64');
    const src = Buffer.from(await helpers(page, 'imagePixels', ...bbox), 'base64');
    let wrong = 0;
    for (let y = 0; y < bbox[3]; y++) {
      for (let x = 0; x < bbox[2]; x++) {
        const o = (y * bbox[2] + x) * 4;
        const inside = ref.box[(bbox[1] + y) * W + bbox[0] + x] === '1';
        if ((cutRgba[o + 3] === 255) !== inside || (inside && (cutRgba[o] !== src[o] || cutRgba[o + 1] !== src[o + 1] || cutRgba[o + 2] !== src[o + 2]))) wrong++;
      }
    }
    assert.equal(wrong, 0, 'cut-out: image pixels inside the mask, transparent outside');

    const coco = JSON.parse((await download(page, '#export-coco')).bytes);
    assert.deepEqual(coco.images, [{ id: 1, file_name: 'image.png', width: W, height: H }]);
    assert.equal(coco.annotations.length, 2);
    const wants = [ref.box, ref.second];
    coco.annotations.forEach((a, i) => {
      assert.deepEqual(a.segmentation.size, [H, W]);
      const decoded = rleDecode(rleFromString(a.segmentation.counts), W, H);
      assert.equal(diffCount(bitsOf(decoded.data), wants[i]), 0, `annotation ${i}: RLE decodes to the mask`);
      assert.deepEqual({ area: a.area, bbox: a.bbox }, maskStats(decoded));
    });
    assert.equal(coco.annotations[0].name, 'red disc');

    const polys = JSON.parse((await download(page, '#export-polygons')).bytes);
    polys.annotations.forEach((a, i) => {
      assert.equal(diffCount(bitsOf(rasterize(a.segmentation, W, H)), wants[i]), 0, `annotation ${i}: polygons fill the mask`);
    });
  });

  test('clear all, and undo it', async () => {
    await page.click('#clear-all');
    await idle(page);
    assert.equal((await state(page)).objects.length, 0);
    await page.keyboard.press('Control+z');
    await idle(page);
    assert.equal((await state(page)).objects.length, 2);
    await page.context().close();
  });
});

describe('segment everything on the CPU', () => {
  // The trained model on a sample photograph; small grids, so that a run takes seconds.
  let page;
  let reference; // the API's records for an 8x8 grid, on the page's embedding
  const [PW, PH] = [451, 300];
  const cat = realCase('chelsea', 'point_multimask');
  const status = () => page.textContent('#everything-status');
  const maskOf = (counts) => rleDecode(rleFromString(counts), PW, PH);
  /** Records each change of the progress bar, with the pixels of the preview layer then. */
  const watch = () => page.evaluate(() => {
    const bar = document.getElementById('everything-progress');
    const layer = document.getElementById('everything-layer');
    window.everythingSeen = [];
    window.everythingObserver?.disconnect();
    window.everythingObserver = new MutationObserver(() => {
      const px = layer.getContext('2d').getImageData(0, 0, layer.width, layer.height).data;
      let shown = 0;
      for (let i = 3; i < px.length; i += 4) if (px[i]) shown++;
      window.everythingSeen.push({ value: bar.value, max: bar.max, hidden: bar.hidden, shown });
    });
    window.everythingObserver.observe(bar, { attributes: true });
  });
  const seen = () => page.evaluate(() => window.everythingSeen.filter((p) => !p.hidden));
  const layerEmpty = async () => (await helpers(page, 'layer', 'everything-layer')).indexOf('1') === -1;
  /** The fraction of `a`'s pixels in `b` (counted here, not by the page's annotate.js). */
  function overlap(a, b) {
    let area = 0;
    let both = 0;
    for (let i = 0; i < a.data.length; i++) {
      if (a.data[i]) {
        area++;
        if (b.data[i]) both++;
      }
    }
    return both / area;
  }

  test('Everything: progress, masks as they come, the API\'s records as objects in one undo step, exported', async (t) => {
    page = await newPage();
    await page.goto(`${server.url}/?backend=cpu&nosw&image=samples/chelsea.png`);
    await page.waitForSelector('body[data-backend=cpu]', { timeout: 120000 });
    await page.waitForSelector('body[data-image=ready]', { timeout: 120000 });
    assert.equal(await page.isEnabled('#everything'), true, 'Everything is ready with the model and the image');
    assert.equal(await page.isDisabled('#everything-cancel'), true);
    assert.equal(await page.inputValue('#points-per-side'), '32');
    assert.equal(await page.inputValue('#max-overlap'), '0.1');
    await page.selectOption('#points-per-side', '8');
    await watch();
    const start = Date.now();
    await page.click('#everything');
    await page.waitForSelector('body[data-everything=done]', { timeout: 120000 });
    await idle(page);
    const ms = Date.now() - start;
    // The bar went up step by step to the end, and masks were drawn before the end.
    const steps = await seen();
    t.diagnostic(`8x8 grid in ${ms} ms; progress ${steps.map((p) => `${p.value}/${p.max}`).join(' ')}; preview pixels ${steps.map((p) => p.shown).join(' ')}`);
    const values = [...new Set(steps.map((p) => p.value))];
    assert.ok(values.length >= 3, `the progress bar moved: ${values}`);
    values.forEach((v, i) => assert.ok(i === 0 || v > values[i - 1], `progress goes up: ${values}`));
    assert.equal(steps.at(-1).value, steps.at(-1).max, 'the bar reached its end');
    assert.ok(steps.some((p) => p.value < p.max && p.shown > 0), 'masks shown as the batches finished');
    assert.equal(await page.isHidden('#everything-progress'), true, 'the bar goes when done');
    assert.ok(await layerEmpty(), 'the preview goes when done');
    assert.equal(await page.isEnabled('#everything'), true);

    // The objects are the records generate gives through the API, in their order.
    await download(page, '#export-embedding');
    reference = await helpers(page, 'everything', '/downloads/chelsea.npy', PW, PH, { pointsPerSide: 8 });
    const n = reference.length;
    t.diagnostic(`${n} records`);
    assert.ok(n >= 5, `${n} records`);
    const names = reference.map((_, i) => `auto ${i + 1}`);
    assert.deepEqual((await state(page)).objects.map((o) => o.name), names);
    assert.equal(await page.locator('#objects li').count(), n);
    assert.match(await status(), new RegExp(`^Everything: ${n} objects added in \\S+ m?s\\.$`));
    assert.ok((await helpers(page, 'colours', 'objects-layer')).length > 1, 'drawn as objects');

    // One step of the history.
    await page.click('#undo');
    await idle(page);
    assert.equal((await state(page)).objects.length, 0, 'one Undo removes them all');
    await page.click('#redo');
    await idle(page);
    assert.deepEqual((await state(page)).objects.map((o) => o.name), names, 'Redo brings them back');

    // Exported as objects made by clicks are: the same masks, areas and scores.
    const coco = JSON.parse((await download(page, '#export-coco')).bytes);
    assert.deepEqual(coco.images, [{ id: 1, file_name: 'chelsea.png', width: PW, height: PH }]);
    assert.deepEqual(coco.annotations.map((a) => a.name), names);
    assert.deepEqual(coco.annotations.map((a) => a.segmentation.counts), reference.map((r) => r.counts), 'the API\'s masks');
    coco.annotations.forEach((a, i) => {
      assert.deepEqual(a.segmentation.size, [PH, PW]);
      assert.equal(a.area, reference[i].area);
      assert.equal(a.predicted_iou, reference[i].iou);
      assert.equal(a.stability_score, reference[i].stability);
    });
  });

  test('Cancel half-way: no objects added, the page still segments a click', async (t) => {
    const before = (await state(page)).objects;
    await page.selectOption('#points-per-side', '16');
    await watch();
    await page.click('#everything');
    await page.waitForFunction(() => window.everythingSeen.some((p) => p.value >= 1), null, { timeout: 60000 });
    assert.equal(await page.isDisabled('#everything'), true, 'one run at a time');
    assert.equal(await page.isDisabled('#points-per-side'), true);
    // A click on the image while it runs adds no prompt.
    await page.mouse.click(...(await at(page, ...cat.points[0])));
    assert.deepEqual((await state(page)).prompt.points, []);
    const atCancel = (await seen()).at(-1).value;
    const start = Date.now();
    await page.click('#everything-cancel');
    await page.waitForSelector('body[data-everything=cancelled]', { timeout: 120000 });
    await idle(page);
    const said = await status();
    t.diagnostic(`Cancel at step ${atCancel}; ${said} (${Date.now() - start} ms)`);
    const [, done, total] = /^Everything cancelled after (\d+) of (\d+) steps: no objects added\.$/.exec(said) ?? [];
    assert.ok(done, said);
    // The step under way when Cancel was pressed ends; the next one is not started.
    assert.ok(Number(done) <= atCancel + 2 && Number(done) < Number(total),
      `the model went on to step ${done} of ${total} after Cancel at step ${atCancel}: the worker did not see the abort between steps`);
    assert.deepEqual((await state(page)).objects, before, 'no objects added');
    assert.equal(await page.isHidden('#everything-progress'), true);
    assert.ok(await layerEmpty(), 'the preview cleared');
    assert.equal(await page.isEnabled('#everything'), true);
    assert.equal(await page.isEnabled('#points-per-side'), true);
    // The model still has the image: a click segments.
    await page.mouse.click(...(await at(page, ...cat.points[0])));
    await idle(page);
    const s = await state(page);
    assert.deepEqual(s.prompt.points, [{ x: cat.points[0][0], y: cat.points[0][1], label: 1 }]);
    assert.equal(s.candidates, 3);
    assert.equal(s.selected, cat.best);
  });

  test('a panic in the model: the page shows the message and goes on segmenting', async () => {
    await page.evaluate(() => window.websamApp.failForTesting('panic'));
    await idle(page);
    const shown = await page.textContent('#message');
    assert.match(shown, /websam stopped on an internal error \(.*a panic provoked for testing.*\); the model is reloaded on the next call/);
    await page.keyboard.press('Escape');
    await page.mouse.click(...(await at(page, ...cat.points[0])));
    await idle(page);
    const s = await state(page);
    assert.equal(s.candidates, 3, 'a click after the panic segments (the worker reloaded the model and the image)');
    assert.equal(s.selected, cat.best);
  });

  test('with an object kept, Everything adds only the masks that do not overlap it', async (t) => {
    // Keep the cat (the click of the test before) alone.
    await page.click('#clear-all');
    await idle(page);
    await page.mouse.click(...(await at(page, ...cat.points[0])));
    await idle(page);
    await page.keyboard.press('Enter');
    await idle(page);
    const kept = (await state(page)).objects;
    assert.equal(kept.length, 1);
    await page.selectOption('#points-per-side', '8');
    await page.click('#everything');
    await page.waitForSelector('body[data-everything=done]', { timeout: 120000 });
    await idle(page);
    const coco = JSON.parse((await download(page, '#export-coco')).bytes);
    const catMask = maskOf(coco.annotations[0].segmentation.counts);
    const added = coco.annotations.slice(1);
    // The reference's records with at most 0.1 of their area on the cat, in their order.
    const want = reference.filter((r) => overlap(maskOf(r.counts), catMask) <= 0.1);
    t.diagnostic(`${added.length} of ${reference.length} masks added next to the cat`);
    assert.ok(added.length > 0 && added.length < reference.length, `${added.length} of ${reference.length} added`);
    assert.deepEqual(added.map((a) => a.segmentation.counts), want.map((r) => r.counts));
    for (const a of added) assert.ok(overlap(maskOf(a.segmentation.counts), catMask) <= 0.1, `${a.name} overlaps the cat`);
    assert.deepEqual((await state(page)).objects.map((o) => o.name).slice(0, 1), kept.map((o) => o.name));
    const skipped = reference.length - added.length;
    assert.match(await status(), new RegExp(`^Everything: ${added.length} objects? added in .*; ${skipped} skipped, over 0\\.1 of their area on the objects kept\\.$`));
    await page.click('#undo');
    await idle(page);
    assert.deepEqual((await state(page)).objects, kept, 'Undo leaves the object kept before');
  });

  test('a new image during a run cancels it', async () => {
    await watch();
    await page.click('#everything');
    await page.waitForFunction(() => window.everythingSeen.some((p) => p.value >= 1), null, { timeout: 60000 });
    await page.click('#samples button[data-src="samples/coffee.png"]');
    await page.waitForSelector('body[data-everything=cancelled]', { timeout: 120000 });
    await page.waitForSelector('body[data-image=ready]', { timeout: 120000 });
    await idle(page);
    assert.match(await status(), /^Everything cancelled \(a new image\) after \d+ of \d+ steps: no objects added\.$/);
    assert.match(await page.textContent('#image-status'), /^coffee\.png: /);
    assert.deepEqual((await state(page)).objects, []);
    assert.ok(await layerEmpty());
    assert.equal(await page.isEnabled('#everything'), true);
    await page.context().close();
  });
});

describe('loading', () => {
  test('no default model on the server says so; weights by file input; a file that is not a SAM checkpoint says so', async () => {
    const page = await newPage();
    await page.goto(`${bare.url}/?nosw`);
    await page.waitForSelector('#model-status.error');
    assert.match(await page.textContent('#model-status'),
      /^MobileSAM \(this server\): this server has no \/models\/mobile_sam\.pt .*Choose another model above \(MobileSAM \(official, GitHub\), 40\.7 MB\), a URL or a file\.$/);
    assert.equal(await page.inputValue('#model-preset'), 'local');
    await page.selectOption('#backend', 'cpu');
    await page.setInputFiles('#weights-file', join(fixtures, 'loader/dtypes.pth'));
    await page.waitForFunction(() => /Could not load dtypes/.test(document.getElementById('model-status').textContent));
    assert.match(await page.textContent('#model-status'), /Could not load dtypes\.pth: .*not a SAM checkpoint/);
    await page.setInputFiles('#weights-file', join(fixtures, 'sam_decoder.safetensors'));
    await page.waitForSelector('body[data-backend=cpu]');
    assert.match(await page.textContent('#model-status'), /sam_decoder\.safetensors loaded on CPU/);
    // Decoder-only weights: the image is opened with its embedding, no encoding.
    await page.setInputFiles('#image-file', [join(fixtures, 'image.png'), join(fixtures, 'embedding.npy')]);
    await page.waitForSelector('body[data-image=ready]');
    assert.match(await page.textContent('#image-status'), /embedding imported/);
    await page.context().close();
  });

  test('drop a checkpoint, then paste an image with a drop of its embedding', async () => {
    const page = await newPage();
    await page.goto(`${bare.url}/?backend=cpu&nosw`);
    // Files made in the page from the served fixtures, delivered as the browser delivers a drop
    // and a paste: DataTransfer objects on drop and paste events.
    const deliver = (kind, files) => page.evaluate(async ([k, list]) => {
      const dt = new DataTransfer();
      for (const [url, name, type] of list) dt.items.add(new File([await (await fetch(url)).blob()], name, { type }));
      const e = k === 'paste'
        ? new ClipboardEvent('paste', { clipboardData: dt, bubbles: true })
        : new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true });
      document.getElementById('stage').dispatchEvent(e);
    }, [kind, files]);
    await deliver('drop', [['/fixtures/sam_decoder.safetensors', 'sam_decoder.safetensors', '']]);
    await page.waitForSelector('body[data-backend=cpu]');
    assert.match(await page.textContent('#model-status'), /sam_decoder\.safetensors loaded on CPU/);
    await deliver('paste', [['/fixtures/image.png', 'image.png', 'image/png']]);
    // Decoder-only weights cannot encode: the page says so, and the dropped embedding fixes it.
    await page.waitForFunction(() => /Could not encode/.test(document.getElementById('image-status').textContent));
    await deliver('drop', [['/fixtures/embedding.npy', 'image.npy', '']]);
    await page.waitForSelector('body[data-image=ready]');
    await page.mouse.click(...(await at(page, 161, 150)));
    await idle(page);
    assert.equal((await state(page)).candidates, 3);
    await page.context().close();
  });

  test('offline: the page and the cached weights load with no network', async () => {
    const page = await newPage();
    const address = `${server.url}/?weights=/fixtures/sam_decoder.safetensors&backend=cpu`;
    await page.goto(address);
    await page.waitForSelector('body[data-backend=cpu]');
    await page.evaluate(() => navigator.serviceWorker.ready);
    await page.reload();
    await page.waitForSelector('body[data-backend=cpu]');
    await page.context().setOffline(true);
    await page.reload();
    await page.waitForSelector('body[data-backend=cpu]', { timeout: 30000 });
    assert.match(await page.textContent('#model-status'), /loaded on CPU/);
    // Every script and wasm module of the package (its package.json's files) is in the shell's
    // cache: the relaxed-SIMD kernels modules included, or the CPU path offline falls back to
    // the portable kernel.
    const { files } = JSON.parse(readFileSync(join(root, 'pkg/package.json'), 'utf8'));
    const missing = await page.evaluate(async (modules) => {
      const shell = (await caches.keys()).find((k) => k.startsWith('websam-shell-'));
      const cached = new Set((await (await caches.open(shell)).keys()).map((r) => new URL(r.url).pathname));
      return modules.filter((f) => !cached.has(`/pkg/${f}`));
    }, files.filter((f) => /\.(js|wasm)$/.test(f)));
    assert.deepEqual(missing, [], 'package files the offline page cannot load');
    await page.context().close();
  });
});

describe('the demo page on WebGPU', () => {
  test('a click draws the mask the API gives on WebGPU', async () => {
    const page = await newPage();
    await page.goto(`${server.url}/?weights=/fixtures/sam_decoder.safetensors&backend=webgpu&image=/fixtures/image.png&embedding=/fixtures/embedding.npy&nosw`);
    await page.waitForSelector('body[data-backend=webgpu]', { timeout: 60000 });
    await page.waitForSelector('body[data-image=ready]', { timeout: 60000 });
    assert.match(await page.textContent('#backend-status'), /WebGPU/);
    await page.uncheck('#hover-preview');
    await page.mouse.click(...(await at(page, 161, 150)));
    await idle(page);
    assert.equal(await helpers(page, 'reference', '/fixtures/embedding.npy', 'webgpu'), 'webgpu');
    const r = await helpers(page, 'predict', { points: [[161, 150, 1]], multimask: true });
    assert.equal(diffCount(await helpers(page, 'layer', 'current-layer'), r.masks[r.best]), 0);
    await page.context().close();
  });
});
