//! A run's checkpoints, in two formats written side by side: detris's
//! safetensors ([`safetensors`]: weights, Adam moments and the run's
//! position, resumable mid-epoch; every weight, or the trained ones and the
//! base files named) and the official `train.py` container
//! ([`pth`]: `last_model.pth` / `best_model.pth`, which the official scripts
//! load). [`save`] writes the files a moment asks for in the formats the
//! recipe names; [`read`] tells the format from the bytes and reads either.

pub mod param_order;
pub mod pth;
pub mod safetensors;

use std::path::{Path, PathBuf};

use anyhow::Result;
use detris_io::metrics::Summary;
use detris_io::torch_file::FileKind;
use serde::{Deserialize, Serialize};

use super::adam::Adam;
use super::bad_samples::EpochSkips;
use super::history::EpochRecord;
use super::precision::GradScaler;
use super::recipe::{SaveFormat, TrainOptions};
use crate::model::Detris;
use crate::weights::base::Base;

/// Where a run stands; enough to continue it exactly (the optimizer's own
/// step count is in [`Adam::step`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of `epoch` already done.
    pub batch_in_epoch: usize,
    pub global_step: u64,
    pub best_miou: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Per-epoch records (loss, lr, validation metrics).
    pub history: Vec<EpochRecord>,
    /// The loss scaler's state (f16 training), so that a resumed run scales as the uninterrupted one.
    #[serde(default)]
    pub grad_scaler: Option<GradScaler>,
    /// The samples skipped so far in the epoch in progress.
    #[serde(default)]
    pub skipped: EpochSkips,
}

/// The files of a run folder.
pub fn last_path(out: &Path) -> PathBuf {
    out.join("last.safetensors")
}
pub fn best_path(out: &Path) -> PathBuf {
    out.join("best.safetensors")
}
/// The official `last_model.pth` / `best_model.pth` beside the safetensors files.
pub fn official_path(out: &Path, best: bool) -> PathBuf {
    out.join(if best { "best_model.pth" } else { "last_model.pth" })
}

/// Everything a checkpoint holds, borrowed from the trainer.
pub struct Snapshot<'a> {
    pub model: &'a Detris,
    pub opt: &'a Adam,
    pub state: &'a TrainState,
    pub options: &'a TrainOptions,
    /// The validation of the epoch just finished (the official container records it).
    pub val: Option<&'a Summary>,
    /// The files the frozen weights came from, to name instead of writing
    /// those weights (`None`: the safetensors files hold every weight).
    pub base: Option<&'a Base>,
}

/// Which files to write now.
#[derive(Clone, Copy, Debug)]
pub struct Which {
    pub last: bool,
    pub best: bool,
    pub formats: SaveFormat,
}

impl Which {
    /// Inside an epoch: `last` alone, in the format that can continue mid-epoch.
    pub const MID_EPOCH: Which = Which { last: true, best: false, formats: SaveFormat::Safetensors };
}

/// Writes the files `which` names into the run folder `out`, each atomically.
pub fn save(out: &Path, which: Which, snap: &Snapshot) -> Result<()> {
    if which.formats.safetensors() {
        if which.last {
            safetensors::save(&last_path(out), snap)?;
        }
        if which.best {
            // `best` is its own atomic file (no partial copies).
            safetensors::save(&best_path(out), snap)?;
        }
    }
    if which.formats.pth() {
        let run = pth::RunRecord::of(snap);
        for (wanted, best) in [(which.last, false), (which.best, true)] {
            if wanted {
                pth::save(&official_path(out, best), snap.model, snap.opt, &run)?;
            }
        }
    }
    Ok(())
}

/// What a checkpoint says of the run it comes from.
pub enum Resumed {
    /// detris's checkpoint: the exact position and the options it ran with.
    Detris { state: TrainState, options: TrainOptions },
    /// The official container: the epochs finished and the best mIoU.
    Official(pth::OfficialState),
}

/// Loads a checkpoint of either format into the model and the optimizer
/// (a zip archive is the official container; anything else must be detris's).
pub fn read(path: &Path, model: &Detris, opt: &mut Adam) -> Result<Resumed> {
    if FileKind::sniff(path)? == FileKind::TorchZip {
        Ok(Resumed::Official(pth::load(path, model, opt)?))
    } else {
        let (state, options) = safetensors::load(path, model, opt)?;
        Ok(Resumed::Detris { state, options })
    }
}
