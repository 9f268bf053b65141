//! PyTorch weight files, read without Python and without running pickle code.
//!
//! Accepted, recognised from the bytes (never from the file name):
//! * `torch.save` zip archives (torch ≥ 1.6): the official DETRIS checkpoint
//!   (`{'epoch', ..., 'state_dict': {'module.<name>': tensor}, 'optimizer',
//!   'scheduler'}`), flat state dicts such as `dinov2_vitb14_reg4_pretrain.pth`;
//! * legacy (pre-zip) `torch.save` files;
//! * TorchScript archives such as OpenAI's `ViT-B-16.pt`, whose `data.pkl`
//!   is a tree of module objects (tensor names are attribute paths);
//! * safetensors files (handed to [`crate::safetensors_file`]).
//!
//! The file is memory-mapped; contiguous tensors point into the map
//! ([`Bytes::Mapped`]), strided ones are copied densely. Tensors the caller
//! does not ask for (optimizer and scheduler states) are never read.
//!
//! Tensor names are given as the file stores them (the official checkpoint's
//! `module.` prefix, CLIP's extra entries included): mapping foreign names
//! onto the model is the model's business (`detris::weights::official`).

mod legacy;
mod rebuild;
pub mod writer;
mod zip_archive;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::pickle::{self, Value};
use crate::tensor::{Bytes, DType, RawTensor, TensorMap};
use rebuild::{contains_tensor, is_tensor, Storages};

/// Top-level checkpoint entries that are not model weights and are never read.
const TRAINING_STATE: [&str; 2] = ["optimizer", "scheduler"];

/// A checkpoint's model tensors and its scalar bookkeeping.
#[derive(Debug)]
pub struct Checkpoint {
    /// Model tensors by name and dtype as stored (`module.` prefix included).
    pub tensors: TensorMap,
    /// Top-level non-weight entries as plain data (DETRIS: `epoch`,
    /// `cur_iou`, `best_iou`, `prec`), one-element tensors read as numbers;
    /// `optimizer` and `scheduler` are left out. Empty for TorchScript files.
    pub metadata: BTreeMap<String, Value>,
}

/// The model tensors of any supported weight file (see the module doc),
/// with their stored dtypes (CLIP TorchScript stays f16).
pub fn load_state_dict(path: &Path) -> Result<TensorMap> {
    load_checkpoint(path).map(|c| c.tensors)
}

/// [`load_state_dict`] plus the checkpoint's non-tensor entries.
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let (root, mut storages, pickle_name) = match open(path)? {
        Opened::Pickled { root, storages, pickle_name } => (root, storages, pickle_name),
        Opened::Safetensors => {
            let (tensors, _) = crate::safetensors_file::read(path)?;
            return Ok(Checkpoint { tensors, metadata: BTreeMap::new() });
        }
    };
    let fail = |what: String| Error::invalid(path, format!("{pickle_name}: {what}"));
    if is_torchscript_module(&root) {
        Ok(Checkpoint {
            tensors: torchscript_tensors(&root, storages.as_mut()).map_err(fail)?,
            metadata: BTreeMap::new(),
        })
    } else {
        state_dict_checkpoint(&root, storages.as_mut()).map_err(fail)
    }
}

/// The tensors of a TorchScript archive, named by attribute path
/// (`transformer.resblocks.0.attn.in_proj_weight`); `widen_f16` converts f16
/// tensors to f32 (exactly).
pub fn load_torchscript(path: &Path, widen_f16: bool) -> Result<TensorMap> {
    let Opened::Pickled { root, mut storages, pickle_name } = open(path)? else {
        return Err(Error::invalid(path, "a safetensors file, not a TorchScript archive"));
    };
    if !is_torchscript_module(&root) {
        return Err(Error::invalid(
            path,
            format!("{pickle_name} holds {}, not a TorchScript module: not a TorchScript archive", root.kind()),
        ));
    }
    let tensors = torchscript_tensors(&root, storages.as_mut())
        .map_err(|what| Error::invalid(path, format!("{pickle_name}: {what}")))?;
    if !widen_f16 {
        return Ok(tensors);
    }
    tensors
        .into_iter()
        .map(|(name, t)| {
            let t = widen_f16_to_f32(t)
                .ok_or_else(|| Error::invalid(path, format!("tensor `{name}` could not be widened")))?;
            Ok((name, t))
        })
        .collect()
}

