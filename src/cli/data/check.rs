//! `detris data check`: what a manifest or a prepared split holds and what is wrong with it,
//! as a table or JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use detris::data::{DataSource, SplitSource};
use detris_io::data::check::{check, shared_photos, CheckOptions, CheckReport, Listed, SentenceNote};
use serde::Serialize;

use crate::cli::model_args::ModelArgs;

#[derive(Args)]
pub struct CheckArgs {
    /// A JSON Lines manifest; or give --data, --dataset and --split for a prepared split.
    #[arg(required_unless_present = "split", conflicts_with_all = ["data", "split"])]
    path: Option<PathBuf>,
    /// Root of the prepared layout (with --split).
    #[arg(long, requires = "split")]
    data: Option<PathBuf>,
    #[arg(long, default_value = "refcoco")]
    dataset: String,
    /// A split of --data, e.g. train.
    #[arg(long, requires = "data")]
    split: Option<String>,
    /// The validation side, checked too: a manifest, or (with --split) another split of
    /// --data; the photos both sides use are listed.
    #[arg(long, value_name = "PATH_OR_SPLIT")]
    val: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Examples listed per finding.
    #[arg(long, default_value_t = 20)]
    max_listed: usize,
    /// Skip reading the photos' headers and decoding the masks (sizes and areas).
    #[arg(long)]
    quick: bool,
    /// The model whose word length and vocabulary the sentences are checked against
    /// (default: the shipped model).
    #[command(flatten)]
    model: ModelArgs,
}

/// Everything `data check` found.
#[derive(Serialize)]
struct Checked {
    train: CheckReport,
    val: Option<CheckReport>,
    /// Photos used by both sides (absent without --val).
    shared_photos: Option<Listed<PathBuf>>,
}

impl CheckArgs {
    fn sources(&self) -> Result<(SplitSource, Option<SplitSource>)> {
        let exists = |p: &PathBuf| {
            if p.is_file() {
                Ok(())
            } else {
                Err(crate::cli::usage(format!("{}: no such file", p.display())))
            }
        };
        if let Some(path) = &self.path {
            exists(path)?;
            let val = self.val.as_ref().map(PathBuf::from);
            val.iter().try_for_each(exists)?;
            return Ok((SplitSource::manifest(path), val.map(SplitSource::manifest)));
        }
        let (Some(root), Some(split)) = (&self.data, &self.split) else {
            return Err(crate::cli::usage("give a manifest, or --data and --split"));
        };
        let data = DataSource::new(root, &self.dataset);
        Ok((data.split(split), self.val.as_ref().map(|v| data.split(v))))
    }
}

pub fn run(a: CheckArgs) -> Result<()> {
    let (train, val) = a.sources()?;
    let model = a.model.load()?;
    let opts = CheckOptions {
        word_len: model.config.word_len,
        vocabulary: model.known_token_ids.as_ref().map(|ids| ids.iter().copied().collect()),
        photo_sizes: !a.quick,
        mask_areas: !a.quick,
        max_listed: a.max_listed,
    };
    let train = train.open()?;
    let val = val.map(|v| v.open()).transpose()?;
    let shared = val.as_ref().map(|v| {
        let all = shared_photos(&train, v);
        Listed { count: all.len(), examples: all.into_iter().take(a.max_listed).collect() }
    });
    let checked =
        Checked { train: check(&train, &opts), val: val.as_ref().map(|v| check(v, &opts)), shared_photos: shared };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&checked)?);
        return Ok(());
    }
    let vocabulary = opts.vocabulary.as_ref().map(|v| v.len());
    print!("{}", table("train", &checked.train, vocabulary));
    if let Some(v) = &checked.val {
        print!("\n{}", table("val", v, vocabulary));
    }
    if let Some(shared) = &checked.shared_photos {
        println!("\nphotos on both sides: {}", shared.count);
        for p in &shared.examples {
            println!("  {}", p.display());
        }
    }
    Ok(())
}

/// One report as aligned lines, every finding with its examples.
fn table(side: &str, r: &CheckReport, vocabulary: Option<usize>) -> String {
    let mut s = format!("{side}: {}\n", r.source);
    let mut row = |name: &str, value: String| s += &format!("  {name:<28} {value}\n");
    if let Some(lines) = r.lines {
        row("lines", lines.to_string());
    }
    row("refs", r.refs.to_string());
    row("sentences", r.sentences.to_string());
    row("photos", r.photos.to_string());
    row("bad lines", r.bad_lines.len().to_string());
    row("unreadable or empty", r.problems.count.to_string());
    if let Some(p) = &r.photo_sizes {
        let common: Vec<String> = p.most_common.iter().map(|(w, h, n)| format!("{w}×{h} ({n})")).collect();
        let range = format!("{}–{} × {}–{}", p.min_width, p.max_width, p.min_height, p.max_height);
        row("photo sizes", format!("{range}; {} distinct; commonest {}", p.distinct, common.join(", ")));
    }
    if let Some(m) = &r.mask_areas {
        row(
            "mask area (of the frame)",
            format!(
                "min {:.4} median {:.4} max {:.4}; {} empty, {} resized to the photo, {} soft",
                m.min_fraction, m.median_fraction, m.max_fraction, m.empty, m.resized, m.soft
            ),
        );
    }
    row(&format!("cut at {} token ids", r.word_len), r.truncated.count.to_string());
    if let (Some(oov), Some(n)) = (&r.out_of_vocabulary, vocabulary) {
        let words: Vec<String> = oov.tokens.iter().take(12).map(|(w, c)| format!("{w} ×{c}")).collect();
        row(
            &format!("outside the {n}-token vocab"),
            format!("{} sentences: {}", oov.sentences.count, words.join(", ")),
        );
    }
    row("duplicate ids", r.duplicate_ids.count.to_string());
    for b in &r.bad_lines {
        s += &format!("  bad line {}: {}\n", b.line, b.error);
    }
    for p in &r.problems.examples {
        s += &format!("  problem: {}: {}\n", p.origin, p.what);
    }
    s += &notes("cut", &r.truncated);
    if let Some(oov) = &r.out_of_vocabulary {
        s += &notes("unknown words", &oov.sentences);
    }
    for d in &r.duplicate_ids.examples {
        let at: Vec<String> = d.origins.iter().map(ToString::to_string).collect();
        s += &format!("  duplicate id {:?}: {}\n", d.id, at.join(", "));
    }
    s
}

fn notes(what: &str, list: &Listed<SentenceNote>) -> String {
    list.examples
        .iter()
        .map(|n| format!("  {what}: {}, sentence {} ({} ids): {:?}\n", n.origin, n.sentence, n.tokens, n.text))
        .collect()
}
