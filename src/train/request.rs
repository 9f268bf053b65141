//! What a user asks of a training run, resolved into typed options: flags
//! win over the YAML config (`--yaml`, with `--opts` merged in), which wins
//! over the official recipe's defaults ([`Schedule`], [`Recipe`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use super::recipe::{
    Recipe, SaveFormat, Schedule, TrainOptions, DEFAULT_DATASET, DEFAULT_TRAIN_SPLIT, DEFAULT_VAL_SPLIT,
};
use super::run_folder::Claim;
use super::yaml_config::YamlConfig;
use crate::data::{DataSource, DataSpec, HeldOutSide, SplitSource};
use crate::device::Precision;
use crate::weights::{ConfigChoice, WeightFiles};

/// Bad input in a training request (the command line's usage errors).
#[derive(Debug)]
pub struct BadRequest(pub String);

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRequest {}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadRequest(msg.into()))
}

/// The options of `detris train` beyond the model's files.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainRequest {
    /// Start from randomly initialised backbones (with --config or --variant)
    /// instead of pretrained files: the first stage of the shipped model.
    #[arg(long)]
    pub random_init: bool,
    // -- The official project's files: its YAML configs, --opts, .pth checkpoints.
    /// An official DETRIS YAML config (`config/<dataset>/DETRIS_*.yaml`), read
    /// verbatim: its keys set the defaults below, the model and the recipe;
    /// options given here win. Without it the defaults are the official
    /// DETRIS-B RefCOCO recipe.
    #[arg(long)]
    pub yaml: Option<PathBuf>,
    /// Which checkpoints to write: detris's safetensors (resumable
    /// mid-epoch), the official last_model.pth / best_model.pth after every
    /// epoch, or both.
    #[arg(long, value_enum)]
    pub save_format: Option<SaveFormat>,
    /// Continue from this checkpoint: an official last_model.pth (its Adam
    /// state and epoch) or a detris last.safetensors [YAML: resume].
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
    /// Override config keys as the official `--opts`: KEY VALUE pairs, the
    /// key's last dotted part naming it (TRAIN.base_lr 2e-4), values as
    /// Python literals. Must come last.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_names = ["KEY", "VALUE"])]
    pub opts: Vec<String>,
    // -- end of the official-files block.
    /// Root of the prepared layout (anns/, masks/, images/train2014/)
    /// [YAML: mask_root/../..].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// [default: refcoco; YAML: dataset]
    #[arg(long)]
    pub dataset: Option<String>,
    /// Train on a JSON Lines manifest of one's own data (each line: image, sentences and
    /// mask, mask_rle or mask_polygons; paths relative to the manifest) instead of --data.
    #[arg(long, conflicts_with_all = ["data", "dataset", "train_split"])]
    pub manifest: Option<PathBuf>,
    /// With --manifest: validate (and choose `best`) on this manifest.
    #[arg(long, requires = "manifest", conflicts_with = "val_split")]
    pub val_manifest: Option<PathBuf>,
    /// With --manifest and no --val-manifest: validate on this fraction of its photos, split
    /// off deterministically by photo path (no photo on both sides) [default: 0.1].
    #[arg(long, requires = "manifest", conflicts_with_all = ["val_manifest", "val_split"])]
    pub val_fraction: Option<f64>,
    /// [default: train; YAML: train_split]
    #[arg(long)]
    pub train_split: Option<String>,
    /// The split that selects `best` (the official RefCOCO+ configs use testB)
    /// [default: val; YAML: val_split].
    #[arg(long)]
    pub val_split: Option<String>,
    /// [default: 65; YAML: epochs]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Epochs after which the lr decays (MultiStepLR) [default: 35,55; YAML: milestones].
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    /// [default: 1e-4; YAML: base_lr]
    #[arg(long)]
    pub lr: Option<f64>,
    /// [default: 0.1; YAML: lr_decay]
    #[arg(long)]
    pub lr_decay: Option<f64>,
    /// [default: 32; YAML: batch_size]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// [default: 0; YAML: manual_seed]
    #[arg(long)]
    pub seed: Option<u64>,
    /// f32, or mixed precision (autocast): bf16 (CPU or CUDA), f16 with loss
    /// scaling (CUDA; the official recipe), or auto (bf16 where the hardware has bf16 matrix units).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Stop after this many optimizer steps in all.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Also write `last` every N steps.
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Train the backbones as well (not the official recipe).
    #[arg(long)]
    pub train_backbones: bool,
    /// Validate on at most this many refs (0 = all).
    #[arg(long, default_value_t = 0)]
    pub val_limit: usize,
    /// Override the dropout of the config.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Data loading threads [default: 2; YAML: workers].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Run folder: last.safetensors, best.safetensors, metrics.jsonl,
    /// training.png, train.log; one run's own (locked while it writes)
    /// [default: runs/train; YAML: output_folder/exp_name].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Replace the run in --out: remove its checkpoints, metrics.jsonl,
    /// training.png and train.log first (other files stay). Without it (or
    /// --resume) a folder that holds a run is refused.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Sum the gradients of N batches of --batch-size before each optimizer
    /// step: a step sees batch-size × N samples (the official global batch of
    /// 32 on one device: --batch-size 8 --accumulate 4). --max-steps,
    /// --save-every and print_freq count optimizer steps.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub accumulate: u64,
    /// Skip at most this many samples that cannot be read (each named in the
    /// log and counted in metrics.jsonl); one more stops the run.
    #[arg(long, default_value_t = super::recipe::DEFAULT_MAX_BAD_SAMPLES)]
    pub max_bad_samples: usize,
    /// Data-parallel runs: SyncBatchNorm (BatchNorm statistics over the
    /// global batch, as the official `sync_bn: True`) [YAML: sync_bn].
    #[arg(long)]
    pub sync_bn: Option<bool>,
}

