//! Small GPUs: the engine opens its device at WebGPU's default limits, MobileSAM encodes and
//! decodes there (and at the least the engine says it needs) within the tolerances of
//! tests/gpu_parity.rs and tests/gpu_tiny_vit.rs, and anything over a limit fails with an error
//! that names the limit, never a panic or a validation error. Natively (lavapipe on machines
//! without a GPU); a missing adapter is a failure, never a skip.
#![cfg(not(target_arch = "wasm32"))]

mod common;
#[path = "common/gpu.rs"]
mod gpu;

use common::{cases, fixture, mask_mismatches, max_abs_diff, npy, npy_vec};
use websam::gpu::context::{check_buffer_size, minimum_limits, required_limits, BufferKind};
use websam::gpu::kernels::elementwise::{unary, Unary};
use websam::gpu::{GpuContext, GpuSam, GpuTensor, Recorder};
use websam::image::RgbImage;
use websam::model::sam::{ImageEmbedding, Sam};
use websam::model::weights::Weights;

/// As tests/gpu_parity.rs: GPU vs CPU and vs PyTorch, low-res logits and IoU.
const DECODE_TOLERANCE: f32 = 1e-3;
/// As tests/gpu_tiny_vit.rs: the GPU embedding vs PyTorch's.
const EMBEDDING_TOLERANCE: f32 = 2e-3;
/// As tests/gpu_tiny_vit.rs: full-size masks may differ only where the reference logit is this
/// close to 0.
const MASK_BAND: f32 = 1e-3;

const MIB: u64 = 1 << 20;

/// A context at exactly `limits`; no adapter is a failure.
fn ctx_at(limits: wgpu::Limits, what: &str) -> GpuContext {
    match GpuContext::with_limits_blocking(limits) {
        Ok(ctx) => ctx,
        Err(e) => panic!(
            "GPU tests need an adapter offering {what}: {e}. Run `./build.sh setup` (Mesa's lavapipe) or set WGPU_BACKEND"
        ),
    }
}

#[test]
fn the_engine_asks_for_webgpus_default_limits() {
    let defaults = wgpu::Limits::default();
    // Every need of the kernels and models is within the defaults.
    let minimum = minimum_limits();
    let mut over = Vec::new();
    minimum.check_limits_with_fail_fn(&defaults, false, |name, need, default| {
        over.push(format!("{name} {need} > {default}"))
    });
    assert!(over.is_empty(), "needs beyond WebGPU's defaults: {over:?}");

    // The ordinary context (the one every other GPU test uses) is at the defaults.
    let ctx = gpu::ctx();
    let (got, adapter) = (ctx.limits(), ctx.adapter_limits());
    println!(
        "{}: device maxStorageBufferBindingSize {} MiB, maxBufferSize {} MiB (the adapter offers {} and {} MiB)",
        ctx.adapter_name(),
        got.max_storage_buffer_binding_size / MIB,
        got.max_buffer_size / MIB,
        adapter.max_storage_buffer_binding_size / MIB,
        adapter.max_buffer_size / MIB
    );
    assert_eq!(
        got.max_storage_buffer_binding_size,
        defaults.max_storage_buffer_binding_size
    );
    assert_eq!(got.max_buffer_size, defaults.max_buffer_size);
    assert_eq!(
        got.max_compute_workgroup_storage_size,
        defaults.max_compute_workgroup_storage_size
    );
    assert_eq!(
        got.max_compute_workgroups_per_dimension,
        defaults.max_compute_workgroups_per_dimension
    );
    // On an adapter offering at least the defaults, what is asked is exactly the defaults.
    if defaults.check_limits(adapter) {
        assert_eq!(required_limits(adapter).unwrap(), defaults);
    }

    // An adapter short of a need is refused with the limit's name.
    let small = wgpu::Limits {
        max_compute_workgroup_storage_size: 8192,
        ..wgpu::Limits::default()
    };
    let err = required_limits(&small).unwrap_err().to_string();
    assert!(
        err.contains("maxComputeWorkgroupStorageSize 9216 (offers 8192)"),
        "{err}"
    );
}

