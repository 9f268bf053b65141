//! Checkpoint readers against the official fixtures, and against hostile or
//! broken files built here byte by byte (no Python).
//!
//! Tolerance: none. Reading a checkpoint is a byte copy (and f16 → f32
//! widening is exact), so every comparison is of dtype, shape and raw bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use detris_io::fixtures;
use detris_io::pickle::{self, Value};
use detris_io::safetensors_file;
use detris_io::tensor::{DType, RawTensor, TensorMap};
use detris_io::torch_file::{load_checkpoint, load_state_dict, load_torchscript};

fn tiny(name: &str) -> PathBuf {
    fixtures::path(&format!("tiny/{name}"))
}

/// A fresh folder for this test's files, inside the target directory.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("checkpoints").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn reference_state_dict() -> TensorMap {
    safetensors_file::read(&tiny("state_dict.safetensors")).unwrap().0
}

fn assert_same_tensor(name: &str, got: &RawTensor, want: &RawTensor) {
    assert_eq!(got.dtype, want.dtype, "{name}: dtype");
    assert_eq!(got.shape, want.shape, "{name}: shape");
    assert!(got.bytes() == want.bytes(), "{name}: bytes differ");
}

#[test]
fn official_checkpoint_equals_the_state_dict_fixture() {
    let ckpt = load_checkpoint(&tiny("detris_ckpt.pth")).unwrap();
    let want = reference_state_dict();
    // Names as stored: every key has DDP's `module.` (detris::weights removes it).
    let got_names: Vec<String> = ckpt.tensors.keys().cloned().collect();
    let want_names: Vec<String> = want.keys().map(|k| format!("module.{k}")).collect();
    assert_eq!(got_names, want_names, "every state-dict entry, optimizer/scheduler not included");
    for (name, w) in &want {
        assert_same_tensor(name, &ckpt.tensors[&format!("module.{name}")], w);
    }
    // The README lists the container: {'epoch','cur_iou','best_iou','prec',
    // 'state_dict','optimizer','scheduler'}; the first four are metadata.
    let meta: Vec<&str> = ckpt.metadata.keys().map(String::as_str).collect();
    assert_eq!(meta, ["best_iou", "cur_iou", "epoch", "prec"]);
    assert!(ckpt.metadata["epoch"].as_i64().is_some());
    assert!(ckpt.metadata["best_iou"].as_f64().is_some());
    assert!(ckpt.metadata["prec"].as_dict().is_some());
}

/// Storage keys referenced anywhere inside `v`.
fn storage_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::PersistentId(pid) => {
            out.extend(pid.as_list().and_then(|f| f.get(2)).and_then(Value::as_str).map(String::from))
        }
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => items.iter().for_each(|i| storage_keys(i, out)),
        Value::Dict(pairs) => pairs.iter().for_each(|(_, v)| storage_keys(v, out)),
        Value::Object(obj) => {
            obj.args.iter().for_each(|a| storage_keys(a, out));
            if let Some(s) = &obj.state {
                storage_keys(s, out);
            }
        }
        _ => {}
    }
}

#[test]
fn optimizer_and_scheduler_storages_are_never_read() {
    // Copy the checkpoint without the storages of `optimizer`: it must load
    // exactly as before, which it could not if those storages were read.
    let src = tiny("detris_ckpt.pth");
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&src).unwrap()).unwrap();
    let pkl_name = archive.file_names().find(|n| n.ends_with("/data.pkl")).unwrap().to_string();
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut pkl = Vec::new();
    std::io::Read::read_to_end(&mut archive.by_name(&pkl_name).unwrap(), &mut pkl).unwrap();
    let root = pickle::parse(&pkl).unwrap();
    let mut dropped = Vec::new();
    storage_keys(root.get("optimizer").unwrap(), &mut dropped);
    storage_keys(root.get("scheduler").unwrap(), &mut dropped);
    assert!(!dropped.is_empty(), "the fixture's Adam state holds tensors");
    let dropped: Vec<String> = dropped.iter().map(|k| format!("{prefix}data/{k}")).collect();

    let dst = scratch("optimizer").join("no_optimizer.pth");
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&dst).unwrap());
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).unwrap();
        if !dropped.iter().any(|d| d == entry.name()) {
            writer.raw_copy_file(entry).unwrap();
        }
    }
    writer.finish().unwrap();

    let full = load_state_dict(&src).unwrap();
    let stripped = load_state_dict(&dst).unwrap();
    assert_eq!(full.len(), stripped.len());
    for (name, t) in &full {
        assert_same_tensor(name, &stripped[name], t);
    }
}

