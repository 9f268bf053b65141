//! What a run records: of each epoch, one line of `metrics.jsonl`, one point
//! of `training.png` and one entry of the checkpoint's history; of each
//! logging interval, one line of `metrics.jsonl` with the official training
//! metrics. The lines are tagged by `kind`: `epoch` or `interval`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use detris_io::data::loader::{Origin, SampleError};
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
    /// The samples of the epoch that could not be read and were skipped
    /// (in a data-parallel run, those of rank 0).
    #[serde(default)]
    pub skipped: Vec<SkippedSample>,
    /// How many samples were skipped in the epoch (every rank's).
    #[serde(default)]
    pub skipped_count: usize,
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

/// A sample that could not be loaded and was left out of its batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedSample {
    /// The manifest line or the prepared split's entry.
    pub origin: Origin,
    /// 0-based, as the loader's.
    pub sentence_index: usize,
    pub error: String,
}

impl From<&SampleError> for SkippedSample {
    fn from(e: &SampleError) -> SkippedSample {
        SkippedSample { origin: e.origin.clone(), sentence_index: e.sentence_index, error: e.error.clone() }
    }
}

impl std::fmt::Display for SkippedSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, sentence {}: {}", self.origin, self.sentence_index + 1, self.error)
    }
}

/// The official loop's log line of every `print_freq` steps: the epoch's
/// running means so far (its meters' `avg`) of the loss and of the training
/// IoU and Pr@50 (fractions; the official log prints them × 100).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalRecord {
    /// 1-based.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: u64,
    /// Optimizer steps of this epoch so far.
    pub step_in_epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub iou: f64,
    pub pr50: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricsLine<'a> {
    Epoch(&'a EpochRecord),
    Interval(&'a IntervalRecord),
}

impl MetricsLine<'_> {
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
