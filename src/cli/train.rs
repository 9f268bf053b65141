use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use detris::data::{DataSource, DataSpec};
use detris::device::Precision;
use detris::train::trainer::{TrainOptions, Trainer};
use detris::Detris;

use detris::train::official_yaml::OfficialYaml;
use detris::train::recipe::{Recipe, SaveFormat};

use super::model_args::ModelArgs;

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Start from randomly initialised backbones (with --config or --variant)
    /// instead of pretrained files: the first stage of the shipped model.
    #[arg(long)]
    random_init: bool,
    // -- The official project's files: its YAML configs, --opts, .pth checkpoints.
    /// An official DETRIS YAML config (config/<dataset>/DETRIS_*.yaml), read
    /// verbatim: its keys set the defaults below, the model and the recipe;
    /// options given here win. Without it the defaults are the official
    /// DETRIS-B RefCOCO recipe.
    #[arg(long)]
    yaml: Option<PathBuf>,
    /// Print the resolved configuration (model, recipe, data) as JSON and exit.
    #[arg(long)]
    print_config: bool,
    /// Which checkpoints to write: detris's safetensors (resumable
    /// mid-epoch), the official last_model.pth / best_model.pth after every
    /// epoch, or both.
    #[arg(long, value_enum)]
    save_format: Option<SaveFormat>,
    /// Continue from this checkpoint: an official last_model.pth (its Adam
    /// state and epoch) or a detris last.safetensors [YAML: resume].
    #[arg(long)]
    resume_from: Option<PathBuf>,
    /// Override config keys as the official `--opts`: KEY VALUE pairs, the
    /// key's last dotted part naming it (TRAIN.base_lr 2e-4), values as
    /// Python literals. Must come last.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_names = ["KEY", "VALUE"])]
    opts: Vec<String>,
    // -- end of the official-files block.
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
    /// [default: val; YAML: val_split].
    #[arg(long)]
    val_split: Option<String>,
    /// [default: 65; YAML: epochs]
    #[arg(long)]
    epochs: Option<usize>,
    /// Epochs after which the lr decays (MultiStepLR) [default: 35,55; YAML: milestones].
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
    /// Data loading threads [default: 2; YAML: workers].
    #[arg(long)]
    workers: Option<usize>,
    /// Run folder: last.safetensors, best.safetensors, metrics.jsonl,
    /// training.png [default: runs/train; YAML: output_folder/exp_name].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its last.safetensors.
    #[arg(long)]
    resume: bool,
    /// Data-parallel runs: SyncBatchNorm (BatchNorm statistics over the
    /// global batch, as the official `sync_bn: True`) [YAML: sync_bn].
    #[arg(long)]
    sync_bn: Option<bool>,
    #[command(flatten)]
    dist: super::distributed::DistArgs,
}

