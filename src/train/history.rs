//! What a run records of each epoch: one line of `metrics.jsonl`, one point
//! of `training.png`, one entry of the checkpoint's history.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use detris_io::metrics::Summary;
use serde::{Deserialize, Serialize};

/// One finished epoch. The fields are declared in name order: the JSON
/// lines keep the key order they have always had.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// The epoch's learning rate (the head's).
    pub lr: f64,
    pub seconds: f64,
    /// Optimizer steps at the end of the epoch.
    pub step: u64,
    /// The mean training loss (none when the epoch took no step).
    pub train_loss: Option<f64>,
    pub val_miou: Option<f64>,
    pub val_oiou: Option<f64>,
    /// `Pr@50` … `Pr@90` of the validation.
    pub val_prec: Option<BTreeMap<String, f64>>,
    pub val_split: String,
}

/// `Pr@50` … `Pr@90`: a validation's precision at each IoU threshold, by label.
pub fn prec_by_label(val: &Summary) -> Vec<(String, f64)> {
    val.prec.iter().map(|(t, p)| (detris_io::metrics::precision_label(*t), *p)).collect()
}

impl EpochRecord {
    /// Appends the record to `metrics.jsonl` as one JSON line.
    pub fn append_to(&self, path: &Path) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        writeln!(f, "{}", serde_json::to_string(self)?)?;
        Ok(())
    }
}

/// `training.png`: loss and validation curves of the records so far.
pub fn plot(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let values = history.iter().map(serde_json::to_value).collect::<serde_json::Result<Vec<_>>>()?;
    detris_io::plot::write_plot(path, &values)?;
    Ok(())
}
