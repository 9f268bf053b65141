use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use detris::device::Precision;
use detris::train::data::DataSpec;
use detris::train::trainer::{TrainOptions, Trainer};
use detris::{Detris, DetrisConfig};

use detris::train::official_yaml::OfficialYaml;

use super::model_args::ModelArgs;

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Start from randomly initialised backbones (with --config or --variant)
    /// instead of pretrained files: the first stage of the shipped model.
    #[arg(long)]
    random_init: bool,
    /// An official DETRIS YAML config (config/<dataset>/DETRIS_*.yaml): its
    /// keys set the defaults below and the model; options given here win.
    #[arg(long)]
    yaml: Option<PathBuf>,
    /// Root of the prepared layout (anns/, masks/, images/train2014/)
    /// [YAML: mask_root/../..].
    #[arg(long)]
    data: Option<PathBuf>,
    /// [default: refcoco; YAML: dataset]
    #[arg(long)]
    dataset: Option<String>,
    /// [default: train; YAML: train_split]
    #[arg(long)]
    train_split: Option<String>,
    /// The split that selects `best` (the official RefCOCO+ configs use testB)
    /// [default: val; YAML: val_lmdb's name].
    #[arg(long)]
    val_split: Option<String>,
    /// [default: 50; YAML: epochs]
    #[arg(long)]
    epochs: Option<usize>,
    /// Epochs after which the lr decays (MultiStepLR) [default: 35; YAML: milestones].
    #[arg(long, value_delimiter = ',')]
    milestones: Option<Vec<usize>>,
    /// [default: 1e-4; YAML: base_lr]
    #[arg(long)]
    lr: Option<f64>,
    /// [default: 0.1; YAML: lr_decay]
    #[arg(long)]
    lr_decay: Option<f64>,
    /// [default: 32; YAML: batch_size]
    #[arg(long)]
    batch_size: Option<usize>,
    /// [default: 0; YAML: manual_seed]
    #[arg(long)]
    seed: Option<u64>,
    /// f32, or mixed precision (autocast): bf16 (CPU or CUDA), f16 with loss
    /// scaling (CUDA; the official recipe), or auto (bf16 where the hardware has bf16 matrix units).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
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

pub fn run(mut a: TrainArgs) -> Result<()> {
    let yaml = match &a.yaml {
        Some(p) => Some(OfficialYaml::read(p).map_err(|e| super::usage(format!("--yaml: {e:#}")))?),
        None => None,
    };
    let y = yaml.as_ref();
    let data = a
        .data
        .clone()
        .or_else(|| y?.data_root())
        .ok_or_else(|| super::usage("--data is required (or --yaml with mask_root)"))?;
    let dataset = a.dataset.clone().or_else(|| y?.string("dataset")).unwrap_or_else(|| "refcoco".into());
    let train_split = a.train_split.clone().or_else(|| y?.string("train_split")).unwrap_or_else(|| "train".into());
    let val_split = a.val_split.clone().or_else(|| y?.val_split()).unwrap_or_else(|| "val".into());
    let epochs = a.epochs.or_else(|| y?.usize("epochs")).unwrap_or(50);
    let milestones = a.milestones.clone().or_else(|| y?.list("milestones")).unwrap_or_else(|| vec![35]);
    let lr = a.lr.or_else(|| y?.f64("base_lr")).unwrap_or(1e-4);
    let lr_decay = a.lr_decay.or_else(|| y?.f64("lr_decay")).unwrap_or(0.1);
    let batch_size = a.batch_size.or_else(|| y?.usize("batch_size")).unwrap_or(32);
    let seed = a.seed.or_else(|| y.and_then(|y| y.usize("manual_seed")).map(|s| s as u64)).unwrap_or(0);
    if let Some(y) = y {
        // The YAML names the model and the pretrained files; options win.
        if a.model.config.is_none() && a.model.variant.is_none() && a.model.checkpoint.is_none() {
            a.model.inline = Some(y.model_config()?);
        }
        if a.model.dinov2.is_none() && a.model.checkpoint.is_none() {
            a.model.dinov2 = y.string("dino_pretrain").map(PathBuf::from);
            a.model.clip = a.model.clip.clone().or_else(|| y.string("clip_pretrain").map(PathBuf::from));
        }
    }
    if batch_size == 0 || epochs == 0 {
        return Err(super::usage("--batch-size and --epochs must be at least 1"));
    }
    if !data.is_dir() {
        return Err(super::usage(format!("--data {}: no such folder", data.display())));
    }
    // Before any loading: a precision the device cannot train in.
    let device = a.model.device.open().map_err(|e| super::usage(e.to_string()))?;
    detris::train::precision::MixedPrecision::new(a.precision, device).map_err(|e| super::usage(e.to_string()))?;
    let precision = a.precision.resolve(device).precision;
    let mut model = if a.random_init {
        let cfg = match (&a.model.inline, &a.model.config, &a.model.variant) {
            (Some(c), _, _) => c.clone(),
            (None, Some(p), _) => DetrisConfig::from_json_file(p)?,
            (None, None, Some(v)) => DetrisConfig::variant(v).map_err(|e| super::usage(e.to_string()))?,
            (None, None, None) => return Err(super::usage("--random-init needs --config, --variant or --yaml")),
        };
        if a.model.threads > 0 {
            tch::set_num_threads(a.model.threads);
        }
        tch::manual_seed(seed as i64);
        let m = Detris::new(cfg, device)?;
        detris::weights::init_backbones_randomly(&m, seed);
        m
    } else {
        a.model.load()?
    };
    if let Some(p) = a.dropout {
        model.config.dropout = p;
        model = rebuild_with_dropout(model)?;
    }
    let opts = TrainOptions {
        data: DataSpec { root: data, dataset, train_split, val_split },
        epochs,
        milestones,
        base_lr: lr,
        lr_decay,
        batch_size,
        seed,
        precision,
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
