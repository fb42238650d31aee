// Debian's Chromium (never a downloaded browser) driven by playwright-core, headless, with
// WebGPU on (SwiftShader where there is no GPU).
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

export async function launch({ webgpu = true, extraArgs = [] } = {}) {
  const args = [...extraArgs, '--no-sandbox', '--disable-dev-shm-usage', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-quic'];
  if (webgpu) args.push('--enable-unsafe-webgpu');
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args });
}

/** A new page at `url` whose console errors and page errors are printed (they explain failures). */
export async function open(browser, url, { init } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.log(`[page ${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
  if (init) await page.addInitScript(init);
  await page.goto(url);
  return page;
}

/**
 * Runs `harness[fn](...args)` in a fresh page at `${base}/tests/browser/blank.html` (own
 * context: own Cache API store), `harness` being the module at `modulePath`; returns its result.
 */
export async function runInPage(browser, base, modulePath, fn, args = [], options = {}) {
  const page = await open(browser, `${base}/tests/browser/blank.html`, options);
  try {
    return await page.evaluate(async ([path, name, a]) => {
      const harness = await import(path);
      return harness[name](...a);
    }, [modulePath, fn, args]);
  } finally {
    await page.context().close();
  }
}
