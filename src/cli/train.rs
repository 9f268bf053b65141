use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use detris::train::data::DataSpec;
use detris::train::trainer::{TrainOptions, Trainer};
use detris::{Detris, DetrisConfig};

use super::model_args::ModelArgs;

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Start from randomly initialised backbones (with --config or --variant)
    /// instead of pretrained files: the first stage of the shipped model.
    #[arg(long)]
    random_init: bool,
    /// Root of the prepared layout (anns/, masks/, images/train2014/).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "refcoco")]
    dataset: String,
    #[arg(long, default_value = "train")]
    train_split: String,
    /// The split that selects `best` (the official RefCOCO+ configs use testB).
    #[arg(long, default_value = "val")]
    val_split: String,
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    /// Epochs after which the lr decays (MultiStepLR).
    #[arg(long, value_delimiter = ',', default_value = "35")]
    milestones: Vec<usize>,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    lr_decay: f64,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// f32, or f16 (CUDA mixed precision with loss scaling).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Stop after this many optimizer steps in all.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Also write `last` every N steps.
    #[arg(long)]
    save_every: Option<u64>,
    /// Train the backbones as well (not the official recipe).
    #[arg(long)]
    train_backbones: bool,
    /// Validate on at most this many refs (0 = all).
    #[arg(long, default_value_t = 0)]
    val_limit: usize,
    /// Override the dropout of the config.
    #[arg(long)]
    dropout: Option<f64>,
    /// Data loading threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Run folder: last.safetensors, best.safetensors, metrics.jsonl, training.png.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Continue the run in --out from its last.safetensors.
    #[arg(long)]
    resume: bool,
}

pub fn run(a: TrainArgs) -> Result<()> {
    if a.batch_size == 0 || a.epochs == 0 {
        return Err(super::usage("--batch-size and --epochs must be at least 1"));
    }
    if !a.data.is_dir() {
        return Err(super::usage(format!("--data {}: no such folder", a.data.display())));
    }
    let mut model = if a.random_init {
        let cfg = match (&a.model.config, &a.model.variant) {
            (Some(p), _) => DetrisConfig::from_json_file(p)?,
            (None, Some(v)) => DetrisConfig::variant(v).map_err(|e| super::usage(e.to_string()))?,
            (None, None) => return Err(super::usage("--random-init needs --config or --variant")),
        };
        if a.model.threads > 0 {
            tch::set_num_threads(a.model.threads);
        }
        let device = detris::bench::parse_device(&a.model.device).map_err(|e| super::usage(e.to_string()))?;
        tch::manual_seed(a.seed as i64);
        let m = Detris::new(cfg, device)?;
        detris::weights::init_backbones_randomly(&m, a.seed);
        m
    } else {
        a.model.load()?
    };
    if let Some(p) = a.dropout {
        model.config.dropout = p;
        model = rebuild_with_dropout(model)?;
    }
    let opts = TrainOptions {
        data: DataSpec { root: a.data.clone(), dataset: a.dataset.clone(), train_split: a.train_split.clone(), val_split: a.val_split.clone() },
        epochs: a.epochs,
        milestones: a.milestones.clone(),
        base_lr: a.lr,
        lr_decay: a.lr_decay,
        batch_size: a.batch_size,
        seed: a.seed,
        precision: a.precision.clone(),
        max_steps: a.max_steps,
        save_every: a.save_every,
        train_backbones: a.train_backbones,
        val_limit: a.val_limit,
        workers: a.workers,
    };
    let mut trainer = Trainer::new(model, opts, &a.out)?;
    let last = trainer.last_path();
    if a.resume && last.exists() {
        trainer.resume(&last).with_context(|| format!("--resume from {}", last.display()))?;
        eprintln!("resuming at epoch {}, step {}", trainer.state.epoch + 1, trainer.state.global_step);
    } else if a.resume {
        eprintln!("--resume: no {} yet, starting from the beginning", last.display());
    }
    trainer.run(&mut |line| eprintln!("{line}"))?;
    if let Some(best) = trainer.state.best_miou {
        eprintln!(
            "best {} mIoU {:.4} at epoch {} → {}",
            trainer.opts.data.val_split,
            best,
            trainer.state.best_epoch.unwrap_or(0),
            trainer.best_path().display()
        );
    }
    Ok(())
}

/// Dropout probabilities are read from the config at forward time by the
/// modules built with it; rebuilding keeps the loaded values.
fn rebuild_with_dropout(model: Detris) -> Result<Detris> {
    let fresh = Detris::new(model.config.clone(), model.device())?;
    let map = detris::weights::state_dict(&model, false)?;
    detris::weights::load_map(&fresh, &map, true)?.check("dropout override")?;
    Ok(fresh)
}