/// The fixture MobileSAM on a device at `limits`: the encoder on the fixture image against
/// PyTorch's embedding, every decoder case against the CPU and PyTorch, and the full-size
/// masks from our embedding against PyTorch's. Returns the largest buffer it allocated.
fn mobile_sam_matches_pytorch(ctx: &GpuContext, label: &str) -> u64 {
    let all = cases();
    let weights = Weights::from_file(fixture("mobile_sam.pth")).unwrap();
    let gpu = pollster::block_on(GpuSam::upload(ctx, &weights)).expect("GPU model");
    let cpu = Sam::new(&weights).unwrap();

    let image = RgbImage::open(fixture(&all.image)).unwrap();
    let (emb, from_image) = pollster::block_on(gpu.embed(&image)).expect("GPU embed");
    let d_emb = max_abs_diff(&emb.to_vec().unwrap(), &npy_vec(&all.embedding));
    println!("{label}: embedding vs PyTorch {d_emb:.2e}");
    assert!(
        d_emb <= EMBEDDING_TOLERANCE,
        "{label}: embedding differs from PyTorch's by {d_emb:e}"
    );

    let mut failures = Vec::new();
    for case in &all.cases {
        let reference_emb = ImageEmbedding::new(npy("embedding.npy"), case.frame()).unwrap();
        let gemb = pollster::block_on(gpu.upload_embedding(&reference_emb)).unwrap();
        let prompt = case.prompt();
        let g = pollster::block_on(gpu.decode(&gemb, &prompt))
            .unwrap_or_else(|e| panic!("{label} {}: {e}", case.name));
        let c = cpu.decode(&reference_emb, &prompt).unwrap();
        let diffs = [
            max_abs_diff(&g.low_res_logits, &c.low_res_logits),
            max_abs_diff(&g.iou, &c.iou),
            max_abs_diff(&g.low_res_logits, &npy_vec(&case.low_res_logits)),
            max_abs_diff(&g.iou, &npy_vec(&case.iou)),
        ];
        println!(
            "{label} {:>22}: vs CPU logits {:.2e} iou {:.2e}; vs PyTorch logits {:.2e} iou {:.2e}",
            case.name, diffs[0], diffs[1], diffs[2], diffs[3]
        );
        if diffs.iter().any(|d| *d > DECODE_TOLERANCE || d.is_nan()) {
            failures.push(case.name.clone());
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: over {DECODE_TOLERANCE:e}: {failures:?}"
    );

    let mut checked = 0;
    for case in all.cases.iter().filter(|c| !c.in_1024_frame()) {
        let reference = npy_vec(case.logits.as_ref().unwrap());
        let (pred, planes) =
            pollster::block_on(gpu.decode_with_logits(&from_image, &case.prompt()))
                .unwrap_or_else(|e| panic!("{label} {}: {e}", case.name));
        let (h, w) = (case.orig_size[0], case.orig_size[1]);
        for (i, plane) in planes.iter().enumerate().take(pred.num_masks()) {
            let bad = mask_mismatches(plane, &reference[i * h * w..(i + 1) * h * w], MASK_BAND);
            assert_eq!(bad, 0, "{label} end to end {} mask {i}", case.name);
            checked += 1;
        }
    }
    assert!(checked > 0, "no full-resolution case in the fixtures");
    ctx.check().expect("no validation error or device loss");
    let largest = ctx.pool().largest_bytes();
    println!(
        "{label}: largest buffer {largest} bytes ({:.1} MiB), {:.1} MiB of storage buffers in all",
        largest as f64 / MIB as f64,
        ctx.pool().allocated_bytes() as f64 / MIB as f64
    );
    largest
}

/// Decoding from an embedding (the CLI's `decode`, a page given a `.npy`) needs far smaller
/// buffers than encoding: what a device with small bindings can still do.
#[test]
fn decoding_alone_needs_small_buffers() {
    let ctx = ctx_at(wgpu::Limits::default(), "WebGPU's default limits");
    let weights = Weights::from_file(fixture("mobile_sam.pth")).unwrap();
    let gpu = pollster::block_on(GpuSam::upload(&ctx, &weights)).expect("GPU model");
    let weights_largest = ctx.pool().largest_bytes();
    let all = cases();
    let case = all
        .cases
        .iter()
        .find(|c| !c.in_1024_frame() && c.input.multimask)
        .expect("a multimask case in a photograph's frame");
    let emb = ImageEmbedding::new(npy("embedding.npy"), case.frame()).unwrap();
    let gemb = pollster::block_on(gpu.upload_embedding(&emb)).unwrap();
    pollster::block_on(gpu.decode_with_logits(&gemb, &case.prompt())).unwrap();
    let largest = ctx.pool().largest_bytes();
    println!(
        "decoding {} ({}x{}, 3 masks at full size): largest buffer {largest} bytes ({:.1} MiB), largest weight {:.1} MiB",
        case.name,
        case.orig_size[0],
        case.orig_size[1],
        largest as f64 / MIB as f64,
        weights_largest as f64 / MIB as f64
    );
    assert!(largest <= 16 * MIB, "{largest} bytes");
}

/// At the least the engine says it needs (workgroup memory, bindings, 64 MiB buffers...), the
/// model encodes and decodes as PyTorch does: the needs are not understated. These are at or
/// below WebGPU's defaults everywhere (the test above), and every other GPU test runs at the
/// defaults, so this is the one full run at other limits.
#[test]
fn mobile_sam_encodes_and_decodes_at_the_engines_minimum_limits() {
    let ctx = ctx_at(minimum_limits(), "the engine's minimum limits");
    let largest = mobile_sam_matches_pytorch(&ctx, "minimum");
    let need = minimum_limits().max_storage_buffer_binding_size;
    assert!(
        largest <= need,
        "the largest buffer ({largest} bytes) is over the stated need ({need})"
    );
}

#[test]
fn an_allocation_over_a_limit_fails_naming_the_limit() {
    // At WebGPU's defaults: a 300 MiB tensor is over maxStorageBufferBindingSize (128 MiB).
    let ctx = ctx_at(wgpu::Limits::default(), "WebGPU's default limits");
    let err = GpuTensor::empty(&ctx, &[300, 1 << 18]).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, websam::Error::Gpu(_)), "{err:?}");
    assert!(
        msg.contains(
            "a 300 MiB buffer exceeds this device's maxStorageBufferBindingSize (128 MiB)"
        ),
        "{msg}"
    );
    // The same for an upload, and a buffer that is not a storage binding (a readback, the
    // parameters) is held to maxBufferSize.
    let data = vec![0f32; (129 * MIB / 4) as usize];
    let msg = GpuTensor::from_slice(&ctx, &data, &[data.len()])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("maxStorageBufferBindingSize (128 MiB)"),
        "{msg}"
    );
    let msg = check_buffer_size(ctx.limits(), 300 * MIB, BufferKind::Other)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("a 300 MiB buffer exceeds this device's maxBufferSize (256 MiB)"),
        "{msg}"
    );
    assert!(check_buffer_size(ctx.limits(), 128 * MIB, BufferKind::Storage).is_ok());
    // Nothing reached wgpu: no validation error, and the device still computes.
    ctx.check().expect("no validation error");
    let x = GpuTensor::from_slice(&ctx, &[-1.0, 2.0], &[2]).unwrap();
    let mut rec = Recorder::new(&ctx);
    let y = unary(&mut rec, &x, Unary::Relu).unwrap();
    rec.read(&y);
    assert_eq!(rec.finish_blocking().unwrap(), vec![vec![0.0, 2.0]]);

    // A device whose buffers are smaller than its bindings: maxBufferSize is named.
    let ctx = ctx_at(
        wgpu::Limits {
            max_buffer_size: MIB,
            ..wgpu::Limits::default()
        },
        "a 1 MiB maxBufferSize",
    );
    let msg = GpuTensor::empty(&ctx, &[3, 1 << 17])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("a 1.5 MiB buffer exceeds this device's maxBufferSize (1 MiB)"),
        "{msg}"
    );

    // The model on a device with 1 MiB bindings: the upload fails naming the limit.
    let ctx = ctx_at(
        wgpu::Limits {
            max_storage_buffer_binding_size: MIB,
            max_buffer_size: MIB,
            ..wgpu::Limits::default()
        },
        "1 MiB buffers",
    );
    let weights = Weights::from_file(fixture("mobile_sam.pth")).unwrap();
    let err = match pollster::block_on(GpuSam::upload(&ctx, &weights)) {
        Ok(_) => panic!("MobileSAM uploaded to a device with 1 MiB buffers"),
        Err(e) => e,
    };
    println!("{err}");
    assert!(
        err.to_string()
            .contains("exceeds this device's maxStorageBufferBindingSize (1 MiB)"),
        "{err}"
    );
    ctx.check().expect("no validation error");
}