/// A training request resolved: every choice made, each from the flag, the
/// YAML config or the official default.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub request: TrainRequest,
    /// The model's files and config (the YAML's where no option names them).
    pub weights: WeightFiles,
    pub choice: ConfigChoice,
    /// The data root (required to train, not to print the plan).
    pub data: Option<PathBuf>,
    pub dataset: String,
    pub train_split: String,
    pub val_split: String,
    /// The YAML's `test_split` (shown, not used by training).
    pub test_split: Option<String>,
    pub schedule: Schedule,
    pub recipe: Recipe,
    pub workers: usize,
    pub out: PathBuf,
    pub resume_from: Option<PathBuf>,
    /// The YAML keys that have no effect on a detris run, with the reason.
    pub notes: BTreeMap<String, String>,
}

impl RunPlan {
    /// Resolves `request` (YAML read and `--opts` merged: their errors are
    /// [`BadRequest`]s) with the model's files and config as the options gave them.
    pub fn resolve(request: &TrainRequest, mut weights: WeightFiles, mut choice: ConfigChoice) -> Result<RunPlan> {
        let from_file = request.yaml.is_some();
        let mut y = match &request.yaml {
            Some(p) => YamlConfig::read(p).map_err(|e| bad(format!("--yaml: {e:#}")))?,
            None => YamlConfig::detris_b_refcoco(),
        };
        y.merge_opts(&request.opts).map_err(|e| bad(format!("{e:#}")))?;
        let notes = y.check_and_notes().map_err(|e| bad(format!("{e:#}")))?;
        let r = request;
        let official = Schedule::default();
        let schedule = Schedule {
            epochs: r.epochs.or_else(|| y.usize("epochs")).unwrap_or(official.epochs),
            milestones: r.milestones.clone().or_else(|| y.list("milestones")).unwrap_or(official.milestones),
            base_lr: r.lr.or_else(|| y.f64("base_lr")).unwrap_or(official.base_lr),
            lr_decay: r.lr_decay.or_else(|| y.f64("lr_decay")).unwrap_or(official.lr_decay),
            batch_size: r.batch_size.or_else(|| y.usize("batch_size")).unwrap_or(official.batch_size),
            seed: r.seed.or_else(|| y.usize("manual_seed").map(|s| s as u64)).unwrap_or(official.seed),
        };
        let d = Recipe::default();
        let recipe = Recipe {
            lr_multi: y.f64("lr_multi").unwrap_or(d.lr_multi),
            weight_decay: y.f64("weight_decay").unwrap_or(d.weight_decay),
            max_norm: y.f64("max_norm").unwrap_or(d.max_norm),
            start_epoch: y.usize("start_epoch").unwrap_or(d.start_epoch),
            save_freq: y.usize("save_freq").unwrap_or(d.save_freq),
            evaluate: y.bool("evaluate").unwrap_or(d.evaluate),
            batch_size_val: y.usize("batch_size_val").unwrap_or(d.batch_size_val),
            print_freq: y.usize("print_freq").map_or(d.print_freq, |f| f as u64),
            save_format: r.save_format.unwrap_or_default(),
            sync_bn: r.sync_bn.or_else(|| y.bool("sync_bn")).unwrap_or(d.sync_bn),
        };
        if from_file {
            // The YAML names the model, the pretrained files and the initial weights; options win.
            if choice.config.is_none() && choice.variant.is_none() && weights.checkpoint.is_none() {
                choice.inline = Some(y.model_config().map_err(|e| bad(format!("--yaml: {e:#}")))?);
            }
            if weights.checkpoint.is_none() {
                weights.checkpoint = y.string("weight").map(PathBuf::from);
            }
            if weights.dinov2.is_none() && weights.checkpoint.is_none() {
                weights.dinov2 = y.string("dino_pretrain").map(PathBuf::from);
                weights.clip = weights.clip.or_else(|| y.string("clip_pretrain").map(PathBuf::from));
            }
        }
        // Launcher settings come from a YAML file only (the built-in recipe's 32 workers suit the Python loader).
        let launcher = |key: &str| if from_file { y.usize(key) } else { None };
        let out = r.out.clone().or_else(|| if from_file { y.output_dir() } else { None });
        Ok(RunPlan {
            weights,
            choice,
            data: r.data.clone().or_else(|| if from_file { y.data_root() } else { None }),
            dataset: r.dataset.clone().or_else(|| y.string("dataset")).unwrap_or_else(|| DEFAULT_DATASET.into()),
            train_split: (r.train_split.clone().or_else(|| y.string("train_split")))
                .unwrap_or_else(|| DEFAULT_TRAIN_SPLIT.into()),
            val_split: r
                .val_split
                .clone()
                .or_else(|| y.string("val_split"))
                .unwrap_or_else(|| DEFAULT_VAL_SPLIT.into()),
            test_split: y.string("test_split"),
            schedule,
            recipe,
            workers: r.workers.or_else(|| launcher("workers")).unwrap_or(2),
            out: out.unwrap_or_else(|| PathBuf::from("runs/train")),
            resume_from: r.resume_from.clone().or_else(|| y.string("resume").map(PathBuf::from)),
            notes,
            request: r.clone(),
        })
    }

