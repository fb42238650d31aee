// Keeps the page working offline once loaded: the app shell, the package and the sample
// photographs are fetched from the network when it answers (so updates show at once) and from
// this cache when it does not. Checkpoints are not handled here: the package keeps every one it
// fetched by URL (the default models/mobile_sam.pt included) in its own Cache API store and
// reads it from there on the next visit, online or not.
const SHELL = 'websam-shell-v5';
const FILES = [
  './', 'index.html', 'style.css', 'app.js', 'annotate.js',
  'pkg/worker.js', 'pkg/worker-entry.js', 'pkg/websam.js', 'pkg/internal.js',
  'pkg/websam_core.js', 'pkg/websam_core_bg.wasm',
  // The threaded build and its thread workers (a cross-origin isolated page).
  'pkg/thread-entry.js', 'pkg/websam_core_mt.js', 'pkg/websam_core_mt_bg.wasm',
  // The relaxed-SIMD kernels modules (without them the CPU path runs the portable kernel).
  'pkg/websam_kernels_bg.wasm', 'pkg/websam_kernels_mt_bg.wasm',
  'samples/chelsea.png', 'samples/coffee.png', 'samples/astronaut.png',
  'samples/thumbs/chelsea.jpg', 'samples/thumbs/coffee.jpg', 'samples/thumbs/astronaut.jpg',
];

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(SHELL).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});

// Earlier versions of the shell go; other stores (the package's weights) stay.
self.addEventListener('activate', (e) => e.waitUntil((async () => {
  for (const name of await caches.keys()) {
    if (name.startsWith('websam-shell-') && name !== SHELL) await caches.delete(name);
  }
  await self.clients.claim();
})()));

self.addEventListener('fetch', (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== 'GET' || url.origin !== location.origin) return;
  const scope = new URL(self.registration.scope);
  const path = url.pathname.slice(scope.pathname.length);
  if (!FILES.includes(path) && path !== '') return;
  e.respondWith((async () => {
    const cache = await caches.open(SHELL);
    try {
      const response = await fetch(e.request);
      if (response.ok) cache.put(e.request, response.clone());
      return response;
    } catch {
      return (await cache.match(e.request, { ignoreSearch: true })) ?? Response.error();
    }
  })());
});
