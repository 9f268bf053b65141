use anyhow::{Context, Result};
use clap::Args;
use detris::train::initial;
use detris::train::precision::MixedPrecision;
use detris::train::request::{BadRequest, RunPlan, TrainRequest};
use detris::train::run_folder::RunFolder;
use detris::train::trainer::Trainer;
use detris::weights::WeightFiles;

use super::model_args::ModelArgs;

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    request: TrainRequest,
    /// How best/last hold the frozen weights: copy (self-contained), link (name the start files by path and
    /// SHA-256), or auto (copy when the start files are at most 64 MiB).
    #[arg(long, value_enum, default_value_t)]
    base_weights: detris::weights::base::BaseWeights,
    /// Print the resolved configuration (model, recipe, data) as JSON and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    dist: super::distributed::DistArgs,
}

pub fn run(mut a: TrainArgs) -> Result<()> {
    // Data-parallel: start the ranks here, or join the launcher's group.
    let dist = a.dist.clone();
    if let super::distributed::Role::Launched(code) = dist.enter(&mut a.model.device)? {
        std::process::exit(code);
    }
    // The library's bad-input errors are usage errors (exit 2).
    train(a).map_err(|e| if e.downcast_ref::<BadRequest>().is_some() { super::usage(format!("{e:#}")) } else { e })
}

fn train(mut a: TrainArgs) -> Result<()> {
    let m = &a.model;
    let files = WeightFiles { checkpoint: m.checkpoint.clone(), dinov2: m.dinov2.clone(), clip: m.clip.clone() };
    let plan = RunPlan::resolve(&a.request, files, m.config_choice()?)?;
    // The model options as the plan resolved them (the YAML's files and config where none were given).
    let w = plan.weights.clone();
    (a.model.checkpoint, a.model.dinov2, a.model.clip) = (w.checkpoint, w.dinov2, w.clip);
    a.model.inline = plan.choice.inline.clone();
    if a.print_config {
        println!("{}", serde_json::to_string_pretty(&plan.to_json()?)?);
        return Ok(());
    }
    let data = plan.data_spec(detris::distributed::rank_and_size().1)?;
    // Before any loading: a precision the device cannot train in.
    let device = a.model.device.open().map_err(|e| super::usage(e.to_string()))?;
    let precision = a.request.precision;
    MixedPrecision::new(precision, device).map_err(|e| super::usage(e.to_string()))?;
    // The folder is this run's before any loading: refused if another run is in it.
    let main = detris::distributed::is_main();
    let folder = RunFolder::claim(&plan.out, plan.claim(), main, &mut |n| eprintln!("{n}"))
        .map_err(|e| super::usage(format!("--out: {e:#}")))?;
    let train_log = folder.log();
    // What the terminal shows, also in train.log.
    let say = |line: &str| {
        eprintln!("{line}");
        train_log.iter().for_each(|t| t.line(line));
    };
    let model = if a.request.random_init {
        let needs = || Err(super::usage("--random-init needs --config, --variant or --yaml"));
        let cfg = a.model.config_choice()?.resolve(needs)?;
        if a.model.threads > 0 {
            tch::set_num_threads(a.model.threads);
        }
        initial::random_model(cfg, device, plan.schedule.seed)?
    } else {
        a.model.load()?
    };
    let model = match a.request.dropout {
        Some(p) => initial::with_dropout(model, p)?,
        None => model,
    };
    if main {
        // Counts, and the sentences the model reads otherwise than written (a few examples).
        let known = model.known_token_ids.as_deref();
        detris::data::preflight::training_notes(&data, model.config.word_len, known)?.iter().for_each(|l| say(l));
    }
    let mut trainer = Trainer::new(model, plan.options(data, precision.resolve(device).precision), &plan.out)?;
    trainer.progress_bar = std::env::var_os("DETRIS_NO_PROGRESS").is_none();
    trainer.train_log = train_log.clone();
    if !a.request.random_init {
        trainer.base =
            detris::weights::base::linked_base(&plan.weights.clone().or_shipped()?, a.base_weights, &plan.out)?;
    }
    let last = trainer.last_path();
    let resume = match &plan.resume_from {
        Some(from) => Some((from.clone(), "--resume-from")),
        None if a.request.resume && last.exists() => Some((last, "--resume from")),
        None => {
            if a.request.resume {
                say(&format!("--resume: no {} yet, starting from the beginning", last.display()));
            }
            None
        }
    };
    if let Some((from, flag)) = resume {
        // With --resume every rank reads rank 0's checkpoint (one folder: shared by the ranks).
        trainer.resume_from(&from).with_context(|| format!("{flag} {}", from.display()))?;
        if main {
            say(&format!("resuming at epoch {}, step {}", trainer.state.epoch + 1, trainer.state.global_step));
        }
    }
    let run = trainer.run(&mut |line| eprintln!("{line}"));
    run.inspect_err(|e| train_log.iter().for_each(|t| t.line(&format!("Error: {e:#}"))))?;
    if !main {
        return Ok(()); // rank 0 reports
    }
    if let Some(best) = trainer.state.best_miou {
        let (split, epoch) = (trainer.opts.data.val_label(), trainer.state.best_epoch.unwrap_or(0));
        say(&format!("best {split} mIoU {best:.4} at epoch {epoch} → {}", trainer.best_path().display()));
    }
    Ok(())
}