/// f16 → f32, exactly (every f16 is an f32); other dtypes unchanged.
/// `None` only if the tensor's byte count disagrees with its shape.
pub fn widen_f16_to_f32(t: RawTensor) -> Option<RawTensor> {
    if t.dtype != DType::F16 {
        return Some(t);
    }
    let bytes: Vec<u8> =
        t.bytes().chunks_exact(2).flat_map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes()).collect();
    RawTensor::new(DType::F32, t.shape.clone(), Bytes::Owned(bytes))
}

/// Reads the tensors a pickle tree refers to (see [`load_tree`]).
pub struct TensorReader {
    storages: Box<dyn Storages>,
    path: std::path::PathBuf,
}

impl TensorReader {
    /// The tensor `v` is (a `_rebuild_tensor_v2` record), `None` when it is
    /// no tensor.
    pub fn tensor(&mut self, v: &Value) -> Result<Option<RawTensor>> {
        rebuild::tensor(v, self.storages.as_mut()).map_err(|what| Error::invalid(&self.path, what))
    }
}

/// The whole pickle of a `torch.save` file, with a reader for the tensors it
/// names: the training state (optimizer, scheduler) that
/// [`load_checkpoint`] leaves out.
pub fn load_tree(path: &Path) -> Result<(Value, TensorReader)> {
    match open(path)? {
        Opened::Pickled { root, storages, .. } => Ok((root, TensorReader { storages, path: path.to_path_buf() })),
        Opened::Safetensors => Err(Error::invalid(path, "a safetensors file, not a torch.save archive")),
    }
}

enum Opened {
    Pickled { root: Value, storages: Box<dyn Storages>, pickle_name: String },
    Safetensors,
}

fn open(path: &Path) -> Result<Opened> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; as with every memory-mapped reader, the
    // file must not be truncated by another process while it is in use.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let map = Arc::new(map);
    let bytes: &[u8] = &map;
    let kind = FileKind::of(bytes).map_err(|what| Error::invalid(path, what))?;
    if kind == FileKind::TorchZip {
        let mut zip = zip_archive::TorchZip::open(map.clone()).map_err(|what| Error::invalid(path, what))?;
        let pickle_name = zip.pickle_name();
        let pkl = zip.pickle().map_err(|what| Error::invalid(path, what))?;
        let root = pickle::parse(pkl.as_slice()).map_err(|e| in_entry(e, path, &pickle_name))?;
        Ok(Opened::Pickled { root, storages: Box::new(zip), pickle_name })
    } else if kind == FileKind::LegacyPickle {
        let (root, file) = legacy::open(map.clone()).map_err(|what| Error::invalid(path, what))?;
        Ok(Opened::Pickled { root, storages: Box::new(file), pickle_name: "legacy torch.save pickle".into() })
    } else {
        Ok(Opened::Safetensors)
    }
}

/// What a weight file is, told from its first bytes (never from its name):
/// the one sniffer every reader of weight files asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A zip archive: `torch.save` (torch ≥ 1.6) or TorchScript.
    TorchZip,
    /// A legacy (pre-zip) `torch.save` pickle.
    LegacyPickle,
    /// A safetensors file (u64 header length, then the JSON header).
    Safetensors,
}

impl FileKind {
    /// The kind of the file at `path` (reads its first bytes only).
    pub fn sniff(path: &Path) -> Result<FileKind> {
        use std::io::Read;
        let mut head = Vec::with_capacity(9);
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        file.take(9).read_to_end(&mut head).map_err(|e| Error::io(path, e))?;
        FileKind::of(&head).map_err(|what| Error::invalid(path, what))
    }

    fn of(bytes: &[u8]) -> std::result::Result<FileKind, &'static str> {
        if zip_archive::looks_like_zip(bytes) {
            Ok(FileKind::TorchZip)
        } else if legacy::looks_like_pickle(bytes) {
            Ok(FileKind::LegacyPickle)
        } else if bytes.get(8) == Some(&b'{') {
            Ok(FileKind::Safetensors)
        } else if bytes.is_empty() {
            Err("the file is empty, not a checkpoint")
        } else {
            Err("not a weight file: neither a zip archive (torch.save, TorchScript), \
                 a legacy torch.save pickle, nor safetensors")
        }
    }
}

fn in_entry(e: Error, path: &Path, entry: &str) -> Error {
    match e {
        Error::Input(what) => Error::invalid(path, format!("{entry}: {what}")),
        other => other,
    }
}

fn is_torchscript_module(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.callable.module == "__torch__" || o.callable.module.starts_with("__torch__."))
}

