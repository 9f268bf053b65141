//! detris's own weight file: a safetensors file whose metadata holds the
//! format name, the full config and a checksum of the content.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use detris_io::tensor::TensorMap;

use super::strict::state_dict;
use crate::config::DetrisConfig;
use crate::model::Detris;

/// Metadata keys of detris safetensors files.
pub const META_FORMAT: &str = "format";
pub const META_CONFIG: &str = "detris.config";
pub const META_CHECKSUM: &str = "detris.checksum";
pub const FORMAT: &str = "detris";

/// A config from a detris safetensors file's metadata, if it has one.
pub fn config_from_metadata(meta: &BTreeMap<String, String>) -> Result<Option<DetrisConfig>> {
    match meta.get(META_CONFIG) {
        None => Ok(None),
        Some(json) => {
            Ok(Some(serde_json::from_str(json).context("the file's `detris.config` metadata is not a valid config")?))
        }
    }
}

/// FNV-1a over names, dtypes, shapes, bytes and the config: detects a file
/// whose tensors or config were changed after detris wrote it.
pub fn checksum(map: &TensorMap, config_json: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    for (k, t) in map {
        eat(k.as_bytes());
        eat(t.dtype.name().as_bytes());
        for d in &t.shape {
            eat(&(*d as u64).to_le_bytes());
        }
        eat(t.bytes());
    }
    eat(config_json.as_bytes());
    format!("fnv1a64:{h:016x}")
}

/// Metadata for a detris safetensors file: format, full config, checksum.
pub fn metadata_for(map: &TensorMap, cfg: &DetrisConfig) -> Result<BTreeMap<String, String>> {
    let json = serde_json::to_string(cfg)?;
    let mut meta = BTreeMap::new();
    meta.insert(META_FORMAT.to_string(), FORMAT.to_string());
    meta.insert(META_CHECKSUM.to_string(), checksum(map, &json));
    meta.insert(META_CONFIG.to_string(), json);
    Ok(meta)
}

/// Refuses a detris file whose checksum does not match its content.
pub fn verify_checksum(path: &Path, map: &TensorMap, meta: &BTreeMap<String, String>) -> Result<()> {
    if let (Some(sum), Some(json)) = (meta.get(META_CHECKSUM), meta.get(META_CONFIG)) {
        let actual = checksum(map, json);
        if &actual != sum {
            bail!(
                "{}: checksum mismatch (file says {sum}, content gives {actual}): the file was changed or damaged",
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes a detris safetensors file (all weights, or only the trainable ones
/// and BatchNorm statistics) with the full config and a checksum in its
/// metadata, atomically.
pub fn save_model(model: &Detris, path: &Path, trainable_only: bool) -> Result<()> {
    write(path, &state_dict(model, trainable_only)?, &model.config)
}

/// Writes `map` as a detris safetensors file of a model with config `cfg`, atomically.
pub fn write(path: &Path, map: &TensorMap, cfg: &DetrisConfig) -> Result<()> {
    let meta = metadata_for(map, cfg)?;
    detris_io::safetensors_file::write(path, map, &meta)?;
    Ok(())
}
