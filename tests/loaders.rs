//! Checkpoint loading: every float dtype PyTorch saves, views with strides and offsets, 0-d
//! tensors, parameters, wrapped state dicts, bytes that are not a checkpoint, and Hugging Face
//! `SamModel` names in a `.pth`.

mod common;

use std::io::{Cursor, Write};

use common::fixture;
use websam::image::ImageFrame;
use websam::model::sam::{ImageEmbedding, Point, PointLabel, Prompt, Sam};
use websam::model::weights::{WeightFormat, Weights};
use websam::Error;

fn values(w: &Weights, key: &str) -> Vec<f32> {
    let shape = w.shape_of(key).unwrap_or_else(|| panic!("{key} missing"));
    w.get(key, &shape)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn check_against_expected(file: &str) {
    let got = Weights::from_file(fixture(file)).unwrap();
    let expected = Weights::from_file(fixture("loader/expected.safetensors")).unwrap();
    assert_eq!(got.keys(), expected.keys(), "{file}: keys");
    for key in expected.keys() {
        assert_eq!(
            got.shape_of(key),
            expected.shape_of(key),
            "{file}: {key} shape"
        );
        assert_eq!(values(&got, key), values(&expected, key), "{file}: {key}");
    }
}

#[test]
fn pth_dtypes_views_and_parameters_load_exactly() {
    check_against_expected("loader/dtypes.pth");
    let w = Weights::from_file(fixture("loader/dtypes.pth")).unwrap();
    // Integer buffers are not weights.
    assert!(!w.contains("h.count"));
    assert_eq!(w.shape_of("e.transposed"), Some(vec![6, 4]));
    assert_eq!(w.shape_of("i.scalar"), Some(vec![]));
    assert_eq!(values(&w, "i.scalar"), vec![2.5]);
}

#[test]
fn state_dict_wrapped_under_model_loads() {
    check_against_expected("loader/wrapped.pt");
}

#[test]
fn format_is_told_from_the_bytes() {
    let pth = std::fs::read(fixture("mobile_sam.pth")).unwrap();
    let st = std::fs::read(fixture("sam_decoder.safetensors")).unwrap();
    assert_eq!(
        WeightFormat::detect(&pth).unwrap(),
        WeightFormat::PyTorchZip
    );
    assert_eq!(
        WeightFormat::detect(&st).unwrap(),
        WeightFormat::Safetensors
    );
    for bad in [
        &b""[..],
        b"short",
        b"\x80\x02legacy pickle bytes",
        b"{\"json\": true}  ",
    ] {
        let err = Weights::from_bytes(bad).unwrap_err();
        assert!(matches!(err, Error::WeightFormat(_)), "{err}");
    }
    let legacy = Weights::from_bytes(b"\x80\x02legacy pickle bytes").unwrap_err();
    assert!(legacy.to_string().contains("legacy"), "{legacy}");
}

#[test]
fn missing_and_misshaped_keys_name_key_and_shapes() {
    let w = Weights::from_file(fixture("loader/expected.safetensors")).unwrap();
    let err = w.get("nope.weight", &[2, 3]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "weight `nope.weight` is missing from the checkpoint (expected shape [2, 3])"
    );
    let err = w.get("a.f32", &[5, 3]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "weight `a.f32` has shape [3, 5] but the model expects [5, 3]"
    );
}

#[test]
fn every_official_key_of_the_full_checkpoint_is_float32_after_load() {
    let w = Weights::from_file(fixture("mobile_sam.pth")).unwrap();
    // 439 entries in the state dict, minus the int64 `num_batches_tracked` counters.
    assert!(w.len() > 300, "{} tensors", w.len());
    assert!(
        w.has_prefix("image_encoder.")
            && w.has_prefix("prompt_encoder.")
            && w.has_prefix("mask_decoder.")
    );
    assert!(!w.keys().iter().any(|k| k.ends_with("num_batches_tracked")));
    let t = w.get("mask_decoder.iou_token.weight", &[1, 256]).unwrap();
    assert_eq!(t.dtype(), candle_core::DType::F32);
}

/// An embedding written as `.npy` reads back bit for bit, with the header NumPy writes for a
/// float32 `[1, 256, 64, 64]` C-order array.
#[test]
fn embedding_npy_round_trips() {
    use websam::image::ImageFrame;
    use websam::model::sam::ImageEmbedding;
    let bytes = std::fs::read(fixture("embedding.npy")).unwrap();
    let frame = ImageFrame::new(480, 640).unwrap();
    let e = ImageEmbedding::from_npy_bytes(&bytes, frame).unwrap();
    let written = e.to_npy_bytes().unwrap();
    let back = ImageEmbedding::from_npy_bytes(&written, frame).unwrap();
    assert_eq!(back.to_vec().unwrap(), e.to_vec().unwrap());
    assert_eq!(&written[..6], b"\x93NUMPY");
    let n = u16::from_le_bytes([written[8], written[9]]) as usize;
    let header = String::from_utf8_lossy(&written[10..10 + n]).replace(' ', "");
    for part in [
        "'descr':'<f4'",
        "'fortran_order':False",
        "'shape':(1,256,64,64",
    ] {
        assert!(header.contains(part), "header {header} lacks {part}");
    }
    assert_eq!(written.len(), 10 + n + 4 * 256 * 64 * 64);
}

/// A `torch.save` zip of `{key: tensor}` (f32, contiguous) in the form PyTorch writes: a
/// protocol-2 pickle of `_rebuild_tensor_v2` calls on persistent storages, one per tensor.
fn pth_of(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X'); // BINUNICODE
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, i: usize) {
        p.push(b'J'); // BININT
        p.extend(i32::try_from(i).unwrap().to_le_bytes());
    }
    let mut p = vec![0x80, 2, b'}', b'(']; // PROTO 2, EMPTY_DICT, MARK
    for (i, (key, shape, values)) in tensors.iter().enumerate() {
        unicode(&mut p, key);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(("); // GLOBAL, MARK args, MARK pid
        unicode(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        unicode(&mut p, &i.to_string());
        unicode(&mut p, "cpu");
        int(&mut p, values.len());
        p.extend(b"tQ"); // TUPLE, BINPERSID
        int(&mut p, 0);
        let strides: Vec<usize> = (0..shape.len())
            .map(|d| shape[d + 1..].iter().product())
            .collect();
        for dims in [shape, &strides] {
            p.push(b'(');
            for &d in dims {
                int(&mut p, d);
            }
            p.push(b't');
        }
        p.extend([0x89, b')', b't', b'R']); // NEWFALSE, EMPTY_TUPLE, TUPLE, REDUCE
    }
    p.extend(b"u."); // SETITEMS, STOP
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(&p).unwrap();
    for (i, (_, _, values)) in tensors.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), opts).unwrap();
        zip.write_all(bytemuck::cast_slice(values)).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// The decoder-only fixture saved under transformers' `SamModel` names as a `.pth`
/// (`pytorch_model.bin`'s container; both copies of the positional encoding, as
/// `convert_sam_to_hf.replace_keys` leaves them) loads under the official keys, and decodes as
/// the official file; a missing tensor is named by its HF key, a foreign key is refused.
#[test]
fn hf_sam_model_names_in_a_pth_load_under_the_official_keys() {
    let official = Weights::from_file(fixture("sam_decoder.safetensors")).unwrap();
    let names = common::vit::hf_keys();
    let mut tensors = Vec::new();
    for key in official.keys() {
        let shape = official.shape_of(key).unwrap();
        let v = values(&official, key);
        for name in names.all_names(key) {
            tensors.push((name, shape.clone(), v.clone()));
        }
    }
    assert!(tensors
        .iter()
        .any(|(k, ..)| k == "mask_decoder.upscale_conv1.weight"));
    let w = Weights::from_bytes(&pth_of(&tensors)).unwrap();
    assert!(w.is_hugging_face() && !official.is_hugging_face());
    assert_eq!(w.keys(), official.keys());
    for key in official.keys() {
        assert_eq!(values(&w, key), values(&official, key), "{key}");
    }

    let frame = ImageFrame::new(480, 640).unwrap();
    let emb =
        ImageEmbedding::from_npy_bytes(&std::fs::read(fixture("embedding.npy")).unwrap(), frame)
            .unwrap();
    let prompt = Prompt {
        points: vec![Point {
            x: 161.5,
            y: 150.25,
            label: PointLabel::Positive,
        }],
        multimask: true,
        ..Prompt::default()
    };
    let ours = Sam::new(&w).unwrap().decode(&emb, &prompt).unwrap();
    let reference = Sam::new(&official).unwrap().decode(&emb, &prompt).unwrap();
    assert_eq!(ours.low_res_logits, reference.low_res_logits);
    assert_eq!(ours.iou, reference.iou);

    let without: Vec<_> = tensors
        .iter()
        .filter(|(k, ..)| k != "mask_decoder.upscale_conv1.weight")
        .cloned()
        .collect();
    let w = Weights::from_bytes(&pth_of(&without)).unwrap();
    let err = match Sam::new(&w) {
        Ok(_) => panic!("a checkpoint without upscale_conv1 built"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("`mask_decoder.upscale_conv1.weight (official mask_decoder.output_upscaling.0.weight)` is missing"),
        "{err}"
    );

    let mut foreign = tensors.clone();
    foreign.push((
        "mask_decoder.upscale_conv3.weight".into(),
        vec![1],
        vec![0.0],
    ));
    let err = Weights::from_bytes(&pth_of(&foreign))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`mask_decoder.upscale_conv3.weight`"), "{err}");
}

/// A checkpoint in memory that counts the bytes read from it.
#[derive(Debug)]
struct Counted {
    bytes: Vec<u8>,
    read: std::sync::atomic::AtomicU64,
}

impl websam::model::source::ByteSource for Counted {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> websam::Result<()> {
        self.read
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.bytes.read_into(offset, buf)
    }
}

#[test]
fn loading_reads_each_tensor_once_as_the_model_takes_it() {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    for file in ["mobile_sam.pth", "sam_decoder.safetensors"] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        let len = bytes.len() as u64;
        let src = Arc::new(Counted {
            bytes,
            read: Default::default(),
        });
        let w = Weights::from_source(src.clone()).unwrap();
        // Indexing reads the zip's directory and pickle, or the safetensors header: no tensor.
        let indexed = src.read.load(Relaxed);
        assert!(
            indexed < len / 20,
            "{file}: {indexed} of {len} bytes read to index"
        );
        let stored: u64 = w
            .keys()
            .iter()
            .map(|k| {
                let n: usize = w.shape_of(k).unwrap().iter().product();
                (n * w.stored_dtype(k).unwrap().size_in_bytes()) as u64
            })
            .sum();
        Sam::new(&w).unwrap();
        let read = src.read.load(Relaxed) - indexed;
        // Every tensor the model takes is read as it is built, one at a time: about the file's
        // tensors (TinyViT's unused classifier head stays unread; the decoder's attentions are
        // taken twice, as linear layers and split by head).
        assert!(
            read * 10 <= stored * 13,
            "{file}: {read} bytes read for {stored} stored"
        );
        assert!(
            read > stored * 9 / 10,
            "{file}: {read} bytes read for {stored} stored"
        );
    }
}

#[test]
fn a_corrupted_tensor_is_an_error_naming_it_when_read() {
    // One byte in the middle of the file flipped (inside a storage): the index holds (sizes
    // are right), the CRC-32 that the zip keeps for the entry catches it when the tensor is
    // read, and only that tensor.
    let mut bytes = std::fs::read(fixture("mobile_sam.pth")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let w = Weights::from_bytes(&bytes).unwrap();
    let errors: Vec<(String, String)> = w
        .keys()
        .into_iter()
        .filter_map(|k| {
            let err = w.get(k, &w.shape_of(k).unwrap()).err()?;
            Some((k.to_owned(), err.to_string()))
        })
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (key, err) = &errors[0];
    assert!(err.contains(&format!("`{key}`")), "{err}");
    assert!(err.contains("CRC-32"), "{err}");
    // A file cut short is refused when indexed: every tensor's range is checked against it.
    let whole = std::fs::read(fixture("sam_decoder.safetensors")).unwrap();
    let err = Weights::from_bytes(&whole[..whole.len() - 100])
        .unwrap_err()
        .to_string();
    assert!(err.contains("safetensors"), "{err}");
}

/// A safetensors file of `shapes` (f32) whose data is a hole: the index is real, no data is
/// stored on disk.
fn sparse_safetensors(path: &std::path::Path, shapes: &[(&str, Vec<usize>)]) {
    let mut header = String::from("{");
    let mut at = 0usize;
    for (i, (key, shape)) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product::<usize>() * 4;
        let sep = if i == 0 { "" } else { "," };
        header += &format!(
            r#"{sep}"{key}":{{"dtype":"F32","shape":{shape:?},"data_offsets":[{at},{}]}}"#,
            at + n
        );
        at += n;
    }
    header.push('}');
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.set_len((8 + header.len() + at) as u64).unwrap();
}

#[test]
fn a_model_too_big_for_wasm32_on_the_cpu_is_refused_naming_webgpu() {
    use websam::predictor::check_fits_wasm32;
    let dir = tempfile::tempdir().unwrap();
    // The official ViT-H's tensors (2.56 GB of holes): it fits, as measured (docs/API.md).
    let keys: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_str(&std::fs::read_to_string(fixture("vit/keys_vit_h.json")).unwrap())
            .unwrap();
    let mut shapes: Vec<(&str, Vec<usize>)> =
        keys.iter().map(|(k, s)| (k.as_str(), s.clone())).collect();
    let path = dir.path().join("vit_h.safetensors");
    sparse_safetensors(&path, &shapes);
    check_fits_wasm32(&Weights::from_file(&path).unwrap()).unwrap();
    // Twice ViT-H's blocks' weights again under other keys: 5.1 GB of f32.
    let extra: Vec<(String, Vec<usize>)> = keys
        .iter()
        .filter(|(k, _)| k.starts_with("image_encoder.blocks."))
        .flat_map(|(k, s)| {
            [
                (format!("{k}.copy1"), s.clone()),
                (format!("{k}.copy2"), s.clone()),
            ]
        })
        .collect();
    shapes.extend(extra.iter().map(|(k, s)| (k.as_str(), s.clone())));
    let path = dir.path().join("bigger.safetensors");
    sparse_safetensors(&path, &shapes);
    let w = Weights::from_file(&path).unwrap();
    let gb = format!("{:.2} GB as f32", w.f32_bytes() as f64 / 1e9);
    let err = check_fits_wasm32(&w).unwrap_err().to_string();
    assert!(err.contains(&gb), "{gb}: {err}");
    assert!(
        err.contains("4.29 GB a wasm32 module") && err.contains("\"webgpu\""),
        "{err}"
    );
}
