//! Hostile files and values: each is refused with a clear error, never a panic, an abort, a
//! hang or an allocation past what the file holds. Files are built here, byte by byte, so each
//! test shows exactly what it feeds.

mod common;

use std::io::{Cursor, Write};

use common::fixture;
use websam::image::{ImageFrame, RgbImage};
use websam::model::sam::{read_npy_f32, ImageEmbedding, Prompt, Sam};
use websam::model::weights::Weights;

/// A PyTorch-style checkpoint: `archive/data.pkl` and `archive/data/<key>` storages, stored.
fn pth_zip(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    for (key, bytes) in storages {
        zip.start_file(format!("archive/data/{key}"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Pickle opcodes, as `pickletools` names them.
mod op {
    pub const PROTO2: &[u8] = &[0x80, 2];
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const APPEND: u8 = b'a';
    pub const SETITEM: u8 = b's';
    pub const REDUCE: u8 = b'R';
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const BINPUT: u8 = b'q';
    pub const BINGET: u8 = b'h';
    pub const STOP: u8 = b'.';
}

fn unicode(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((s.len() as u32).to_le_bytes());
    v.extend(s.as_bytes());
    v
}

fn global(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

fn int(i: i32) -> Vec<u8> {
    let mut v = vec![b'J'];
    v.extend(i.to_le_bytes());
    v
}

/// `{key: _rebuild_tensor_v2(storage(FloatStorage, "0"), offset, size, stride, False, ())}`.
fn tensor_pickle(key: &str, offset: i32, size: &[i32], stride: &[i32]) -> Vec<u8> {
    let mut p = op::PROTO2.to_vec();
    p.push(op::EMPTY_DICT);
    p.extend(unicode(key));
    p.extend(global("torch._utils", "_rebuild_tensor_v2"));
    p.push(op::MARK);
    // The persistent id: ("storage", FloatStorage, "0", "cpu", numel).
    p.push(op::MARK);
    p.extend(unicode("storage"));
    p.extend(global("torch", "FloatStorage"));
    p.extend(unicode("0"));
    p.extend(unicode("cpu"));
    p.extend(int(4));
    p.push(op::TUPLE);
    p.push(op::BINPERSID);
    p.extend(int(offset));
    for dims in [size, stride] {
        p.push(op::MARK);
        for &d in dims {
            p.extend(int(d));
        }
        p.push(op::TUPLE);
    }
    p.push(op::NEWFALSE);
    p.push(op::EMPTY_TUPLE);
    p.push(op::TUPLE);
    p.push(op::REDUCE);
    p.push(op::SETITEM);
    p.push(op::STOP);
    p
}

fn err_of<T>(r: websam::Result<T>) -> String {
    match r {
        Ok(_) => panic!("a hostile input was accepted"),
        Err(e) => e.to_string(),
    }
}

const FOUR_FLOATS: &[u8] = &[0; 16];

#[test]
fn a_well_formed_hand_built_checkpoint_loads() {
    // The builder itself is right: the hostile variants below differ from this in one thing.
    let bytes = pth_zip(
        &tensor_pickle("w", 0, &[2, 2], &[2, 1]),
        &[("0", FOUR_FLOATS)],
    );
    let w = Weights::from_pth_bytes(&bytes).unwrap();
    assert_eq!(w.shape_of("w"), Some(vec![2, 2]));
    let w = Weights::from_pth_bytes(&pth_zip(
        &tensor_pickle("w", 1, &[3], &[1]),
        &[("0", FOUR_FLOATS)],
    ))
    .unwrap();
    assert_eq!(w.shape_of("w"), Some(vec![3]));
}

#[test]
fn a_pickle_that_calls_os_system_is_refused_by_name() {
    // {"w": os.system("echo pwned")}: GLOBAL + REDUCE, what a malicious .pth uses.
    let mut p = op::PROTO2.to_vec();
    p.push(op::EMPTY_DICT);
    p.extend(unicode("w"));
    p.extend(global("os", "system"));
    p.extend(unicode("echo pwned"));
    p.push(op::TUPLE1);
    p.push(op::REDUCE);
    p.push(op::SETITEM);
    p.push(op::STOP);
    let msg = err_of(Weights::from_bytes(&pth_zip(&p, &[])));
    assert!(msg.contains("`os.system`"), "{msg}");
    assert!(msg.contains("refused"), "{msg}");
    // Any module outside the tensor-rebuild set, wherever it sits.
    for (module, name) in [
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("torch", "load"),
    ] {
        let mut p = op::PROTO2.to_vec();
        p.extend(global(module, name));
        p.push(op::STOP);
        let msg = err_of(Weights::from_pth_bytes(&pth_zip(&p, &[])));
        assert!(msg.contains(&format!("`{module}.{name}`")), "{msg}");
    }
}

#[test]
fn deeply_nested_and_exponential_pickles_are_refused() {
    // [[[[...]]]] 100,000 deep: dropping such an object recurses once per level.
    let depth = 100_000;
    let mut p = op::PROTO2.to_vec();
    p.extend(std::iter::repeat_n(op::EMPTY_LIST, depth));
    p.extend(std::iter::repeat_n(op::APPEND, depth - 1));
    p.push(op::STOP);
    let msg = err_of(Weights::from_pth_bytes(&pth_zip(&p, &[])));
    assert!(msg.contains("nests deeper than"), "{msg}");

    // A list holding two copies of the memoised list before it, 60 times over: 2^60 objects
    // from 500 bytes, as the reader copies memoised objects on every get.
    let mut p = op::PROTO2.to_vec();
    p.push(op::EMPTY_LIST);
    p.extend([op::BINPUT, 0]);
    for _ in 0..60 {
        p.push(op::EMPTY_LIST);
        p.extend([op::BINGET, 0, op::APPEND, op::BINGET, 0, op::APPEND]);
        p.extend([op::BINPUT, 0]);
    }
    p.push(op::STOP);
    let msg = err_of(Weights::from_pth_bytes(&pth_zip(&p, &[])));
    assert!(msg.contains("objects"), "{msg}");

    // A string that claims 4 GB in a file of a few hundred bytes.
    let mut p = op::PROTO2.to_vec();
    p.push(b'X');
    p.extend(u32::MAX.to_le_bytes());
    p.extend(b"short");
    let msg = err_of(Weights::from_pth_bytes(&pth_zip(&p, &[])));
    assert!(msg.contains("needs 4294967295 bytes"), "{msg}");
}

#[test]
fn tensors_that_reach_past_their_storage_or_overflow_are_refused() {
    type Case<'a> = (&'a str, i32, &'a [i32], &'a [i32], &'a str);
    let cases: [Case; 4] = [
        (
            "past the end",
            2,
            &[2, 2],
            &[2, 1],
            "needs 24 bytes of storage",
        ),
        ("negative offset", -1, &[2], &[1], "offset is -1"),
        ("negative size", 0, &[-2, 2], &[2, 1], "size is -2"),
        (
            "overflowing strides",
            0,
            &[i32::MAX, i32::MAX, i32::MAX, i32::MAX],
            &[i32::MAX, i32::MAX, i32::MAX, 1],
            "overflow",
        ),
    ];
    for (what, offset, size, stride, want) in cases {
        let bytes = pth_zip(
            &tensor_pickle("w", offset, size, stride),
            &[("0", FOUR_FLOATS)],
        );
        let msg = err_of(Weights::from_pth_bytes(&bytes));
        assert!(msg.contains(want), "{what}: {msg}");
        assert!(
            msg.contains("`w`"),
            "{what}: the message names the tensor: {msg}"
        );
    }
    // A view that fits its storage but, repeated under many keys, asks for far more memory
    // than the file holds (stride 0 broadcasting one float to a million).
    let mut p = op::PROTO2.to_vec();
    p.push(op::EMPTY_DICT);
    for k in 0..50 {
        let one = tensor_pickle(&format!("w{k}"), 0, &[1000, 1000], &[0, 0]);
        // The dict's body only: between EMPTY_DICT and STOP.
        p.extend(&one[3..one.len() - 1]);
    }
    p.push(op::STOP);
    let msg = err_of(Weights::from_pth_bytes(&pth_zip(&p, &[("0", FOUR_FLOATS)])));
    assert!(msg.contains("twice the file"), "{msg}");
}

/// The offset of the central directory header of the zip's first entry.
fn central_header(zip: &[u8]) -> usize {
    zip.windows(4)
        .position(|w| w == b"PK\x01\x02")
        .expect("a central directory")
}

#[test]
fn zip_entries_that_claim_more_than_the_file_are_refused() {
    let good = pth_zip(
        &tensor_pickle("w", 0, &[2, 2], &[2, 1]),
        &[("0", FOUR_FLOATS)],
    );
    // data.pkl's sizes in the central directory (compressed at +20, uncompressed at +24) and
    // in its local header (+18, +22) set to 4 GB - 16, in a file of a few hundred bytes.
    let mut bytes = good.clone();
    let c = central_header(&bytes);
    for at in [c + 20, c + 24, 18, 22] {
        bytes[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    }
    let msg = err_of(Weights::from_pth_bytes(&bytes));
    assert!(
        msg.contains("PyTorch zip") || msg.contains("claims"),
        "{msg}"
    );
    // Only the uncompressed size lies.
    let mut bytes = good.clone();
    bytes[c + 24..c + 28].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let _ = err_of(Weights::from_pth_bytes(&bytes));
    // A storage entry truncated: the zip is cut short.
    let _ = err_of(Weights::from_pth_bytes(&good[..good.len() - 30]));
    // A flipped byte inside a stored entry: the CRC catches it.
    let mut bytes = good;
    let at = bytes.windows(5).position(|w| w == b"torch").unwrap();
    bytes[at] ^= 0x20;
    let _ = err_of(Weights::from_pth_bytes(&bytes));
}

fn safetensors_with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header.as_bytes());
    v.extend(data);
    v
}

#[test]
fn safetensors_headers_that_lie_are_refused() {
    let header = r#"{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,16]}}"#;
    let msg = err_of(Weights::from_bytes(&safetensors_with_header(
        header,
        FOUR_FLOATS,
    )));
    assert!(msg.contains("safetensors"), "{msg}");
    // Offsets past the data.
    let header = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,1600000000]}}"#;
    let _ = err_of(Weights::from_bytes(&safetensors_with_header(
        header,
        FOUR_FLOATS,
    )));
    // A header length of 2^63.
    let mut v = (1u64 << 63).to_le_bytes().to_vec();
    v.extend(b"{}");
    let _ = err_of(Weights::from_bytes(&v));
    // Shape whose product overflows 64 bits.
    let header =
        r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#;
    let _ = err_of(Weights::from_bytes(&safetensors_with_header(
        header,
        FOUR_FLOATS,
    )));
}

fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend((header.len() as u16).to_le_bytes());
    v.extend(header.as_bytes());
    v.extend(data);
    v
}