#[test]
fn dinov2_pth_equals_the_prefixed_state_dict_entries() {
    let dino = load_state_dict(&tiny("dinov2.pth")).unwrap();
    let want = reference_state_dict();
    // The model's DINOv2 keys are `dinov2.<pth key>`, plus the DenseAligner
    // adapters (`blocks.<i>.adapter.*`) that the pretrained file lacks.
    let expected: Vec<&str> = want
        .keys()
        .filter_map(|k| k.strip_prefix("dinov2."))
        .filter(|k| !k.split('.').any(|part| part == "adapter"))
        .collect();
    let got: Vec<&str> = dino.keys().map(String::as_str).collect();
    assert_eq!(got, expected);
    for (name, t) in &dino {
        assert_same_tensor(name, t, &want[&format!("dinov2.{name}")]);
    }
}

#[test]
fn clip_torchscript_text_tower_widens_to_the_state_dict_entries() {
    let clip = load_torchscript(&tiny("clip.pt"), true).unwrap();
    let want = reference_state_dict();
    // Text tower: `txt_backbone.<name>` minus the TextAdapters
    // (`transformer.resblocks.<i>.adapter.*`); `visual.*` has no counterpart.
    let expected: Vec<&str> = want
        .keys()
        .filter_map(|k| k.strip_prefix("txt_backbone."))
        .filter(|k| !k.split('.').any(|part| part == "adapter"))
        .collect();
    let text: Vec<&str> = clip.keys().map(String::as_str).filter(|k| !k.starts_with("visual.")).collect();
    assert_eq!(text, expected);
    assert!(clip.keys().any(|k| k.starts_with("visual.")), "the image tower is read too");
    for name in text {
        let t = &clip[name];
        assert_eq!(t.dtype, DType::F32, "{name} widened");
        assert_same_tensor(name, t, &want[&format!("txt_backbone.{name}")]);
    }
    // Unwidened, the file's f16 is kept, and load_state_dict agrees.
    let half = load_torchscript(&tiny("clip.pt"), false).unwrap();
    assert!(half.values().all(|t| t.dtype == DType::F16));
    let generic = load_state_dict(&tiny("clip.pt")).unwrap();
    assert_eq!(half.len(), generic.len());
    for (name, t) in &half {
        assert_same_tensor(name, &generic[name], t);
    }
}

#[test]
fn format_comes_from_the_bytes_not_the_name() {
    let dir = scratch("format");
    let renamed = dir.join("weights.safetensors");
    std::fs::copy(tiny("dinov2.pth"), &renamed).unwrap();
    assert_eq!(load_state_dict(&renamed).unwrap().len(), load_state_dict(&tiny("dinov2.pth")).unwrap().len());
    // A safetensors file through load_state_dict gives what read() gives.
    let via_generic = load_state_dict(&tiny("state_dict.safetensors")).unwrap();
    let want = reference_state_dict();
    assert_eq!(via_generic.len(), want.len());
    for (name, t) in &want {
        assert_same_tensor(name, &via_generic[name], t);
    }
}

#[test]
fn safetensors_write_then_read_round_trips() {
    let dir = scratch("safetensors");
    let want = reference_state_dict();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join("copy.safetensors");
    safetensors_file::write(&path, &want, &meta).unwrap();
    assert!(!dir.join("copy.safetensors.tmp").exists(), "the temporary file is renamed away");
    let (got, got_meta) = safetensors_file::read(&path).unwrap();
    assert_eq!(got_meta, meta);
    assert_eq!(got.len(), want.len());
    for (name, t) in &want {
        assert_same_tensor(name, &got[name], t);
    }
    // Overwriting an existing file works the same way.
    let small: TensorMap = want.into_iter().take(3).collect();
    safetensors_file::write(&path, &small, &BTreeMap::new()).unwrap();
    let (got, got_meta) = safetensors_file::read(&path).unwrap();
    assert_eq!(got.len(), 3);
    assert!(got_meta.is_empty());
}

// ---------------------------------------------------------------------------
// Hand-built pickles and archives.