#[test]
fn limits_beyond_the_adapter_are_refused_by_name() {
    let err = GpuContext::with_limits_blocking(wgpu::Limits {
        max_buffer_size: u64::MAX,
        ..wgpu::Limits::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("max_buffer_size"), "{err}");
}

/// A 24 MP photograph's three masks at full size (288 MB) exceed the default 128 MiB binding:
/// the engine resizes them one mask per buffer, and they equal the CPU's.
#[test]
fn full_size_masks_of_a_large_photograph_are_split_to_fit() {
    let ctx = ctx_at(wgpu::Limits::default(), "WebGPU's default limits");
    let weights = Weights::from_file(fixture("sam_decoder.safetensors")).unwrap();
    let gpu = pollster::block_on(GpuSam::upload(&ctx, &weights)).expect("GPU model");
    let cpu = Sam::new(&weights).unwrap();
    let frame = websam::image::ImageFrame::new(4000, 6000).unwrap();
    let emb = ImageEmbedding::new(npy("embedding.npy"), frame).unwrap();
    let prompt = websam::model::sam::Prompt {
        points: vec![websam::model::sam::Point {
            x: 3100.0,
            y: 2100.0,
            label: websam::model::sam::PointLabel::Positive,
        }],
        multimask: true,
        ..Default::default()
    };
    let gemb = pollster::block_on(gpu.upload_embedding(&emb)).unwrap();
    let (_, planes) = pollster::block_on(gpu.decode_with_logits(&gemb, &prompt)).unwrap();
    assert!(ctx.pool().largest_bytes() <= 128 * MIB);
    let want = cpu.decode(&emb, &prompt).unwrap();
    assert_eq!(planes.len(), 3);
    for (i, plane) in planes.iter().enumerate() {
        assert_eq!(plane.len(), 4000 * 6000);
        let cpu_plane = want.logits(i).unwrap();
        let worst = plane
            .iter()
            .zip(&cpu_plane)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= DECODE_TOLERANCE, "mask {i}: GPU vs CPU {worst}");
    }
}