#[test]
fn npy_headers_that_lie_are_refused() {
    // The builder is right.
    let (shape, data) = read_npy_f32(&npy("<f4", "(2, 2)", FOUR_FLOATS)).unwrap();
    assert_eq!((shape, data), (vec![2, 2], vec![0.0; 4]));
    // 10^12 floats claimed, 4 present.
    let msg = err_of(read_npy_f32(&npy("<f4", "(1000000, 1000000)", FOUR_FLOATS)));
    assert!(msg.contains("more than the file"), "{msg}");
    // A product that overflows 64 bits.
    let msg = err_of(read_npy_f32(&npy(
        "<f4",
        "(4294967296, 4294967296, 16)",
        FOUR_FLOATS,
    )));
    assert!(msg.contains("more than the file"), "{msg}");
    // An embedding's shape with a fraction of its data.
    let _ = err_of(read_npy_f32(&npy("<f4", "(1, 256, 64, 64)", &[0; 4096])));
    // A header length past the end, and a dtype that is not a float.
    let mut short = npy("<f4", "(2,)", &[0; 8]);
    short.truncate(20);
    let _ = err_of(read_npy_f32(&short));
    let msg = err_of(read_npy_f32(&npy("<i8", "(2,)", &[0; 16])));
    assert!(msg.contains("float32"), "{msg}");
    // Found by fuzzing (fuzz/regressions/npy/nested-header-timeout): nested braces in the
    // header made the header parser run for over 10 s.
    let nested = npy("<f4',{{{{{{{{{{{{ 'x", "(2, 3)", &[0; 24]);
    // Refused by the pre-check, before the header parser sees it.
    let msg = err_of(read_npy_f32(&nested));
    assert!(msg.contains("nested"), "{msg}");
    // An embedding file holding NaN.
    let mut nan = Vec::new();
    for i in 0..256 * 64 * 64 {
        nan.extend(if i == 7 { f32::NAN } else { 0.5 }.to_le_bytes());
    }
    let frame = ImageFrame::new(480, 640).unwrap();
    let msg = err_of(ImageEmbedding::from_npy_bytes(
        &npy("<f4", "(1, 256, 64, 64)", &nan),
        frame,
    ));
    assert!(msg.contains("NaN (element 7)"), "{msg}");
}