    /// The resolved configuration (model, recipe, data) as `--print-config` shows it.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        let c = &self.choice;
        let chosen = c.inline.is_some() || c.config.is_some() || c.variant.is_some();
        let model = if chosen { Some(c.resolve(|| unreachable!("a config was chosen"))?) } else { None };
        let (s, w) = (&self.schedule, &self.weights);
        Ok(json!({
            "yaml": self.request.yaml, "model": model,
            "weights": {"checkpoint": w.checkpoint, "dinov2": w.dinov2, "clip": w.clip},
            "data": {"root": self.data, "dataset": self.dataset, "train_split": self.train_split,
                     "val_split": self.val_split, "test_split": self.test_split,
                     "manifest": self.request.manifest, "val_manifest": self.request.val_manifest,
                     "val_fraction": self.request.val_fraction},
            "recipe": {"epochs": s.epochs, "milestones": s.milestones, "base_lr": s.base_lr, "lr_decay": s.lr_decay,
                       "lr_groups": {"backbone": s.base_lr * self.recipe.lr_multi, "head": s.base_lr},
                       "batch_size": s.batch_size, "seed": s.seed, "precision": self.request.precision,
                       "options": self.recipe},
            "run": {"out": self.out, "resume_from": self.resume_from, "workers": self.workers},
            "not_used_by_train": self.notes,
        }))
    }

    /// Checks what training needs beyond the plan itself (a data folder, a
    /// batch that divides over `world` ranks); returns the data to train on.
    pub fn data_spec(&self, world: usize) -> Result<DataSpec> {
        let batch_size = self.schedule.batch_size;
        if batch_size == 0 || self.schedule.epochs == 0 {
            return Err(bad("--batch-size and --epochs must be at least 1"));
        }
        if batch_size % world != 0 {
            return Err(bad(format!(
                "--batch-size {batch_size} is the global batch: it must divide over the {world} ranks (remainder {})",
                batch_size % world
            )));
        }
        if let Some(manifest) = &self.request.manifest {
            return manifest_spec(manifest, self.request.val_manifest.as_deref(), self.request.val_fraction);
        }
        let root =
            self.data.clone().ok_or_else(|| bad("--data or --manifest is required (or --yaml with mask_root)"))?;
        if !root.is_dir() {
            return Err(bad(format!(
                "--data {}: no such folder (the official configs' *_lmdb files are not read: give the root of \
                 the prepared layout that `detris data prepare` writes)",
                root.display()
            )));
        }
        let (dataset, train_split, val_split) =
            (self.dataset.clone(), self.train_split.clone(), self.val_split.clone());
        Ok(DataSpec::prepared(&DataSource::new(root, dataset), train_split, val_split))
    }

    /// What the run may do with its folder: continue the run in it (`--resume`,
    /// or `--resume-from` a file in it), replace it (`--overwrite`), or neither.
    pub fn claim(&self) -> Claim {
        let inside = |f: &PathBuf| {
            let dir = f.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
            let canon = |p: &Path| std::fs::canonicalize(p).ok();
            dir.and_then(canon).is_some_and(|d| Some(d) == canon(&self.out))
        };
        if self.request.overwrite {
            Claim::Overwrite
        } else if self.request.resume || self.resume_from.as_ref().is_some_and(inside) {
            Claim::Resume
        } else {
            Claim::Fresh
        }
    }

    /// The options the trainer runs with, `precision` resolved for the device.
    pub fn options(&self, data: DataSpec, precision: Precision) -> TrainOptions {
        let r = &self.request;
        TrainOptions {
            data,
            schedule: self.schedule.clone(),
            precision,
            max_steps: r.max_steps,
            save_every: r.save_every,
            train_backbones: r.train_backbones,
            val_limit: r.val_limit,
            workers: self.workers,
            recipe: self.recipe.clone(),
            accumulate: r.accumulate as usize,
            max_bad_samples: r.max_bad_samples,
        }
    }
}