/// A `torch.save`d dict: either a training checkpoint with a `state_dict`
/// entry, or a flat name → tensor state dict.
fn state_dict_checkpoint(root: &Value, storages: &mut dyn Storages) -> std::result::Result<Checkpoint, String> {
    let entries = root.as_dict().ok_or_else(|| {
        format!("holds {}, not a state dict (a dict of tensors, or a dict with a `state_dict` entry)", root.kind())
    })?;
    let mut metadata = BTreeMap::new();
    let tensors = if let Some(state_dict) = root.get("state_dict") {
        let pairs = state_dict
            .as_dict()
            .ok_or_else(|| format!("its `state_dict` entry is {}, not a dict", state_dict.kind()))?;
        for (key, value) in entries {
            if let Some(key) = key.as_str() {
                if key != "state_dict" && !TRAINING_STATE.contains(&key) {
                    if let Some(value) = metadata_value(value, storages) {
                        metadata.insert(key.to_string(), value);
                    }
                }
            }
        }
        dict_tensors(pairs, storages)?
    } else {
        for (key, value) in entries {
            if let Some(key) = key.as_str() {
                if !is_tensor(value) {
                    if let Some(value) = metadata_value(value, storages) {
                        metadata.insert(key.to_string(), value);
                    }
                }
            }
        }
        dict_tensors(entries, storages)?
    };
    if tensors.is_empty() {
        let keys: Vec<&str> = entries.iter().filter_map(|(k, _)| k.as_str()).take(10).collect();
        return Err(format!(
            "holds no tensors: expected a state dict (name → tensor) or a dict with a `state_dict` entry; \
             its keys are {keys:?}"
        ));
    }
    Ok(Checkpoint { tensors, metadata })
}

/// A metadata entry as plain data: one-element tensors (the official
/// checkpoint's `prec` values are 0-dim tensors) become numbers; `None` (the
/// entry is left out) when it holds a larger tensor or one that cannot be read.
fn metadata_value(v: &Value, storages: &mut dyn Storages) -> Option<Value> {
    if is_tensor(v) {
        let t = rebuild::tensor(v, storages).ok()??;
        if t.numel() != 1 {
            return None;
        }
        return if t.dtype.is_float() {
            t.to_f64_vec().first().map(|&x| Value::Float(x))
        } else {
            t.to_i64_vec().first().map(|&x| Value::Int(x))
        };
    }
    let mut items =
        |items: &[Value]| -> Option<Vec<Value>> { items.iter().map(|i| metadata_value(i, storages)).collect() };
    Some(match v {
        Value::List(v) => Value::List(items(v)?),
        Value::Tuple(v) => Value::Tuple(items(v)?),
        Value::Set(v) => Value::Set(items(v)?),
        Value::Dict(pairs) => Value::Dict(
            pairs.iter().map(|(k, v)| Some((k.clone(), metadata_value(v, storages)?))).collect::<Option<_>>()?,
        ),
        other if contains_tensor(other) => return None,
        other => other.clone(),
    })
}

/// The tensor entries of a name → value dict (other values are skipped).
fn dict_tensors(pairs: &[(Value, Value)], storages: &mut dyn Storages) -> std::result::Result<TensorMap, String> {
    let mut out = TensorMap::new();
    for (key, value) in pairs {
        if !is_tensor(value) {
            continue;
        }
        let name = key.as_str().ok_or_else(|| format!("a state-dict key is {}, not a string", key.kind()))?;
        let tensor = rebuild::tensor(value, storages).map_err(|e| format!("tensor `{name}`: {e}"))?;
        if let Some(tensor) = tensor {
            out.insert(name.to_string(), tensor);
        }
    }
    Ok(out)
}

/// Tensors of a TorchScript module tree: attribute paths joined by dots.
/// Non-tensor attributes (`training`, hooks, ...) are skipped.
fn torchscript_tensors(root: &Value, storages: &mut dyn Storages) -> std::result::Result<TensorMap, String> {
    let mut out = TensorMap::new();
    walk_module(root, "", storages, &mut out)?;
    if out.is_empty() {
        return Err("the TorchScript module holds no tensors".into());
    }
    Ok(out)
}

fn walk_module(
    module: &Value,
    prefix: &str,
    storages: &mut dyn Storages,
    out: &mut TensorMap,
) -> std::result::Result<(), String> {
    let Some(attributes) = module.as_object().and_then(|o| o.state.as_ref()).and_then(Value::as_dict) else {
        return Ok(());
    };
    for (key, value) in attributes {
        let Some(name) = key.as_str() else { continue };
        let path = format!("{prefix}{name}");
        if let Some(tensor) = rebuild::tensor(value, storages).map_err(|e| format!("tensor `{path}`: {e}"))? {
            out.insert(path, tensor);
        } else if is_torchscript_module(value) {
            walk_module(value, &format!("{path}."), storages, out)?;
        }
    }
    Ok(())
}
