use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use detris::data::DataSource;
use detris::eval::{evaluate, table, EvalOutputs, EvalRequest};
use detris_io::data::loader::Mode;

use super::model_args::{InferencePrecision, ModelArgs};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    precision: InferencePrecision,
    /// Root of the prepared layout (anns/, masks/, images/train2014/).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "refcoco")]
    dataset: String,
    /// Splits to evaluate, e.g. val,testA,testB.
    #[arg(long, value_delimiter = ',', default_value = "val")]
    split: Vec<String>,
    /// Evaluate only the first N refs of each split (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Write the metrics here as JSON.
    #[arg(long, default_value = "eval.json")]
    json: PathBuf,
    /// Write an overlay PNG of every prediction into this folder.
    #[arg(long)]
    overlays: Option<PathBuf>,
    #[command(flatten)]
    outputs: OutputArgs,
    #[command(flatten)]
    dist: super::distributed::DistArgs,
}

/// What `detris eval` writes besides the summary (the per-sentence records always go to
/// `<json>` with the extension `.sentences.jsonl`).
#[derive(Args)]
struct OutputArgs {
    #[command(flatten)]
    threshold: super::segment::ThresholdArg,
    /// Write what the official test.py --visualize writes into DIR/<split>/: the photo
    /// (<ref>-img), the ground truth (<ref>-mask.png), each prediction
    /// (<ref>-iou=<IoU>-<sentence>.png) and its overlay (...-overlay.png).
    #[arg(long, value_name = "DIR")]
    visualize: Option<PathBuf>,
}

impl OutputArgs {
    fn for_split(&self, split: &str, overlays: Option<PathBuf>) -> EvalOutputs {
        EvalOutputs {
            threshold: self.threshold.threshold,
            records: true,
            visualize: self.visualize.as_ref().map(|d| d.join(split)),
            overlays,
        }
    }
}

/// `eval.json` → `eval.sentences.jsonl`.
pub fn records_path(json: &std::path::Path) -> PathBuf {
    json.with_extension("sentences.jsonl")
}

pub fn run(mut a: EvalArgs) -> Result<()> {
    // Data-parallel: start the ranks here, or join the launcher's group.
    let dist = a.dist.clone();
    if let super::distributed::Role::Launched(code) = dist.enter(&mut a.model.device)? {
        std::process::exit(code);
    }
    if a.batch_size == 0 {
        return Err(super::usage("--batch-size must be at least 1"));
    }
    let (_, world) = detris::distributed::rank_and_size();
    if a.batch_size % world != 0 {
        return Err(super::usage(format!(
            "--batch-size {} is the global batch: it must divide over the {world} ranks (remainder {})",
            a.batch_size,
            a.batch_size % world
        )));
    }
    if !a.data.is_dir() {
        return Err(super::usage(format!("--data {}: no such folder", a.data.display())));
    }
    let model = a.model.load_in(a.precision.precision)?;
    let mut reports = Vec::new();
    let data = DataSource::new(&a.data, &a.dataset);
    for split in &a.split {
        let request = EvalRequest {
            data: data.clone(),
            split: split.clone(),
            mode: Mode::Test,
            limit: (a.limit > 0).then_some(a.limit),
            batch_size: a.batch_size,
            workers: a.workers,
            outputs: a.outputs.for_split(split, a.overlays.as_ref().map(|d| d.join(split))),
        };
        let r = evaluate(&model, &request)?;
        if !r.resized_masks.is_empty() {
            eprintln!(
                "note: {} ground-truth masks had another size than their photo and were resized to it (as the maintainers advise)",
                r.resized_masks.len()
            );
        }
        reports.push(r);
    }
    if !detris::distributed::is_main() {
        return Ok(()); // rank 0 prints and writes the gathered figures
    }
    print!("{}", table(&reports));
    std::fs::write(&a.json, serde_json::to_string_pretty(&reports)?)
        .with_context(|| format!("{}: cannot write", a.json.display()))?;
    let records = records_path(&a.json);
    let mut lines = String::new();
    for r in reports.iter().flat_map(|r| &r.records) {
        lines += &serde_json::to_string(r)?;
        lines.push('\n');
    }
    std::fs::write(&records, lines).with_context(|| format!("{}: cannot write", records.display()))?;
    eprintln!("metrics written to {}, one record per sentence to {}", a.json.display(), records.display());
    Ok(())
}