/// The validation fraction of `--manifest` without `--val-manifest` or `--val-fraction`.
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;

/// The seed of the split by photo: fixed, so that runs with other `--seed`s validate on the
/// same photos.
pub const HELD_OUT_SEED: u64 = 0;

/// `--manifest` with `--val-manifest`, or split by photo (`--val-fraction`).
fn manifest_spec(manifest: &std::path::Path, val: Option<&std::path::Path>, fraction: Option<f64>) -> Result<DataSpec> {
    for (flag, path) in [("--manifest", Some(manifest)), ("--val-manifest", val)] {
        if let Some(path) = path.filter(|p| !p.is_file()) {
            return Err(bad(format!("{flag} {}: no such file", path.display())));
        }
    }
    if let Some(val) = val {
        return Ok(DataSpec { train: SplitSource::manifest(manifest), val: SplitSource::manifest(val) });
    }
    let val_fraction = fraction.unwrap_or(DEFAULT_VAL_FRACTION);
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(bad(format!("--val-fraction {val_fraction}: give a fraction between 0 and 1")));
    }
    let side =
        |side| SplitSource::HeldOut { manifest: manifest.to_path_buf(), val_fraction, seed: HELD_OUT_SEED, side };
    Ok(DataSpec { train: side(HeldOutSide::Train), val: side(HeldOutSide::Val) })
}
