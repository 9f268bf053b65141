//! The training recipe as types: the schedule, the optimizer's options, when
//! to validate and save, and in which format. The official DETRIS-B RefCOCO
//! values (`config/refcoco/DETRIS_base.yaml`) are written here once, as the
//! `Default`s of [`Schedule`] and [`Recipe`].

use serde::{Deserialize, Serialize};

use super::adam::AdamOptions;
use crate::data::DataSpec;
use crate::device::Precision;

/// How long a run lasts and how fast it learns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub epochs: usize,
    /// Epochs after which the lr is multiplied by `lr_decay` (MultiStepLR).
    pub milestones: Vec<usize>,
    pub base_lr: f64,
    pub lr_decay: f64,
    /// The global training batch (over all ranks).
    pub batch_size: usize,
    pub seed: u64,
}

impl Schedule {
    /// `lr` of epoch `e` (0-based): base · decay^(milestones ≤ e), as
    /// `MultiStepLR.step(epoch)` gives it in the official loop.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let passed = self.milestones.iter().filter(|&&m| m <= epoch).count();
        self.base_lr * self.lr_decay.powi(passed as i32)
    }
}

impl Default for Schedule {
    /// The official DETRIS-B RefCOCO values.
    fn default() -> Schedule {
        Schedule { epochs: 65, milestones: vec![35, 55], base_lr: 1e-4, lr_decay: 0.1, batch_size: 32, seed: 0 }
    }
}

/// The official data set and splits of the built-in recipe.
pub const DEFAULT_DATASET: &str = "refcoco";
pub const DEFAULT_TRAIN_SPLIT: &str = "train";
pub const DEFAULT_VAL_SPLIT: &str = "val";

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

impl Recipe {
    /// The official optimizer's settings at `base_lr`.
    pub fn adam_options(&self, base_lr: f64) -> AdamOptions {
        AdamOptions { lr: base_lr, lr_multi: self.lr_multi, weight_decay: self.weight_decay, max_norm: self.max_norm }
    }
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

/// Everything a run is trained with; stored in its checkpoints, and checked on `--resume`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    pub data: DataSpec,
    #[serde(flatten)]
    pub schedule: Schedule,
    /// f32, or bf16 autocast (CPU, CUDA), or f16 autocast with loss scaling (CUDA).
    pub precision: Precision,
    /// Stop after this many optimizer steps in total (tests, quick runs).
    pub max_steps: Option<u64>,
    /// Also write `last` every this many steps (so a kill loses little).
    pub save_every: Option<u64>,
    /// Train the backbones too (the first stage of the shipped model); the
    /// official recipe freezes them.
    pub train_backbones: bool,
    /// Validate on at most this many refs (0 = all).
    pub val_limit: usize,
    pub workers: usize,
    /// The official optimizer, validation and saving options.
    #[serde(default)]
    pub recipe: Recipe,
    /// Batches whose gradients one optimizer step sums (`--accumulate`): a step
    /// sees `batch_size × accumulate` samples.
    #[serde(default = "one")]
    pub accumulate: usize,
    /// Unreadable samples a run may skip before it stops.
    #[serde(default = "default_max_bad_samples")]
    pub max_bad_samples: usize,
}

fn one() -> usize {
    1
}

/// `--max-bad-samples`' default.
pub const DEFAULT_MAX_BAD_SAMPLES: usize = 10;

fn default_max_bad_samples() -> usize {
    DEFAULT_MAX_BAD_SAMPLES
}

impl TrainOptions {
    /// The options a resumed run must share with the checkpoint's: all but
    /// the stopping point, the lr schedule ahead (a function of the epoch
    /// alone), how often and in which format to save and log, and how many
    /// unreadable samples to tolerate.
    pub fn resumable_as(&self, now: &TrainOptions) -> TrainOptions {
        let mut then = self.clone();
        then.max_steps = now.max_steps;
        then.schedule.epochs = now.schedule.epochs;
        then.schedule.milestones = now.schedule.milestones.clone();
        then.recipe.save_format = now.recipe.save_format;
        then.recipe.save_freq = now.recipe.save_freq;
        then.recipe.print_freq = now.recipe.print_freq;
        then.recipe.batch_size_val = now.recipe.batch_size_val;
        then.recipe.sync_bn = now.recipe.sync_bn;
        then.max_bad_samples = now.max_bad_samples;
        then
    }
}