/// Writes protocol-2 pickle opcodes.
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn str(self, s: &str) -> Self {
        let len = (s.len() as u32).to_le_bytes();
        self.op(b"X").op(&len).op(s.as_bytes())
    }
    fn int(self, i: i64) -> Self {
        self.op(&[0x8a, 8]).op(&i.to_le_bytes())
    }
    fn ints(self, values: &[i64]) -> Self {
        values.iter().fold(self.op(b"("), |p, &v| p.int(v)).op(b"t")
    }
    /// `_rebuild_tensor_v2(('storage', torch.<class>, key, 'cpu', numel), offset, size, stride, False, OrderedDict())`
    fn tensor(self, class: &str, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b"tQ")
            .int(offset)
            .ints(size)
            .ints(stride)
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")RtR")
    }
    fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A torch-style zip: every entry under `archive/`, stored uncompressed.
fn torch_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        w.start_file(format!("archive/{name}"), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap();
}

fn error_of(path: &Path) -> String {
    let msg = load_state_dict(path).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "names the file: {msg}");
    msg
}

#[test]
fn strided_and_legacy_files_built_by_hand_load() {
    let dir = scratch("handmade");
    let data = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
    // {'w': x.t() for x = arange(6).view(2, 3), 'b': x[1]}
    let state = Pickle::new()
        .op(b"}(")
        .str("module.w")
        .tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3])
        .str("module.b")
        .tensor("FloatStorage", "0", 6, 3, &[3], &[1])
        .op(b"u")
        .stop();
    let zip_path = dir.join("strided.pth");
    torch_zip(&zip_path, &[("data.pkl", &state), ("byteorder", b"little"), ("data/0", &data)]);
    let got = load_state_dict(&zip_path).unwrap();
    assert_eq!(got["module.w"].shape, [3, 2]);
    assert_eq!(got["module.w"].to_f32_vec(), [0., 3., 1., 4., 2., 5.]);
    assert_eq!(got["module.b"].to_f32_vec(), [3., 4., 5.]);

    // The same dict in the legacy format: magic, protocol 1001, sys info,
    // the object, the storage keys, then the storage (int64 count + bytes).
    let magic = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    let mut legacy = Pickle::new().op(&[0x8a, 10]).op(&magic).stop();
    legacy.extend(Pickle::new().int(1001).stop());
    legacy.extend(Pickle::new().op(b"}").str("little_endian").op(b"\x88s").stop());
    legacy.extend(&state[..]);
    legacy.extend(Pickle::new().op(b"(").str("0").op(b"l").stop());
    legacy.extend(6i64.to_le_bytes());
    legacy.extend(&data);
    let legacy_path = dir.join("legacy.pth");
    std::fs::write(&legacy_path, &legacy).unwrap();
    let old = load_state_dict(&legacy_path).unwrap();
    assert_eq!(old["module.w"].to_f32_vec(), got["module.w"].to_f32_vec());
    assert_eq!(old["module.b"].to_f32_vec(), got["module.b"].to_f32_vec());
    // A training checkpoint as the official train.py writes it: 0-dim
    // tensors in `prec` (validate() returns tensor means) read as numbers;
    // the optimizer's storage `9` is absent and never looked for.
    let ckpt = Pickle::new()
        .op(b"}(")
        .str("epoch")
        .int(3)
        .str("prec")
        .op(b"}")
        .str("Pr@50")
        .tensor("FloatStorage", "1", 1, 0, &[], &[])
        .op(b"s")
        .str("state_dict")
        .op(b"}")
        .str("module.b")
        .tensor("FloatStorage", "0", 6, 3, &[3], &[1])
        .op(b"s")
        .str("optimizer")
        .op(b"}")
        .str("state")
        .tensor("FloatStorage", "9", 6, 0, &[6], &[1])
        .op(b"su")
        .stop();
    let ckpt_path = dir.join("train.pth");
    let quarter = f32_bytes(&[0.25]);
    torch_zip(&ckpt_path, &[("data.pkl", &ckpt), ("data/0", &data), ("data/1", &quarter)]);
    let loaded = load_checkpoint(&ckpt_path).unwrap();
    assert_eq!(loaded.tensors.keys().collect::<Vec<_>>(), ["module.b"]);
    assert_eq!(loaded.metadata["epoch"], Value::Int(3));
    assert_eq!(loaded.metadata["prec"].get("Pr@50"), Some(&Value::Float(0.25)));

    // Cut inside the storage bytes: an error, not a short tensor.
    std::fs::write(&legacy_path, &legacy[..legacy.len() - 3]).unwrap();
    assert!(error_of(&legacy_path).contains("truncated"));
}