pub fn run(mut a: TrainArgs) -> Result<()> {
    // Data-parallel: start the ranks here, or join the launcher's group.
    let dist = a.dist.clone();
    match dist.enter(&mut a.model.device)? {
        super::distributed::Role::Launched(code) => std::process::exit(code),
        super::distributed::Role::Rank | super::distributed::Role::Plain => {}
    }
    let from_file = a.yaml.is_some();
    let mut yaml = match &a.yaml {
        Some(p) => OfficialYaml::read(p).map_err(|e| super::usage(format!("--yaml: {e:#}")))?,
        None => OfficialYaml::detris_b_refcoco(),
    };
    yaml.merge_opts(&a.opts).map_err(|e| super::usage(format!("{e:#}")))?;
    let notes = yaml.check_and_notes().map_err(|e| super::usage(format!("{e:#}")))?;
    let y = &yaml;
    let data = a.data.clone().or_else(|| if from_file { y.data_root() } else { None });
    let dataset = a.dataset.clone().or_else(|| y.string("dataset")).unwrap_or_else(|| "refcoco".into());
    let train_split = a.train_split.clone().or_else(|| y.string("train_split")).unwrap_or_else(|| "train".into());
    let val_split = a.val_split.clone().or_else(|| y.string("val_split")).unwrap_or_else(|| "val".into());
    let epochs = a.epochs.or_else(|| y.usize("epochs")).unwrap_or(65);
    let milestones = a.milestones.clone().or_else(|| y.list("milestones")).unwrap_or_else(|| vec![35, 55]);
    let lr = a.lr.or_else(|| y.f64("base_lr")).unwrap_or(1e-4);
    let lr_decay = a.lr_decay.or_else(|| y.f64("lr_decay")).unwrap_or(0.1);
    let batch_size = a.batch_size.or_else(|| y.usize("batch_size")).unwrap_or(32);
    let seed = a.seed.or_else(|| y.usize("manual_seed").map(|s| s as u64)).unwrap_or(0);
    let defaults = Recipe::default();
    let recipe = Recipe {
        lr_multi: y.f64("lr_multi").unwrap_or(defaults.lr_multi),
        weight_decay: y.f64("weight_decay").unwrap_or(defaults.weight_decay),
        max_norm: y.f64("max_norm").unwrap_or(defaults.max_norm),
        start_epoch: y.usize("start_epoch").unwrap_or(defaults.start_epoch),
        save_freq: y.usize("save_freq").unwrap_or(defaults.save_freq),
        evaluate: y.bool("evaluate").unwrap_or(defaults.evaluate),
        batch_size_val: y.usize("batch_size_val").unwrap_or(defaults.batch_size_val),
        print_freq: y.usize("print_freq").map_or(defaults.print_freq, |f| f as u64),
        save_format: a.save_format.unwrap_or_default(),
    };
    // Launcher settings come from a YAML file only (the built-in recipe's 32 workers suit the Python loader).
    let workers = a.workers.or_else(|| if from_file { y.usize("workers") } else { None }).unwrap_or(2);
    let out = a.out.clone().or_else(|| if from_file { y.output_dir() } else { None });
    let out = out.unwrap_or_else(|| PathBuf::from("runs/train"));
    let resume_from = a.resume_from.clone().or_else(|| y.string("resume").map(PathBuf::from));
    if from_file {
        // The YAML names the model, the pretrained files and the initial weights; options win.
        if a.model.config.is_none() && a.model.variant.is_none() && a.model.checkpoint.is_none() {
            a.model.inline = Some(y.model_config().map_err(|e| super::usage(format!("--yaml: {e:#}")))?);
        }
        if a.model.checkpoint.is_none() {
            a.model.checkpoint = y.string("weight").map(PathBuf::from);
        }
        if a.model.dinov2.is_none() && a.model.checkpoint.is_none() {
            a.model.dinov2 = y.string("dino_pretrain").map(PathBuf::from);
            a.model.clip = a.model.clip.clone().or_else(|| y.string("clip_pretrain").map(PathBuf::from));
        }
    }
    if a.print_config {
        let choice = a.model.config_choice()?;
        let chosen = choice.inline.is_some() || choice.config.is_some() || choice.variant.is_some();
        let model = if chosen { Some(choice.resolve(|| unreachable!("a config was chosen"))?) } else { None };
        let resolved = serde_json::json!({
            "yaml": a.yaml, "model": model,
            "weights": {"checkpoint": a.model.checkpoint, "dinov2": a.model.dinov2, "clip": a.model.clip},
            "data": {"root": data, "dataset": dataset, "train_split": train_split, "val_split": val_split,
                     "test_split": y.string("test_split")},
            "recipe": {"epochs": epochs, "milestones": milestones, "base_lr": lr, "lr_decay": lr_decay,
                       "lr_groups": {"backbone": lr * recipe.lr_multi, "head": lr},
                       "batch_size": batch_size, "seed": seed, "precision": a.precision, "options": recipe},
            "run": {"out": out, "resume_from": resume_from, "workers": workers},
            "not_used_by_train": notes,
        });
        println!("{}", serde_json::to_string_pretty(&resolved)?);
        return Ok(());
    }
    let data = data.ok_or_else(|| super::usage("--data is required (or --yaml with mask_root)"))?;
    if batch_size == 0 || epochs == 0 {
        return Err(super::usage("--batch-size and --epochs must be at least 1"));
    }
    let (_, world) = detris::distributed::rank_and_size();
    if batch_size % world != 0 {
        return Err(super::usage(format!(
            "--batch-size {batch_size} is the global batch: it must divide over the {world} ranks (remainder {})",
            batch_size % world
        )));
    }
    detris::distributed::sync_bn::enable(a.sync_bn.or_else(|| y.bool("sync_bn")).unwrap_or(true));
    if !data.is_dir() {
        return Err(super::usage(format!(
            "--data {}: no such folder (the official configs' *_lmdb files are not read: give the root of \
             the prepared layout that `detris data prepare` writes)",
            data.display()
        )));
    }
    // Before any loading: a precision the device cannot train in.
    let device = a.model.device.open().map_err(|e| super::usage(e.to_string()))?;
    detris::train::precision::MixedPrecision::new(a.precision, device).map_err(|e| super::usage(e.to_string()))?;
    let precision = a.precision.resolve(device).precision;
    let mut model = if a.random_init {
        let cfg = a
            .model
            .config_choice()?
            .resolve(|| Err(super::usage("--random-init needs --config, --variant or --yaml")))?;
        if a.model.threads > 0 {
            tch::set_num_threads(a.model.threads);
        }
        tch::manual_seed(seed as i64);
        let m = Detris::new(cfg, device)?;
        detris::model::init::init_backbones_randomly(&m, seed);
        m
    } else {
        a.model.load()?
    };
    if let Some(p) = a.dropout {
        model.config.dropout = p;
        model = rebuild_with_dropout(model)?;
    }
    let opts = TrainOptions {
        data: DataSpec { source: DataSource::new(data, dataset), train_split, val_split },
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
        workers,
        recipe,
    };
    let mut trainer = Trainer::new(model, opts, &out)?;
    let last = trainer.last_path();
    let resumed = if let Some(from) = &resume_from {
        if detris::train::official_pth::is_torch_zip(from)? {
            trainer.resume_official(from).with_context(|| format!("--resume-from {}", from.display()))?;
        } else {
            trainer.resume(from).with_context(|| format!("--resume-from {}", from.display()))?;
        }
        true
    } else if a.resume && last.exists() {
        // Every rank resumes from rank 0's checkpoint (one folder: shared by the ranks).
        trainer.resume(&last).with_context(|| format!("--resume from {}", last.display()))?;
        true
    } else {
        if a.resume {
            eprintln!("--resume: no {} yet, starting from the beginning", last.display());
        }
        false
    };
    if resumed && detris::distributed::is_main() {
        eprintln!("resuming at epoch {}, step {}", trainer.state.epoch + 1, trainer.state.global_step);
    }
    trainer.run(&mut |line| eprintln!("{line}"))?;
    if !detris::distributed::is_main() {
        return Ok(()); // rank 0 reports
    }
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
