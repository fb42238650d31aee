// A static file server on 127.0.0.1 for the demo page (`./build.sh serve`) and the browser
// tests: folders mounted at URL prefixes, the MIME types a browser needs (application/wasm for
// streaming compilation, text/javascript for modules), no HTTP caching (the page caches what it
// keeps itself), and a count of requests per path so that tests can tell whether the page went
// to the network. With `isolated` (`--isolated`) every response carries COOP/COEP headers: the
// page is cross-origin isolated, so it has shared memory and websam's SamWorker its threads.
//
//   node tools/serve.mjs [--port 8080] [--isolated] [/prefix/=folder ...]
import { createServer } from 'node:http';
import { createReadStream, statSync } from 'node:fs';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.css': 'text/css; charset=utf-8',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.svg': 'image/svg+xml',
  '.webmanifest': 'application/manifest+json',
};

/** The file a request path names under the longest matching mount, or null. */
function locate(mounts, path) {
  const prefix = Object.keys(mounts).filter((p) => path.startsWith(p)).sort((a, b) => b.length - a.length)[0];
  if (prefix === undefined) return null;
  const root = resolve(mounts[prefix]);
  const file = normalize(join(root, path.slice(prefix.length)));
  return file === root || file.startsWith(root + sep) ? file : null;
}

/**
 * Serves `mounts` (`{ '/': folder, '/pkg/': folder }`, or one folder for '/'); resolves to
 * `{ url, requests, close }`. `requests` maps each path asked for to its number of requests.
 */
export function serve(mounts, { port = 0, host = '127.0.0.1', isolated = false, log = false } = {}) {
  if (typeof mounts === 'string') mounts = { '/': mounts };
  const requests = new Map();
  const server = createServer((req, res) => {
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      res.writeHead(400).end();
      return;
    }
    requests.set(path, (requests.get(path) ?? 0) + 1);
    let file = locate(mounts, path);
    let stat;
    try {
      stat = statSync(file);
      if (stat.isDirectory()) {
        file = join(file, 'index.html');
        stat = statSync(file);
      }
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: ${path}`);
      return;
    }
    const headers = {
      'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
      'content-length': stat.size,
      'cache-control': 'no-cache',
    };
    if (isolated) {
      headers['cross-origin-opener-policy'] = 'same-origin';
      headers['cross-origin-embedder-policy'] = 'require-corp';
    }
    if (log) console.log(`${req.method} ${path}`);
    res.writeHead(200, headers);
    if (req.method === 'HEAD') res.end();
    else createReadStream(file).pipe(res);
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => {
      const url = `http://${host}:${server.address().port}`;
      ok({ url, requests, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  let port = Number(process.env.PORT ?? 8080);
  let isolated = false;
  const mounts = {};
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--port') port = Number(args[++i]);
    else if (args[i] === '--isolated') isolated = true;
    else {
      const [prefix, folder] = args[i].split('=');
      mounts[prefix] = folder;
    }
  }
  const { url } = await serve(Object.keys(mounts).length ? mounts : { '/': '.' }, { port, isolated });
  console.log(url);
}
