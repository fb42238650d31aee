//! Threads for the CPU path in the browser: the `threads` feature, built for wasm with atomics
//! and shared memory (`./build.sh build` makes it `websam_core_mt`), run by `SamWorker` on a
//! cross-origin isolated page.
//!
//! The pool is rayon's: each of its threads is a web worker (started by the JS side, which
//! instantiates the same module on the same memory and calls `runThread`). candle itself
//! sees one thread in wasm, so the work is split here, where it is large: matrix products by
//! rows, columns or batch ([`matmul`]), and the crate's own kernels by planes or rows.
//! Natively the crate's kernels run on rayon's global pool (`RAYON_NUM_THREADS`), the one
//! candle's GEMMs use, and [`matmul`] leaves the split to candle. In wasm without the feature
//! every helper runs its work as one piece.

use candle_core::Tensor;

use crate::error::Result;

/// Threads that split work: the pool's size once `initThreadPool` built it in a threaded wasm
/// build, else 1. (Not rayon's `current_num_threads`: asking rayon before the pool is built
/// would make its default, one-thread pool, and the real one could not be built after.)
pub fn count() -> usize {
    #[cfg(all(target_arch = "wasm32", feature = "threads"))]
    {
        pool::SIZE.load(std::sync::atomic::Ordering::Relaxed).max(1)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        rayon::current_num_threads()
    }
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    {
        1
    }
}

/// Runs `f(i)` for `i` in `0..n`, on the pool when there is one; results in order.
pub fn map<T: Send>(n: usize, f: impl Fn(usize) -> Result<T> + Sync + Send) -> Result<Vec<T>> {
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        use rayon::prelude::*;
        (0..n).into_par_iter().map(f).collect()
    }
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    {
        (0..n).map(f).collect()
    }
}

/// Calls `f` on each `chunk`-sized piece of `data` (the last may be shorter) with its index,
/// on the pool when there is one.
pub fn for_chunks<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        use rayon::prelude::*;
        if count() > 1 {
            data.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c));
            return;
        }
    }
    data.chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, c)| f(i, c));
}

/// Below this many multiply-adds a product runs as one piece.
const MIN_SPLIT_WORK: usize = 1 << 22;

/// `a.matmul(b)` (candle's semantics: `[.., M, K] x [.., K, N]`, same batch dims), split over
/// the pool by batch, rows of `a` or columns of `b`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    // Natively candle splits its GEMMs over the same pool.
    let threads = if cfg!(target_arch = "wasm32") {
        count()
    } else {
        1
    };
    let rank = a.rank();
    if threads == 1 || rank < 2 || b.rank() != rank {
        return product(a, b);
    }
    let (m, k) = (a.dim(rank - 2)?, a.dim(rank - 1)?);
    let n = b.dim(rank - 1)?;
    let batch: usize = a.dims()[..rank - 2].iter().product();
    if batch * m * n * k < MIN_SPLIT_WORK {
        return product(a, b);
    }
    // The output dim to split: the first (batch) one when it has a piece for every thread,
    // else the rows of `a` or the columns of `b`, whichever is longer.
    let dim = if rank > 2 && a.dim(0)? >= threads {
        0
    } else if m >= n {
        rank - 2
    } else {
        rank - 1
    };
    let size = if dim == rank - 1 { n } else { a.dim(dim)? };
    let step = size.div_ceil(threads.min(size));
    let pieces = map(size.div_ceil(step), |i| {
        let (start, len) = (i * step, step.min(size - i * step));
        Ok(if dim == rank - 2 {
            product(&a.narrow(dim, start, len)?, b)?
        } else if dim == rank - 1 {
            product(a, &b.narrow(dim, start, len)?)?
        } else {
            product(&a.narrow(0, start, len)?, &b.narrow(0, start, len)?)?
        })
    })?;
    Ok(Tensor::cat(&pieces, dim)?)
}

/// One piece of [`matmul`]: in wasm, f32 products of the same rank go to the crate's SIMD GEMM
/// ([`crate::gemm`]), the rest (and products autograd runs through) to candle.
fn product(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    // candle's own GEMM where autograd runs through the product (training).
    if cfg!(target_arch = "wasm32")
        && !a.track_op()
        && !b.track_op()
        && a.dtype() == candle_core::DType::F32
        && b.dtype() == candle_core::DType::F32
        && a.rank() >= 2
        && a.rank() == b.rank()
    {
        return Ok(a.apply_op2_no_bwd(b, &crate::gemm::Matmul)?);
    }
    Ok(a.matmul(b)?)
}

#[cfg(all(target_arch = "wasm32", feature = "threads"))]
mod pool {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::sync::{Mutex, OnceLock};

    use wasm_bindgen::prelude::*;

    /// The pool's size, 0 until it is built.
    pub(super) static SIZE: AtomicUsize = AtomicUsize::new(0);

    /// rayon's threads, handed from `initThreadPool` to the workers waiting in `runThread`.
    type Queue = (
        Mutex<Sender<rayon::ThreadBuilder>>,
        Mutex<Receiver<rayon::ThreadBuilder>>,
    );
    static QUEUE: OnceLock<Queue> = OnceLock::new();

    fn queue() -> &'static Queue {
        QUEUE.get_or_init(|| {
            let (tx, rx) = channel();
            (Mutex::new(tx), Mutex::new(rx))
        })
    }

    /// The body of a pool thread's worker, called once it instantiated this module on this
    /// memory: waits for one of the pool's threads and runs it (returns only when the pool
    /// shuts down). The workers must be waiting here before `initThreadPool`, which waits for
    /// every thread to start; a worker cannot start while the thread that made it is blocked.
    #[wasm_bindgen(js_name = runThread)]
    pub fn run_thread() {
        let thread = queue().1.lock().unwrap_or_else(|e| e.into_inner()).recv();
        if let Ok(thread) = thread {
            thread.run();
        }
    }

    /// Builds the global pool of `threads` threads, run by `threads` workers already waiting
    /// in `runThread`. Returns once they all run.
    #[wasm_bindgen(js_name = initThreadPool)]
    pub fn init_thread_pool(threads: usize) -> Result<(), JsValue> {
        if threads == 0 {
            return Err(JsError::new("websam threads: the pool needs at least one thread").into());
        }
        let tx = queue().0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .spawn_handler(move |thread| {
                tx.send(thread)
                    .map_err(|_| std::io::Error::other("the thread queue is closed"))
            })
            .build_global()
            .map_err(|e| JsValue::from(JsError::new(&format!("websam threads: {e}"))))?;
        SIZE.store(threads, Ordering::Relaxed);
        Ok(())
    }

    /// What a pool thread's worker instantiates: `[WebAssembly.Module, WebAssembly.Memory]`
    /// of this instance (the memory is shared).
    #[wasm_bindgen(js_name = threadResources)]
    pub fn thread_resources() -> js_sys::Array {
        js_sys::Array::of2(&wasm_bindgen::module(), &wasm_bindgen::memory())
    }
}
