//! Smaller files to ship: the token embedding pruned to the words a data set
//! uses (and widened back on load), and f16 storage.

use std::path::Path;

use anyhow::{bail, Context, Result};
use detris_io::tensor::{DType, TensorMap};
use tch::Tensor;

use super::convert::{from_tch, to_tch};
use super::strict::state_dict;
use crate::model::Detris;

/// How an exported detris file is made smaller.
#[derive(Clone, Debug, Default)]
pub struct Shrink {
    /// Keep only these token-embedding rows (see [`prune_vocab`]).
    pub keep_token_ids: Option<Vec<i64>>,
    /// Store the floats as f16 (see [`to_f16`]).
    pub f16: bool,
}

/// Writes every weight of `model` as a detris safetensors file, made smaller
/// as `shrink` says: self-contained, whatever files the model was loaded from.
/// A model loaded pruned stays pruned to the ids it knows unless `shrink` names others.
pub fn export_model(model: &Detris, path: &Path, shrink: &Shrink) -> Result<()> {
    let mut map = state_dict(model, false)?;
    if let Some(ids) = shrink.keep_token_ids.as_ref().or(model.known_token_ids.as_ref()) {
        prune_vocab(&mut map, ids)?;
    }
    if shrink.f16 {
        to_f16(&mut map);
    }
    super::detris_file::write(path, &map, &model.config)
}

/// Name of the id list stored beside a pruned token embedding.
pub const VOCAB_IDS: &str = "detris.vocab_ids";
pub(super) const TOKEN_EMBEDDING: &str = "txt_backbone.token_embedding.weight";

/// Keeps only the token-embedding rows of `ids` (sorted), storing the ids
/// beside them: a model trained on a small language ships without the other
/// 49k rows.
pub fn prune_vocab(map: &mut TensorMap, ids: &[i64]) -> Result<()> {
    let emb = map.get(TOKEN_EMBEDDING).context("no token embedding to prune")?;
    let full = to_tch(emb)?;
    let idx = Tensor::from_slice(ids);
    map.insert(TOKEN_EMBEDDING.into(), from_tch(&full.index_select(0, &idx))?);
    map.insert(VOCAB_IDS.into(), from_tch(&idx)?);
    Ok(())
}

/// Undoes [`prune_vocab`]: rows of ids the file does not hold are zero (a
/// word the model never saw). Returns the ids the model knows, if pruned.
pub fn expand_vocab(map: &mut TensorMap, vocab_size: usize) -> Result<Option<Vec<i64>>> {
    let Some(ids) = map.remove(VOCAB_IDS) else { return Ok(None) };
    let ids = ids.to_i64_vec();
    let emb = map.get(TOKEN_EMBEDDING).context("a vocabulary id list without a token embedding")?;
    if emb.shape.len() != 2 || emb.shape[0] != ids.len() || ids.iter().any(|&i| i < 0 || i as usize >= vocab_size) {
        bail!("the pruned vocabulary does not match its embedding ({} ids, embedding {:?})", ids.len(), emb.shape);
    }
    let rows = to_tch(emb)?;
    let full = Tensor::zeros([vocab_size as i64, rows.size()[1]], (rows.kind(), tch::Device::Cpu));
    let full = full.index_copy(0, &Tensor::from_slice(&ids), &rows);
    map.insert(TOKEN_EMBEDDING.into(), from_tch(&full)?);
    Ok(Some(ids))
}

/// Every float tensor stored as f16 (halves the shipped file; the model
/// widens on load).
pub fn to_f16(map: &mut TensorMap) {
    for t in map.values_mut() {
        if t.dtype == DType::F32 || t.dtype == DType::F64 {
            *t = t.to_dtype(DType::F16);
        }
    }
}