/// CRC-32 (IEEE) of PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut v = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend(data);
    v.extend(&body);
    v.extend(crc32(&body).to_be_bytes());
    v
}

#[test]
fn an_image_header_of_50000_by_50000_is_refused_before_decoding() {
    let mut ihdr = 50_000u32.to_be_bytes().to_vec();
    ihdr.extend(50_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    // A zlib stream of a few bytes: the rows a decoder would allocate never come.
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    let msg = err_of(RgbImage::decode(&png));
    assert!(msg.contains("50000x50000"), "{msg}");
    // The same size through the values JS passes (setImage's width and height).
    let msg = err_of(RgbImage::from_rgba(50_000, 50_000, &[0; 16]));
    assert!(msg.contains("50000x50000"), "{msg}");
    // Sizes whose product overflows 32 and 64 bits.
    let _ = err_of(RgbImage::from_rgba(
        u32::MAX as usize,
        u32::MAX as usize,
        &[],
    ));
    let _ = err_of(RgbImage::from_rgba(usize::MAX, 2, &[]));
    // An embedding's frame: masks are made at this size.
    let _ = err_of(ImageFrame::new(50_000, 50_000));
}

#[test]
fn prompt_values_from_js_are_checked() {
    let frame = ImageFrame::new(480, 640).unwrap();
    let tensors = |p: Prompt| websam::model::sam::PromptTensors::new(&p, &frame).map(|_| ());
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    for (points, bbox) in [
        (Some(vec![nan, 10.0, 1.0]), None),
        (Some(vec![10.0, inf, 1.0]), None),
        (Some(vec![10.0, 10.0, nan]), None),
        (Some(vec![10.0, 10.0, 1.5]), None),
        (Some(vec![10.0, 10.0, 7.0]), None),
        (Some(vec![10.0, 10.0]), None),
        (Some(vec![1e30, 10.0, 1.0]), None),
        (None, Some(vec![0.0, 0.0, nan, 10.0])),
        (None, Some(vec![0.0, 0.0, 10.0])),
        (None, Some(vec![10.0, 10.0, 5.0, 5.0])),
    ] {
        let r = Prompt::from_flat(points.clone(), bbox.clone(), None, true).and_then(tensors);
        let _ = err_of(r);
    }
    let r = Prompt::from_flat(None, None, Some(vec![nan; 256 * 256]), false).and_then(tensors);
    let _ = err_of(r);
    let r = Prompt::from_flat(None, None, Some(vec![0.0; 17]), false).and_then(tensors);
    let _ = err_of(r);
}

/// The decoder's weights with one tensor replaced by `value` everywhere.
fn decoder_weights_with(key: &str, value: f32) -> Weights {
    let mut w = Weights::from_file(fixture("sam_decoder.safetensors")).unwrap();
    let shape = w.shape_of(key).unwrap();
    let t = candle_core::Tensor::full(value, shape, &candle_core::Device::Cpu).unwrap();
    w.insert(key, t).unwrap();
    w
}

#[test]
fn nan_and_infinite_weights_are_refused_at_load_naming_the_tensor() {
    // The IoU head's first layer all NaN: before this check, a ReLU written as max(0, x)
    // turned the NaNs into zeros and the model answered a plausible predicted IoU beside NaN
    // logits.
    for (key, value) in [
        ("mask_decoder.iou_prediction_head.layers.0.weight", f32::NAN),
        (
            "mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
            f32::INFINITY,
        ),
        (
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
            f32::NEG_INFINITY,
        ),
    ] {
        let w = decoder_weights_with(key, value);
        let msg = err_of(Sam::new(&w));
        assert!(msg.contains(&format!("`{key}`")), "{msg}");
        assert!(msg.contains("NaN or infinite"), "{msg}");
    }
    // The same through the file formats: safetensors bytes with a NaN.
    let w = decoder_weights_with("mask_decoder.iou_token.weight", f32::NAN);
    let bytes = w.to_safetensors_bytes().unwrap();
    let msg = err_of(Sam::from_bytes(&bytes));
    assert!(msg.contains("`mask_decoder.iou_token.weight`"), "{msg}");
}

#[test]
fn relu_keeps_nan_as_pytorch_does() {
    use websam::model::backend::{Activation, Backend};
    use websam::model::cpu::Cpu;
    let x = candle_core::Tensor::new(
        &[-1f32, 0.5, f32::NAN, f32::NEG_INFINITY],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let y: Vec<f32> = Cpu
        .activation(&x, Activation::Relu)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(&y[..2], &[0.0, 0.5]);
    assert!(y[2].is_nan(), "ReLU(NaN) = {}", y[2]);
    assert_eq!(y[3], 0.0);
    assert!(Activation::Relu.apply(f32::NAN).is_nan());
}

/// Found by fuzzing (fuzz/regressions/js_values/amg-downscale-pow-overflow): a crop layer's
/// `cropNPointsDownscaleFactor ^ layer` overflowed. Python's integers give 0 points there.
#[test]
fn a_huge_downscale_factor_gives_empty_grids_not_an_overflow() {
    let opts = websam::amg::GeneratorOptions::from_json(
        r#"{"pointsPerSide": 32, "cropNLayers": 3, "cropNPointsDownscaleFactor": 4294967296}"#,
    )
    .unwrap();
    let grids = opts.point_grids().unwrap();
    assert_eq!(grids[0].len(), 32 * 32);
    assert!(grids[1..].iter().all(Vec::is_empty));
    let grids = websam::amg::build_all_layer_point_grids(32, 3, usize::MAX);
    assert_eq!(
        grids.iter().map(Vec::len).collect::<Vec<_>>(),
        [1024, 0, 0, 0]
    );
}
