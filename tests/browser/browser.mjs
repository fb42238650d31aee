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
