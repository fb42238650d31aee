//! The wasm-bindgen surface, and nothing else: `WebSam`, the predictor as the browser module's
//! JS wrapper sees it. Inputs are checked here and every failure is a JS `Error` with a
//! message; nothing below panics on bad input.
//!
//! Calls on one `WebSam` must not overlap (the wrapper serialises them): a call takes the
//! predictor out for its duration, so an overlapping call is refused with an error rather than
//! racing the one in flight.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use js_sys::{Array, Float32Array, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::amg::{records_to_json, step_to_json, GeneratorOptions, MaskGenerator};
use crate::gpu::context::Precision;
use crate::image::{ImageFrame, MaskCleanup, RgbImage};
use crate::model::sam::{ImageEmbedding, Prompt};
use crate::model::source::{check_range, ByteSource};
use crate::model::weights::Weights;
use crate::predictor::{Backend, BackendChoice, Predictor};
use crate::train::interactive::Truth;
use crate::train::{Run, RunOptions};

/// The module's allocator: the standard one, counting the bytes it has handed out and not yet
/// taken back. Linear memory never shrinks and grows in steps the allocator's fragmentation
/// decides, so it cannot tell a leak from a late step; the heap in use can (`memoryStats`).
/// Written here rather than taken from a crate: one counter over `System`, nothing else.
struct CountingAllocator;

static HEAP_IN_USE: AtomicUsize = AtomicUsize::new(0);
/// The most `HEAP_IN_USE` has been since the module started.
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

