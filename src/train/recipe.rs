//! The parts of the official recipe beyond the lr schedule: the optimizer's
//! options, when to validate and save, and in which format.

use serde::{Deserialize, Serialize};

/// Which checkpoint files a run writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SaveFormat {
    /// detris's own `last.safetensors` / `best.safetensors` (weights, Adam
    /// moments, the run's position; `--resume` continues mid-epoch).
    #[default]
    Safetensors,
    /// The official `last_model.pth` / `best_model.pth` that `test.py`,
    /// `demo.py` and `train.py --resume` load, written after every epoch.
    Pth,
    Both,
}

impl SaveFormat {
    pub fn pth(self) -> bool {
        matches!(self, SaveFormat::Pth | SaveFormat::Both)
    }
    pub fn safetensors(self) -> bool {
        matches!(self, SaveFormat::Safetensors | SaveFormat::Both)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recipe {
    /// The backbone adapters learn at `lr_multi × base_lr`, the head at `base_lr`.
    pub lr_multi: f64,
    /// Adam's L2 weight decay (added to the gradient).
    pub weight_decay: f64,
    /// Clip the gradients to this total 2-norm (0 = no clipping).
    pub max_norm: f64,
    /// The first epoch (0-based) of a run that does not resume.
    pub start_epoch: usize,
    /// Write `last` every this many epochs (and after the last epoch).
    pub save_freq: usize,
    /// Validate after every epoch; without it no `best` is chosen.
    pub evaluate: bool,
    pub batch_size_val: usize,
    /// Steps between log lines when there is no progress bar.
    pub print_freq: u64,
    pub save_format: SaveFormat,
    /// Data-parallel runs: SyncBatchNorm, BatchNorm statistics over the
    /// global batch (the official `sync_bn`; one process sees it whole anyway).
    pub sync_bn: bool,
}

impl Default for Recipe {
    /// The official DETRIS-B RefCOCO values.
    fn default() -> Recipe {
        Recipe {
            lr_multi: 1.0,
            weight_decay: 0.0,
            max_norm: 0.0,
            start_epoch: 0,
            save_freq: 1,
            evaluate: true,
            batch_size_val: 64,
            print_freq: 100,
            save_format: SaveFormat::Safetensors,
            sync_bn: true,
        }
    }
}
