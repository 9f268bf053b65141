use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use detris::weights;
use detris_io::data::prepared::read_split;
use detris_io::tokenizer::{ClipTokenizer, EOT, SOT};

use super::model_args::ModelArgs;

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The file to write: detris safetensors (every weight, config and
    /// checksum in its metadata: self-contained, even from a checkpoint that
    /// names its base) or, with --format pth, the official checkpoint container.
    #[arg(long)]
    out: PathBuf,
    /// safetensors, or pth: the container the official train.py writes
    /// (`module.` keys, empty Adam state, epoch 0), which its test.py and
    /// demo.py load.
    #[arg(long, value_enum, default_value = "safetensors")]
    format: ExportFormat,
    /// Store the weights as f16 (half the size; widened exactly on load).
    #[arg(long)]
    f16: bool,
    /// Keep only the token-embedding rows of the words in this prepared data
    /// set (every anns/<dataset>/*.json under it).
    #[arg(long)]
    prune_vocab: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    Safetensors,
    Pth,
}

/// Token ids of every sentence of a prepared data set (every split of every
/// data set under anns/), plus padding, SOT, EOT.
fn vocabulary(root: &std::path::Path, word_len: usize) -> Result<Vec<i64>> {
    let mut ids: BTreeSet<i64> = [0, SOT, EOT].into();
    let anns = root.join("anns");
    for ds in std::fs::read_dir(&anns).with_context(|| format!("{}: no anns/ folder", anns.display()))? {
        let ds = ds?.path();
        let dataset = ds.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for split in std::fs::read_dir(&ds).with_context(|| format!("{}: cannot list", ds.display()))? {
            let path = split?.path();
            let Some(split) = path.file_stem().filter(|_| path.extension().is_some_and(|e| e == "json")) else {
                continue;
            };
            for r in read_split(root, &dataset, &split.to_string_lossy())? {
                for s in &r.sentences {
                    ids.extend(ClipTokenizer::global().tokenize(&s.sent, word_len)?.ids);
                }
            }
        }
    }
    Ok(ids.into_iter().collect())
}

pub fn run(a: ExportArgs) -> Result<()> {
    let model = a.model.load()?;
    if a.format == ExportFormat::Pth {
        if a.f16 || a.prune_vocab.is_some() {
            return Err(super::usage("--f16 and --prune-vocab make files the official code cannot load"));
        }
        detris::train::checkpoint::pth::export_model(&a.out, &model)?;
        let size = std::fs::metadata(&a.out)?.len();
        eprintln!("wrote {} ({:.1} MB, official container)", a.out.display(), size as f64 / 1e6);
        return Ok(());
    }
    let mut shrink = weights::Shrink { keep_token_ids: None, f16: a.f16 };
    if let Some(root) = &a.prune_vocab {
        let ids = vocabulary(root, model.config.word_len)?;
        eprintln!("keeping {} of {} token-embedding rows", ids.len(), model.config.vocab_size);
        shrink.keep_token_ids = Some(ids);
    }
    weights::export_model(&model, &a.out, &shrink)?;
    let size = std::fs::metadata(&a.out)?.len();
    eprintln!("wrote {} ({:.1} MB)", a.out.display(), size as f64 / 1e6);
    Ok(())
}
