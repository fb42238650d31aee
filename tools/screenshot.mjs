// docs/screenshot.jpg: the demo page as README shows it: the trained MobileSAM (models/, from
// ./build.sh setup) on the coffee sample, the cup and the spoon kept as objects and a click on
// the saucer pending. Needs pkg/ (./build.sh build).
//   node tools/screenshot.mjs
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';
import { launch } from '../tests/browser/browser.mjs';

const root = fileURLToPath(new URL('../', import.meta.url));
const server = await serve({ '/': `${root}www`, '/pkg/': `${root}pkg`, '/models/': `${root}models` });
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(`${server.url}/?backend=cpu&image=samples/coffee.png&nosw`);
  await page.waitForSelector('body[data-image=ready]', { timeout: 120000 });
  const b = await page.locator('#layers').boundingBox();
  const at = (x, y) => [b.x + ((x + 0.5) * b.width) / 600, b.y + ((y + 0.5) * b.height) / 400];
  const idle = () => page.evaluate(() => window.websamApp.idle());
  // The cup, by a box.
  await page.mouse.move(...at(170, 15));
  await page.mouse.down();
  await page.mouse.move(...at(410, 310), { steps: 8 });
  await page.mouse.up();
  await idle();
  await page.keyboard.press('Enter');
  // The spoon, by a click.
  await page.mouse.click(...at(365, 285));
  await idle();
  await page.keyboard.press('Enter');
  await idle();
  // The saucer, pending.
  await page.mouse.click(...at(120, 300));
  await idle();
  await page.mouse.move(b.x - 40, b.y + 40);
  await page.screenshot({ path: `${root}docs/screenshot.jpg`, type: 'jpeg', quality: 80 });
} finally {
  await browser.close();
  await server.close();
}
