//! Training checkpoints: one safetensors file holding the trained weights,
//! the Adam moments, and (in its metadata) the config, the options and the
//! position in the run, written atomically (temp file, fsync, rename) so that
//! a kill at any moment leaves the previous checkpoint intact.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::adam::Adam;
use super::precision::GradScaler;
use crate::model::Detris;
use crate::weights::{self, from_tch, to_tch};

pub const META_TRAIN_STATE: &str = "detris.train_state";

/// Where a run stands; enough to continue it exactly.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: usize,
    pub global_step: u64,
    pub best_miou: Option<f64>,
    pub best_epoch: Option<usize>,
    /// The training options, as JSON, for `--resume` to check and reuse.
    pub options: serde_json::Value,
    /// Per-epoch records (loss, lr, validation metrics).
    pub history: Vec<serde_json::Value>,
    /// The loss scaler's state (f16 training), so that a resumed run scales as the uninterrupted one.
    #[serde(default)]
    pub grad_scaler: Option<GradScaler>,
}

/// Writes the model's trained variables (and BatchNorm statistics), the
/// optimizer moments and the state.
pub fn save(path: &Path, model: &Detris, opt: &Adam, state: &TrainState, all_weights: bool) -> Result<()> {
    let mut map = weights::state_dict(model, !all_weights)?;
    for (name, _, m, v) in &opt.params {
        map.insert(format!("adam.exp_avg.{name}"), from_tch(m)?);
        map.insert(format!("adam.exp_avg_sq.{name}"), from_tch(v)?);
    }
    let mut meta = weights::metadata_for(&map, &model.config)?;
    let mut st = state.clone();
    st.options["adam_step"] = serde_json::json!(opt.step);
    meta.insert(META_TRAIN_STATE.into(), serde_json::to_string(&st)?);
    detris_io::safetensors_file::write(path, &map, &meta)?;
    Ok(())
}

/// Restores weights, optimizer moments and state from a checkpoint.
pub fn load(path: &Path, model: &Detris, opt: &mut Adam) -> Result<TrainState> {
    let (map, meta) = weights::read_weights(path)?;
    let state: TrainState = serde_json::from_str(
        meta.get(META_TRAIN_STATE).with_context(|| format!("{}: not a detris training checkpoint", path.display()))?,
    )
    .with_context(|| format!("{}: unreadable training state", path.display()))?;
    let (model_part, adam_part): (BTreeMap<_, _>, BTreeMap<_, _>) =
        map.into_iter().partition(|(k, _)| !k.starts_with("adam."));
    let report = weights::load_map(model, &model_part, false)?;
    report.check(&path.display().to_string())?;
    for (name, _, m, v) in &mut opt.params {
        let (Some(em), Some(ev)) =
            (adam_part.get(&format!("adam.exp_avg.{name}")), adam_part.get(&format!("adam.exp_avg_sq.{name}")))
        else {
            bail!("{}: no optimizer state for `{name}`", path.display());
        };
        tch::no_grad(|| -> Result<()> {
            m.copy_(&to_tch(em)?.to_kind(m.kind()));
            v.copy_(&to_tch(ev)?.to_kind(v.kind()));
            Ok(())
        })?;
    }
    opt.step = state.options.get("adam_step").and_then(|s| s.as_i64()).unwrap_or(0);
    Ok(state)
}