#[test]
fn missing_and_truncated_files_are_named() {
    let dir = scratch("truncated");
    let missing = dir.join("absent.pth");
    let msg = error_of(&missing);
    assert!(msg.contains("No such file"), "{msg}");

    let bytes = std::fs::read(tiny("dinov2.pth")).unwrap();
    let cut = dir.join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let msg = error_of(&cut);
    assert!(msg.contains("truncated or damaged"), "{msg}");

    let empty = dir.join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    assert!(error_of(&empty).contains("empty"));
}

#[test]
fn forbidden_globals_are_refused_and_never_run() {
    let dir = scratch("globals");
    let marker = dir.join("pwned");
    let command = format!("touch {}", marker.display());
    // os.system("touch <marker>"), as a checkpoint's data.pkl and as a bare pickle.
    let evil = Pickle::new().global("os", "system").str(&command).op(b"\x85R").stop();
    let path = dir.join("os_system.pth");
    torch_zip(&path, &[("data.pkl", &evil)]);
    let msg = error_of(&path);
    assert!(msg.contains("pickle refers to the global `os.system`, which detris does not allow"), "{msg}");
    assert!(pickle::parse(&evil).unwrap_err().to_string().contains("`os.system`"));
    assert!(!marker.exists(), "the command must not have run");

    for (module, name, arg) in [("builtins", "eval", "1+1"), ("subprocess", "Popen", "ls")] {
        let evil = Pickle::new().global(module, name).str(arg).op(b"\x85R").stop();
        let path = dir.join(format!("{name}.pth"));
        torch_zip(&path, &[("data.pkl", &evil)]);
        let msg = error_of(&path);
        assert!(msg.contains(&format!("the global `{module}.{name}`")), "{msg}");
    }
}

#[test]
fn broken_archives_are_clear_errors() {
    let dir = scratch("archives");
    let data = f32_bytes(&[1., 2., 3., 4.]);

    // No data.pkl.
    let path = dir.join("no_pickle.pth");
    torch_zip(&path, &[("data/0", &data)]);
    assert!(error_of(&path).contains("no `<archive>/data.pkl`"));

    // A storage key that tries to leave `data/`, and one that is absent.
    for (key, want) in [("../../etc/passwd", "not a plain name"), ("7", "does not contain")] {
        let pkl = Pickle::new().op(b"}").str("w").tensor("FloatStorage", key, 4, 0, &[4], &[1]).op(b"s").stop();
        let path = dir.join("bad_key.pth");
        torch_zip(&path, &[("data.pkl", &pkl), ("data/0", &data)]);
        let msg = error_of(&path);
        assert!(msg.contains(want) && msg.contains("tensor `w`"), "{msg}");
    }

    // A view longer than its storage, and a storage shorter than it claims.
    let cases: [(i64, &[i64], &str); 3] =
        [(4, &[5], "reaches element 4"), (8, &[8], "fewer than the 8"), (4, &[-1], "negative")];
    for (numel, size, want) in cases {
        let pkl = Pickle::new().op(b"}").str("w").tensor("FloatStorage", "0", numel, 0, size, &[1]).op(b"s").stop();
        let path = dir.join("short.pth");
        torch_zip(&path, &[("data.pkl", &pkl), ("data/0", &data)]);
        let msg = error_of(&path);
        assert!(msg.contains(want), "{msg}");
    }

    // Not a checkpoint at all.
    let path = dir.join("text.pth");
    std::fs::write(&path, b"hello, world").unwrap();
    assert!(error_of(&path).contains("not a weight file"));
}

#[test]
fn broken_safetensors_are_clear_errors() {
    let dir = scratch("bad_safetensors");
    let header = |json: &str, data_len: usize| {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend(json.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data_len));
        b
    };
    let cases = [
        ("broken JSON", header("{\"a\": {\"dtype\"", 8), "invalid JSON"),
        (
            "overlapping",
            header(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
            ),
            "invalid offset",
        ),
        ("past the end", header(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8), "incomplete"),
        ("header past the end", b"\xff\xff\x00\x00\x00\x00\x00\x00{}".to_vec(), "header"),
    ];
    for (what, bytes, want) in cases {
        let path = dir.join("bad.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let msg = safetensors_file::read(&path).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()) && msg.contains(want), "{what}: {msg}");
    }
}