/// Counts `size` more bytes in use.
fn counted(size: usize) {
    let now = HEAP_IN_USE.fetch_add(size, Ordering::Relaxed) + size;
    HEAP_PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call goes to `System` unchanged; the counter only observes sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            counted(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            counted(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes through here).
        unsafe { System.dealloc(ptr, layout) };
        HEAP_IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`; on failure the old block stays allocated and counted.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            counted(new_size);
            HEAP_IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The predictor and what the getters report while a call holds it.
struct Shared {
    /// `None` while a call is in flight.
    predictor: RefCell<Option<Predictor>>,
    /// The backend in use after the last call (it turns to the CPU when a lost GPU device
    /// cannot be replaced).
    backend: Cell<Backend>,
    adapter: RefCell<Option<String>>,
    precision: Cell<Precision>,
    /// The pixels of the image set by `setImage` (the generator's crop layers encode crops of
    /// it); `None` after `setEmbedding`.
    image: RefCell<Option<RgbImage>>,
    /// The "segment everything" run in progress, between its steps.
    generation: RefCell<Option<MaskGenerator>>,
    /// Objects given for the next training run (`trainAddObject`).
    training_objects: RefCell<Vec<crate::train::Object>>,
    /// The training run in progress, between its steps.
    training: RefCell<Option<Run>>,
    /// Whether the checkpoint is SAM 2's (its image frame is stretched to 1024x1024).
    sam2: bool,
}

impl Shared {
    /// The frame of an image of `width x height` for this model (SAM 2 stretches it).
    fn frame(&self, width: u32, height: u32) -> Result<ImageFrame, JsValue> {
        let (h, w) = (height as usize, width as usize);
        if self.sam2 {
            ImageFrame::stretched(h, w)
        } else {
            ImageFrame::new(h, w)
        }
        .map_err(js_err)
    }

    /// Sets an embedding made elsewhere, ending any generation on the image before.
    async fn set_embedding(&self, embedding: ImageEmbedding) -> Result<(), JsValue> {
        self.stop_generation().await;
        *self.image.borrow_mut() = None;
        self.call(async |p| p.set_embedding(embedding).await).await
    }

    /// Takes the predictor for the duration of a call.
    fn take(&self) -> Result<Predictor, JsValue> {
        self.predictor.borrow_mut().take().ok_or_else(busy)
    }

    /// Runs `f` on the predictor, taken for the call and put back whatever its outcome.
    async fn call<T>(
        &self,
        f: impl AsyncFnOnce(&mut Predictor) -> crate::Result<T>,
    ) -> Result<T, JsValue> {
        let mut p = self.take()?;
        let r = f(&mut p).await;
        self.backend.set(p.backend());
        *self.adapter.borrow_mut() = p.adapter_name();
        self.precision.set(p.precision());
        *self.predictor.borrow_mut() = Some(p);
        r.map_err(js_err)
    }

    /// Ends a generation left between steps, setting the whole image's embedding back.
    async fn stop_generation(&self) {
        let generation = self.generation.borrow_mut().take();
        if let Some(g) = generation {
            // The image is being replaced: a failure to restore the old one does not matter.
            let _ = self.call(async |p| g.cancel(p).await).await;
        }
    }
}

thread_local! {
    /// Where `setPanicHandler` sends panic messages.
    static PANIC_HANDLER: RefCell<Option<js_sys::Function>> = const { RefCell::new(None) };
}

/// SAM in the page: load weights, set an image (or its embedding), predict per prompt.
#[wasm_bindgen]
pub struct WebSam {
    shared: Rc<Shared>,
    /// Why `auto` did not give WebGPU.
    fallback_reason: Option<String>,
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

fn busy() -> JsValue {
    js_err("websam is busy with another call on this model; await it before the next")
}

fn set(obj: &Object, key: &str, value: &JsValue) -> Result<(), JsValue> {
    Reflect::set(obj, &JsValue::from_str(key), value).map(|_| ())
}

/// A checkpoint's bytes in a JavaScript `Uint8Array`, outside the module's memory.
#[derive(Debug)]
struct JsBytes(Uint8Array);

impl ByteSource for JsBytes {
    fn len(&self) -> u64 {
        u64::from(self.0.length())
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        check_range(offset, buf.len() as u64, self.len())?;
        // Both ends are at most `length()`, a u32.
        let (start, end) = (offset as u32, (offset + buf.len() as u64) as u32);
        self.0.subarray(start, end).copy_to(buf);
        Ok(())
    }
}

#[wasm_bindgen]
impl WebSam {
    /// Reads a checkpoint (`.pth`, `.pt`, `.safetensors` bytes, left where they are: the model
    /// copies in one tensor at a time, and reads them again to rebuild after a lost device)
    /// and builds the model on
    /// `backend`: "webgpu", "cpu" or "auto" (WebGPU on a hardware adapter, else the CPU), in
    /// `precision` "f32" or "f16" (WebGPU where the adapter offers shader-f16, else f32).
    pub async fn load(
        weights: Uint8Array,
        backend: String,
        precision: String,
    ) -> Result<WebSam, JsValue> {
        let choice = match backend.as_str() {
            "auto" => BackendChoice::Auto,
            "webgpu" => BackendChoice::Gpu,
            "cpu" => BackendChoice::Cpu,
            other => {
                return Err(js_err(format!(
                    "backend \"{other}\": use \"auto\", \"webgpu\" or \"cpu\""
                )))
            }
        };
        let precision = match precision.as_str() {
            "f32" => Precision::F32,
            "f16" => Precision::F16,
            other => {
                return Err(js_err(format!(
                    "precision \"{other}\": use \"f32\" or \"f16\""
                )))
            }
        };
        // The bytes stay in JavaScript; each tensor is copied in as the model takes it.
        let weights = Weights::from_source(Arc::new(JsBytes(weights))).map_err(js_err)?;
        let (predictor, why_not) = Predictor::with_precision(weights, choice, precision)
            .await
            .map_err(js_err)?;
        let shared = Shared {
            sam2: predictor.is_sam2(),
            backend: Cell::new(predictor.backend()),
            adapter: RefCell::new(predictor.adapter_name()),
            precision: Cell::new(predictor.precision()),
            predictor: RefCell::new(Some(predictor)),
            image: RefCell::new(None),
            generation: RefCell::new(None),
            training_objects: RefCell::new(Vec::new()),
            training: RefCell::new(None),
        };
        Ok(WebSam {
            shared: Rc::new(shared),
            fallback_reason: why_not.map(|e| e.to_string()),
        })
    }

    /// "webgpu" or "cpu": the backend in use.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        match self.shared.backend.get() {
            Backend::Gpu => "webgpu".into(),
            Backend::Cpu => "cpu".into(),
        }
    }

    /// "sam2" for a SAM 2 checkpoint, else "sam" (SAM, MobileSAM).
    #[wasm_bindgen(getter)]
    pub fn family(&self) -> String {
        if self.shared.sam2 { "sam2" } else { "sam" }.into()
    }

    /// "f16" when the WebGPU model runs in f16, else "f32".
    #[wasm_bindgen(getter)]
    pub fn precision(&self) -> String {
        self.shared.precision.get().name().into()
    }

    /// The WebGPU adapter in use, as the browser names it; `undefined` on the CPU.
    #[wasm_bindgen(getter, js_name = adapterName)]
    pub fn adapter_name(&self) -> Option<String> {
        self.shared.adapter.borrow().clone()
    }

    /// Why `auto` runs on the CPU (no WebGPU adapter, a software one, device refused);
    /// `undefined` otherwise.
    #[wasm_bindgen(getter, js_name = fallbackReason)]
    pub fn fallback_reason(&self) -> Option<String> {
        self.fallback_reason.clone()
    }

    /// Embeds an RGBA image (`width * height * 4` bytes, as `ImageData` holds it), calling
    /// `on_progress(done, steps)` as the encoder's steps (SAM ViT's blocks) complete.
    #[wasm_bindgen(js_name = setImage)]
    pub fn set_image(
        &self,
        rgba: Vec<u8>,
        width: u32,
        height: u32,
        on_progress: Option<js_sys::Function>,
    ) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            let image =
                RgbImage::from_rgba(width as usize, height as usize, &rgba).map_err(js_err)?;
            shared.stop_generation().await;
            *shared.image.borrow_mut() = None;
            let mut progress = |done: usize, steps: usize| {
                if let Some(f) = &on_progress {
                    // A throwing callback is the caller's: it does not stop the encode.
                    let _ = f.call2(
                        &JsValue::NULL,
                        &JsValue::from(done as u32),
                        &JsValue::from(steps as u32),
                    );
                }
            };
            shared
                .call(async |p| p.set_image_with_progress(&image, &mut progress).await)
                .await?;
            *shared.image.borrow_mut() = Some(image);
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Sets an embedding computed elsewhere: `1 * 256 * 64 * 64` floats, for an image of
    /// `width x height` pixels; SAM 2's with its high-resolution features (`high_res_feats`:
    /// `32 * 256 * 256` and `64 * 128 * 128` floats).
    #[wasm_bindgen(js_name = setEmbedding)]
    pub fn set_embedding(
        &self,
        data: Vec<f32>,
        width: u32,
        height: u32,
        high_res_0: Option<Vec<f32>>,
        high_res_1: Option<Vec<f32>>,
    ) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            let frame = shared.frame(width, height)?;
            let side = crate::model::config::EMBEDDING_SIDE;
            let dim = crate::model::config::EMBED_DIM;
            let features = tensor_of(data, [1, dim, side, side])?;
            let embedding = match (high_res_0, high_res_1) {
                (None, None) => ImageEmbedding::new(features, frame),
                (Some(s0), Some(s1)) => {
                    let s0 = tensor_of(s0, [1, dim / 8, 4 * side, 4 * side])?;
                    let s1 = tensor_of(s1, [1, dim / 4, 2 * side, 2 * side])?;
                    ImageEmbedding::sam2(features, [s0, s1], frame)
                }
                _ => Err(crate::Error::invalid(
                    "SAM 2's embedding has two high-resolution maps: give both or neither",
                )),
            }
            .map_err(js_err)?;
            shared.set_embedding(embedding).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Sets an embedding from a file's bytes, for an image of `width x height`: `.npy`
    /// (float32 or float16, `[1, 256, 64, 64]`, as the official demo's files and
    /// `getEmbeddingFile` hold SAM's) or SAM 2's `.npz` (`image_embed`, `high_res_feats_0`,
    /// `high_res_feats_1`, as `np.savez` and `websam embed` write it).
    #[wasm_bindgen(js_name = setEmbeddingFile)]
    pub fn set_embedding_file(&self, bytes: Vec<u8>, width: u32, height: u32) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            let frame = shared.frame(width, height)?;
            let embedding = ImageEmbedding::from_file_bytes(&bytes, frame).map_err(js_err)?;
            shared.set_embedding(embedding).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The embedding of the image set: `{ data: Float32Array(256*64*64), width, height }`,
    /// SAM 2's with `highRes: [Float32Array(32*256*256), Float32Array(64*128*128)]`.
    #[wasm_bindgen(js_name = getEmbedding)]
    pub fn get_embedding(&self) -> Result<JsValue, JsValue> {
        self.with_embedding(|e, obj| {
            set(
                obj,
                "data",
                &Float32Array::from(e.to_vec().map_err(js_err)?.as_slice()),
            )?;
            if let Some(maps) = &e.high_res {
                let list = Array::new();
                for m in maps {
                    let v: Vec<f32> = m.flatten_all().and_then(|t| t.to_vec1()).map_err(js_err)?;
                    list.push(&Float32Array::from(v.as_slice()));
                }
                set(obj, "highRes", &list)?;
            }
            Ok(())
        })
    }

    /// The embedding of the image set as a file's bytes: `{ data: Uint8Array, width, height }`,
    /// `format` "npy" for SAM, "npz" for SAM 2 (what `setEmbeddingFile` and `websam decode`
    /// read).
    #[wasm_bindgen(js_name = getEmbeddingFile)]
    pub fn get_embedding_file(&self, format: String) -> Result<JsValue, JsValue> {
        let wanted = if self.shared.sam2 { "npz" } else { "npy" };
        if format != wanted {
            return Err(js_err(if self.shared.sam2 {
                format!("format \"{format}\": SAM 2's embedding is three arrays, saved as \"npz\"")
            } else {
                format!("format \"{format}\": SAM's embedding is one array, saved as \"npy\"")
            }));
        }
        self.with_embedding(|e, obj| {
            let bytes = if self.shared.sam2 {
                e.to_npz_bytes()
            } else {
                e.to_npy_bytes()
            };
            set(
                obj,
                "data",
                &Uint8Array::from(bytes.map_err(js_err)?.as_slice()),
            )
        })
    }

    /// `{ width, height }` of the image set, with what `fill` adds from its embedding.
    fn with_embedding(
        &self,
        fill: impl FnOnce(&ImageEmbedding, &Object) -> Result<(), JsValue>,
    ) -> Result<JsValue, JsValue> {
        let guard = self.shared.predictor.borrow();
        let p = guard.as_ref().ok_or_else(busy)?;
        let e = p.embedding().map_err(js_err)?;
        let (h, w) = e.frame.original;
        let obj = Object::new();
        fill(e, &obj)?;
        set(&obj, "width", &JsValue::from(w as u32))?;
        set(&obj, "height", &JsValue::from(h as u32))?;
        Ok(obj.into())
    }

    /// Destroys the WebGPU device as a browser does when it loses it (driver reset, GPU
    /// process crash), so that tests can check that the next call recovers. No effect on the
    /// CPU backend.
    #[wasm_bindgen(js_name = destroyDeviceForTesting)]
    pub fn destroy_device_for_testing(&self) -> Result<(), JsValue> {
        let guard = self.shared.predictor.borrow();
        let p = guard.as_ref().ok_or_else(busy)?;
        if let Some(gpu) = p.gpu() {
            gpu.ctx().device().destroy();
        }
        Ok(())
    }

    /// What this model holds, for long-session checks: `{ wasmMemoryBytes, heapInUseBytes,
    /// gpuPoolBytes }` (the module's linear memory, which never shrinks; the bytes allocated in
    /// it and not freed, of the whole module; the GPU engine's buffer pool, 0 on the CPU). Read
    /// between calls.
    #[wasm_bindgen(js_name = memoryStats)]
    pub fn memory_stats(&self) -> Result<JsValue, JsValue> {
        let guard = self.shared.predictor.borrow();
        let p = guard.as_ref().ok_or_else(busy)?;
        let gpu = p.gpu().map_or(0, |g| g.ctx().pool().allocated_bytes());
        let wasm = core::arch::wasm32::memory_size(0) as f64 * 65536.0;
        let out = Object::new();
        set(&out, "wasmMemoryBytes", &JsValue::from(wasm))?;
        let heap = HEAP_IN_USE.load(Ordering::Relaxed) as f64;
        set(&out, "heapInUseBytes", &JsValue::from(heap))?;
        let peak = HEAP_PEAK.load(Ordering::Relaxed) as f64;
        set(&out, "heapPeakBytes", &JsValue::from(peak))?;
        set(&out, "gpuPoolBytes", &JsValue::from(gpu as f64))?;
        Ok(out.into())
    }

    /// Sends the CPU path's matrix products to the relaxed-SIMD kernels module (`on`), or keeps
    /// them on this module's portable kernel ([`crate::gemm`]). The JS side turns it on once
    /// every thread that runs products has that module, instantiated on this memory, as
    /// `websamKernels` (`websamKernelsMt` in the threaded build) in its global scope.
    #[wasm_bindgen(js_name = setRelaxedSimd)]
    pub fn set_relaxed_simd(on: bool) {
        crate::gemm::set_relaxed_simd(on);
    }

    /// This instance's memory (which the kernels module imports; a new one after a reset).
    #[wasm_bindgen(js_name = wasmMemory)]
    pub fn wasm_memory() -> JsValue {
        wasm_bindgen::memory()
    }

    /// Routes this module's panics to `handler` (called with the panic's message, then the
    /// module traps): the JS wrapper rejects the call in flight with it and replaces the
    /// module's instance before the next call. Set once per instance.
    #[wasm_bindgen(js_name = setPanicHandler)]
    pub fn set_panic_handler(handler: js_sys::Function) {
        PANIC_HANDLER.with(|h| *h.borrow_mut() = Some(handler));
        std::panic::set_hook(Box::new(|info| {
            // One line: the panic's own message, then where it was raised.
            let payload = info.payload();
            let what = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a panic");
            let message = match info.location() {
                Some(at) => format!("{what} at {}:{}", at.file(), at.line()),
                None => what.to_owned(),
            };
            PANIC_HANDLER.with(|h| {
                if let Ok(h) = h.try_borrow() {
                    if let Some(f) = h.as_ref() {
                        let _ = f.call1(&JsValue::NULL, &JsValue::from_str(&message));
                    }
                }
            });
        }));
    }

    /// Fails as an unforeseen bug would, so that tests can check that the wrapper survives it:
    /// "panic" panics inside the call's future; "oom" grows the memory until the browser
    /// refuses (a failed allocation aborts the module).
    #[wasm_bindgen(js_name = failForTesting)]
    pub fn fail_for_testing(&self, kind: String) -> Promise {
        future_to_promise(async move {
            match kind.as_str() {
                "panic" => panic!("a panic provoked for testing"),
                "oom" => {
                    let mut held: Vec<Vec<u8>> = Vec::new();
                    loop {
                        held.push(std::hint::black_box(Vec::with_capacity(1 << 30)));
                    }
                }
                other => Err(js_err(format!(
                    "failForTesting: \"{other}\"; use \"panic\" or \"oom\""
                ))),
            }
        })
    }

    /// Starts "segment everything" on the image set, with the generator's options as JSON
    /// (camelCase keys; see `GeneratorOptions`). Returns the progress as JSON. Steps follow
    /// with `generateStep`; one generation at a time (a new one replaces an unfinished one).
    #[wasm_bindgen(js_name = generateStart)]
    pub fn generate_start(&self, options: String) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            let options = GeneratorOptions::from_json(&options).map_err(js_err)?;
            shared.stop_generation().await;
            let image = shared.image.borrow().clone();
            let generator = {
                let guard = shared.predictor.borrow();
                let p = guard.as_ref().ok_or_else(busy)?;
                MaskGenerator::new(options, p, image).map_err(js_err)?
            };
            let progress = json_string(&generator.progress())?;
            *shared.generation.borrow_mut() = Some(generator);
            Ok(progress)
        })
    }

    /// Runs the next step of the generation (a crop's embedding or a batch of prompts):
    /// resolves to JSON `{ progress, done, masks }`, `masks` the records this batch kept
    /// (before de-duplication). A failed step ends the generation.
    #[wasm_bindgen(js_name = generateStep)]
    pub fn generate_step(&self) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            let mut g = shared
                .generation
                .borrow_mut()
                .take()
                .ok_or_else(|| js_err("no generation in progress: call generate first"))?;
            let kept = match shared.call(async |p| g.step(p).await).await {
                Ok(kept) => kept,
                Err(e) => {
                    let _ = shared.call(async |p| g.cancel(p).await).await;
                    return Err(e);
                }
            };
            let out = step_to_json(&g, &kept);
            *shared.generation.borrow_mut() = Some(g);
            Ok(JsValue::from_str(&out))
        })
    }

    /// The records of the finished generation, as JSON (the reference's `coco_rle` records).
    #[wasm_bindgen(js_name = generateResult)]
    pub fn generate_result(&self) -> Result<String, JsValue> {
        let g = self
            .shared
            .generation
            .borrow_mut()
            .take()
            .ok_or_else(|| js_err("no generation in progress"))?;
        match g.records() {
            Some(records) => Ok(records_to_json(records)),
            None => {
                *self.shared.generation.borrow_mut() = Some(g);
                Err(js_err(
                    "the generation is not finished: step it to the end first",
                ))
            }
        }
    }

    /// Stops the generation in progress (if any), leaving the model with the whole image.
    #[wasm_bindgen(js_name = generateCancel)]
    pub fn generate_cancel(&self) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            shared.stop_generation().await;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Adds an object to the next training run: its mask (`width * height` values, nonzero
    /// inside) on the image of `embedding` (`256 * 64 * 64` values; `undefined`: the image set
    /// now). Checked now: an empty mask or a size that is not the embedding's is an error.
    #[wasm_bindgen(js_name = trainAddObject)]
    pub fn train_add_object(
        &self,
        embedding: Option<Vec<f32>>,
        width: u32,
        height: u32,
        mask: Vec<u8>,
    ) -> Result<(), JsValue> {
        let frame = ImageFrame::new(height as usize, width as usize).map_err(js_err)?;
        let embedding = match embedding {
            Some(data) => {
                let side = crate::model::config::EMBEDDING_SIDE;
                let dim = crate::model::config::EMBED_DIM;
                let n = data.len();
                if n != dim * side * side {
                    return Err(js_err(format!(
                        "a training object's embedding of {n} values: give {}",
                        dim * side * side
                    )));
                }
                let t = candle_core::Tensor::from_vec(
                    data,
                    (1, dim, side, side),
                    &candle_core::Device::Cpu,
                )
                .map_err(js_err)?;
                ImageEmbedding::new(t, frame).map_err(js_err)?
            }
            None => {
                let guard = self.shared.predictor.borrow();
                let p = guard.as_ref().ok_or_else(busy)?;
                let e = p.embedding().map_err(js_err)?.clone();
                if e.frame != frame {
                    return Err(js_err(format!(
                        "a training object's mask of {width}x{height} for the image set, which is {}x{}",
                        e.frame.original.1, e.frame.original.0
                    )));
                }
                e
            }
        };
        let truth = Truth::new(mask, frame).map_err(js_err)?;
        self.shared
            .training_objects
            .borrow_mut()
            .push(crate::train::Object { embedding, truth });
        Ok(())
    }

    /// Starts a training run of the prompt encoder and decoder (from the model as it is now) on
    /// the objects added, with options as JSON (`{ steps, batch, lr, seed }`). Resolves to
    /// JSON `{ step: 0, steps, objects }`. Steps follow with `trainStep`.
    #[wasm_bindgen(js_name = trainStart)]
    pub fn train_start(&self, options: String) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            let options: RunOptions = serde_json::from_str(&options)
                .map_err(|e| js_err(format!("training options: {e}")))?;
            let objects = std::mem::take(&mut *shared.training_objects.borrow_mut());
            let run = {
                let guard = shared.predictor.borrow();
                let p = guard.as_ref().ok_or_else(busy)?;
                Run::new(p.weights(), objects, options).map_err(js_err)?
            };
            let out = serde_json::json!({
                "step": 0, "steps": options.steps, "objects": run.objects(),
            });
            *shared.training.borrow_mut() = Some(run);
            Ok(JsValue::from_str(&out.to_string()))
        })
    }

    /// Runs the next training step: resolves to JSON `{ step, steps, loss, lr, done }` (the
    /// loss of the step's batch before it). A failed step ends the run.
    #[wasm_bindgen(js_name = trainStep)]
    pub fn train_step(&self) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            let mut run = shared
                .training
                .borrow_mut()
                .take()
                .ok_or_else(|| js_err("no training run in progress: call trainStart first"))?;
            let lr = run.schedule().lr_at(run.steps_done());
            let loss = run.step().map_err(js_err)?;
            let out = serde_json::json!({
                "step": run.steps_done(), "steps": run.options().steps, "loss": loss, "lr": lr,
                "done": run.is_done(),
            });
            *shared.training.borrow_mut() = Some(run);
            Ok(JsValue::from_str(&out.to_string()))
        })
    }

    /// Ends the training run: the model decodes with the trained prompt encoder and decoder
    /// from now on (the image stays set).
    #[wasm_bindgen(js_name = trainFinish)]
    pub fn train_finish(&self) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            let run = shared
                .training
                .borrow_mut()
                .take()
                .ok_or_else(|| js_err("no training run in progress"))?;
            let tuned = run.trainer().weights().map_err(js_err)?;
            drop(run);
            shared.call(async |p| p.set_tensors(tuned).await).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// What a training run did to the objects added (which it consumes), measured on the model
    /// as it is now, training nothing: resolves to `train::objective` with `seed` (the loss of
    /// seeded first prompts), the same for the same weights, objects and seed.
    #[wasm_bindgen(js_name = trainingLoss)]
    pub fn training_loss(&self, seed: u32) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            let objects = std::mem::take(&mut *shared.training_objects.borrow_mut());
            let guard = shared.predictor.borrow();
            let p = guard.as_ref().ok_or_else(busy)?;
            let loss =
                crate::train::objective(p.weights(), &objects, u64::from(seed)).map_err(js_err)?;
            Ok(JsValue::from_f64(f64::from(loss)))
        })
    }

    /// Drops the training run in progress and the objects added, the model as it was.
    #[wasm_bindgen(js_name = trainCancel)]
    pub fn train_cancel(&self) {
        self.shared.training.borrow_mut().take();
        self.shared.training_objects.borrow_mut().clear();
    }

    /// Whether the model decodes with trained tensors (`trainFinish`) rather than the
    /// checkpoint's.
    #[wasm_bindgen(getter)]
    pub fn tuned(&self) -> Result<bool, JsValue> {
        let guard = self.shared.predictor.borrow();
        let p = guard.as_ref().ok_or_else(busy)?;
        Ok(p.is_tuned())
    }

    /// Goes back to the checkpoint's prompt encoder and decoder (the image stays set).
    #[wasm_bindgen(js_name = revertTraining)]
    pub fn revert_training(&self) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            shared.call(async |p| p.revert_tensors().await).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The model's checkpoint as it decodes now (with any trained tensors), as safetensors
    /// bytes under the official keys: a file every loader of websam reads.
    #[wasm_bindgen(js_name = checkpoint)]
    pub fn checkpoint(&self) -> Result<Uint8Array, JsValue> {
        let guard = self.shared.predictor.borrow();
        let p = guard.as_ref().ok_or_else(busy)?;
        let bytes = p.weights().to_safetensors_bytes().map_err(js_err)?;
        Ok(Uint8Array::from(bytes.as_slice()))
    }

    /// Masks for a prompt in image pixels: `points` flat `[x, y, label, ...]` (label 1, 0 or
    /// -1), `box` `[x0, y0, x1, y1]`, `mask_input` a previous `lowResLogits` channel (256*256),
    /// the masks cleaned of holes and sprinkles up to `max_hole_area` / `max_sprinkle_area`
    /// low-res pixels (0: off; `SAM2ImagePredictor`'s). Resolves to `{ masks: [{data, width,
    /// height, score, stabilityScore}], best, lowResLogits, iou }`.
    pub fn predict(
        &self,
        points: Option<Vec<f32>>,
        bbox: Option<Vec<f32>>,
        mask_input: Option<Vec<f32>>,
        multimask: bool,
        max_hole_area: Option<f64>,
        max_sprinkle_area: Option<f64>,
    ) -> Promise {
        let shared = Rc::clone(&self.shared);
        future_to_promise(async move {
            let prompt = Prompt::from_flat(points, bbox, mask_input, multimask).map_err(js_err)?;
            let cleanup = MaskCleanup::new(
                max_hole_area.unwrap_or(0.0),
                max_sprinkle_area.unwrap_or(0.0),
            )
            .map_err(js_err)?;
            let (pred, masks) = shared
                .call(async |p| p.predict_with(&prompt, &cleanup).await)
                .await?;
            let out = Object::new();
            let list = Array::new();
            for m in &masks {
                let o = Object::new();
                set(&o, "data", &Uint8Array::from(m.data.as_slice()).into())?;
                set(&o, "width", &JsValue::from(m.width as u32))?;
                set(&o, "height", &JsValue::from(m.height as u32))?;
                set(&o, "score", &JsValue::from(m.score))?;
                set(&o, "stabilityScore", &JsValue::from(m.stability_score))?;
                list.push(&o);
            }
            set(&out, "masks", &list)?;
            set(&out, "best", &JsValue::from(pred.best() as u32))?;
            set(
                &out,
                "lowResLogits",
                &Float32Array::from(pred.low_res_logits.as_slice()).into(),
            )?;
            set(&out, "iou", &Float32Array::from(pred.iou.as_slice()).into())?;
            Ok(out.into())
        })
    }
}

/// `data` as a tensor of `shape` when it has that many values; else as it is, for the
/// embedding's own check to name its size.
fn tensor_of(data: Vec<f32>, shape: [usize; 4]) -> Result<candle_core::Tensor, JsValue> {
    let n = data.len();
    let t = candle_core::Tensor::from_vec(data, n, &candle_core::Device::Cpu).map_err(js_err)?;
    if n == shape.iter().product::<usize>() {
        t.reshape(shape.as_slice()).map_err(js_err)
    } else {
        Ok(t)
    }
}

fn json_string(v: &impl serde::Serialize) -> Result<JsValue, JsValue> {
    serde_json::to_string(v)
        .map(|s| JsValue::from_str(&s))
        .map_err(js_err)
}
