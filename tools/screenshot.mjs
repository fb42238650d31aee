// docs/screenshot.jpg: the demo page with two objects committed, as README shows it. Needs pkg/
// (./build.sh build). The fixture weights are random, so the masks are textures, not shapes.
//   node tools/screenshot.mjs
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';
import { launch } from '../tests/browser/browser.mjs';

const root = fileURLToPath(new URL('../', import.meta.url));
const server = await serve({ '/': `${root}www`, '/pkg/': `${root}pkg`, '/fixtures/': `${root}tests/fixtures` });
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(`${server.url}/?weights=/fixtures/sam_decoder.safetensors&backend=cpu&image=/fixtures/image.png&embedding=/fixtures/embedding.npy&nosw`);
  await page.waitForSelector('body[data-image=ready]', { timeout: 60000 });
  const b = await page.locator('#layers').boundingBox();
  const at = (x, y) => [b.x + ((x + 0.5) * b.width) / 640, b.y + ((y + 0.5) * b.height) / 480];
  const idle = () => page.evaluate(() => window.websamApp.idle());
  await page.mouse.move(...at(370, 50));
  await page.mouse.down();
  await page.mouse.move(...at(570, 210), { steps: 8 });
  await page.mouse.up();
  await idle();
  await page.keyboard.press('Enter');
  await page.mouse.click(...at(100, 400));
  await idle();
  await page.keyboard.press('Enter');
  await idle();
  await page.mouse.click(...at(470, 360));
  await idle();
  await page.mouse.move(b.x - 40, b.y + 40);
  await page.screenshot({ path: `${root}docs/screenshot.jpg`, type: 'jpeg', quality: 80 });
} finally {
  await browser.close();
  await server.close();
}
