use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use detris::data::{DataSource, SplitSource};
use detris::eval::{evaluate, table, EvalOutputs, EvalRequest};
use detris_io::data::loader::Mode;

use super::model_args::InferenceArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    inference: InferenceArgs,
    /// Root of the prepared layout (anns/, masks/, images/train2014/) [YAML: mask_root/../..].
    #[arg(long, required_unless_present_any = ["manifest", "yaml"])]
    data: Option<PathBuf>,
    /// [default: refcoco; YAML: dataset]
    #[arg(long)]
    dataset: Option<String>,
    /// Splits to evaluate, e.g. val,testA,testB [default: val; YAML: test_split].
    #[arg(long, value_delimiter = ',')]
    split: Option<Vec<String>>,
    /// Evaluate the refs of a JSON Lines manifest instead (each line: image, sentences and
    /// mask, mask_rle or mask_polygons; lines without a ground truth are reported and left out).
    #[arg(long, conflicts_with_all = ["data", "dataset", "split"])]
    manifest: Option<PathBuf>,
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
    if let super::distributed::Role::Launched(code) = dist.enter(&mut a.inference.model.device)? {
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
    let yaml = a.inference.yaml.apply(&mut a.inference.model)?;
    let sources = sources(&a, yaml.as_ref())?;
    if let (None, Some(y)) = (&a.outputs.visualize, &yaml) {
        // test.py --config with visualize: True writes into <output_dir>/vis.
        a.outputs.visualize = y.bool("visualize").filter(|&v| v).and_then(|_| y.output_dir()).map(|d| d.join("vis"));
    }
    let model = a.inference.model.load_in(a.inference.precision.precision)?;
    let mut reports = Vec::new();
    for source in sources {
        let split = source.label();
        if let SplitSource::Manifest { manifest } = &source {
            let bad = detris_io::data::manifest::ManifestIndex::open(manifest, true)?.bad_lines().to_vec();
            for line in bad.iter().take(5) {
                eprintln!("warning: {}: {line} (left out)", manifest.display());
            }
            if bad.len() > 5 {
                eprintln!(
                    "warning: {}: {} lines left out in all (`detris data check` lists them)",
                    manifest.display(),
                    bad.len()
                );
            }
        }
        let request = EvalRequest {
            mode: Mode::Test,
            limit: (a.limit > 0).then_some(a.limit),
            batch_size: a.batch_size,
            workers: a.workers,
            outputs: a.outputs.for_split(&split, a.overlays.as_ref().map(|d| d.join(&split))),
            ..EvalRequest::of(source)
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

/// What to evaluate: the manifest, or the splits of the prepared data set (flags, then the
/// YAML's `mask_root`, `dataset` and `test_split`, then refcoco/val).
fn sources(a: &EvalArgs, yaml: Option<&detris::train::yaml_config::YamlConfig>) -> Result<Vec<SplitSource>> {
    if let Some(manifest) = &a.manifest {
        if !manifest.is_file() {
            return Err(super::usage(format!("--manifest {}: no such file", manifest.display())));
        }
        return Ok(vec![SplitSource::manifest(manifest)]);
    }
    let root = a.data.clone().or_else(|| yaml.and_then(|y| y.data_root()));
    let root = root.ok_or_else(|| super::usage("--data is required (the YAML has no mask_root)"))?;
    if !root.is_dir() {
        return Err(super::usage(format!("--data {}: no such folder", root.display())));
    }
    let dataset =
        a.dataset.clone().or_else(|| yaml.and_then(|y| y.string("dataset"))).unwrap_or_else(|| "refcoco".into());
    let splits = a.split.clone().or_else(|| yaml.and_then(|y| y.string("test_split")).map(|s| vec![s]));
    let data = DataSource::new(root, dataset);
    Ok(splits.unwrap_or_else(|| vec!["val".into()]).into_iter().map(|s| data.split(s)).collect())
}
