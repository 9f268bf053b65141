use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use detris::batch::{self, BatchOptions};
use detris::mask_formats;
use detris::segment::{check_sentence, Segmenter};
use detris_io::image::{self, PostPath, THRESHOLD};
use detris_io::metrics::precision_label;

use super::model_args::InferenceArgs;

#[derive(Args)]
pub struct SegmentArgs {
    #[command(flatten)]
    inference: InferenceArgs,
    /// The photo (JPEG, PNG or WebP).
    #[arg(long, required_unless_present = "manifest", conflicts_with = "manifest")]
    image: Option<PathBuf>,
    /// A referring sentence; repeat for several objects.
    #[arg(long = "text", required_unless_present = "manifest", conflicts_with = "manifest")]
    texts: Vec<String>,
    /// Output folder for the masks, overlays and JSON records.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Post-processing: the official test.py's or demo.py's.
    #[arg(long, value_enum, default_value_t = PostPath::Test)]
    post: PostPath,
    #[command(flatten)]
    threshold: ThresholdArg,
    /// Also write each sentence's probability map as a PNG heat map (`.prob.png`).
    #[arg(long)]
    probabilities: bool,
    #[command(flatten)]
    batch: ManifestArgs,
}

/// `--threshold`, shared by segment, serve and eval.
#[derive(Args, Clone, Debug)]
pub struct ThresholdArg {
    /// Foreground where the probability is above this (the official code uses 0.35).
    #[arg(long, default_value_t = THRESHOLD, value_parser = parse_threshold)]
    pub threshold: f32,
}

fn parse_threshold(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(t),
        _ => Err(format!("`{s}` is not a probability between 0 and 1")),
    }
}

/// Batch work: `--manifest items.jsonl` instead of `--image` and `--text`.
#[derive(Args)]
struct ManifestArgs {
    /// JSON Lines, one photo per line: {"image": ..., "sentences": [...], optional "id",
    /// "mask" (ground-truth PNG) or "mask_rle" (COCO RLE)}. Writes <out>/results.jsonl (one
    /// line per sentence) and <out>/summary.json.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Redo items that an earlier run finished (and start results.jsonl afresh).
    #[arg(long, requires = "manifest")]
    overwrite: bool,
    /// Stop at the first bad manifest line instead of reporting and skipping it.
    #[arg(long, requires = "manifest")]
    strict: bool,
    /// Crash (abort) after this many items: how the tests interrupt a run.
    #[arg(long, hide = true, requires = "manifest")]
    abort_after: Option<usize>,
}

pub fn run(mut a: SegmentArgs) -> Result<()> {
    a.inference.yaml.apply(&mut a.inference.model)?;
    for t in &a.texts {
        check_sentence(t).map_err(|e| super::usage(format!("--text: {e}")))?;
    }
    let manifest = match &a.batch.manifest {
        Some(path) => Some(detris_io::manifest::read(path).map_err(|e| super::usage(e.to_string()))?),
        None => None,
    };
    let photo = match &a.image {
        Some(path) => {
            let photo = image::load_rgb(path).map_err(|e| super::usage(e.to_string()))?;
            image::check_min_side(&photo).map_err(|e| super::usage(format!("{}: {e}", path.display())))?;
            Some(photo)
        }
        None => None,
    };
    let model = a.inference.model.load_in(a.inference.precision.precision)?;
    let seg = Segmenter::builder()
        .model(model)
        .post(a.post)
        .threshold(a.threshold.threshold)
        .probabilities(a.probabilities)
        .build()?;
    match (manifest, photo) {
        (Some(manifest), _) => run_manifest(&seg, &manifest, &a),
        (None, Some(photo)) => segment_one(&seg, &photo, &a.texts, &a.out, a.probabilities),
        (None, None) => Err(super::usage("give --image and --text, or --manifest")),
    }
}

fn segment_one(seg: &Segmenter, photo: &image::Rgb, texts: &[String], out: &Path, probabilities: bool) -> Result<()> {
    let results = seg.segment(photo, texts)?;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    for (i, r) in results.iter().enumerate() {
        for w in r.warnings(i) {
            eprintln!("warning: {w}");
        }
        let stem = out.join(format!("{:02}-{}", i + 1, mask_formats::slug(&r.sentence)));
        let overlay_path = stem.with_extension("overlay.png");
        let json_path = stem.with_extension("json");
        let pngs = mask_formats::sentence_pngs(photo, &r.mask, i)?;
        image::write_png_atomic(stem.with_extension("mask.png"), &pngs.mask)?;
        image::write_png_atomic(&overlay_path, &pngs.overlay)?;
        if let (true, Some(p)) = (probabilities, &r.probabilities) {
            image::write_png_atomic(
                stem.with_extension("prob.png"),
                &mask_formats::probability_png(p, r.width, r.height)?,
            )?;
        }
        std::fs::write(&json_path, serde_json::to_string_pretty(r)?)
            .with_context(|| format!("{}: cannot write", json_path.display()))?;
        println!(
            "{:?}: {} px ({:.1}% of the photo), mean p {:.3} → {}",
            r.sentence,
            r.area,
            100.0 * r.area_fraction(),
            r.mean_probability,
            overlay_path.display()
        );
    }
    Ok(())
}

fn run_manifest(seg: &Segmenter, manifest: &detris_io::manifest::Manifest, a: &SegmentArgs) -> Result<()> {
    let opts = BatchOptions {
        out: a.out.clone(),
        overwrite: a.batch.overwrite,
        strict: a.batch.strict,
        probabilities: a.probabilities,
        progress: std::env::var_os("DETRIS_NO_PROGRESS").is_none(),
    };
    let abort_after = a.batch.abort_after;
    let stop = |done: usize| {
        if abort_after == Some(done) {
            std::process::abort();
        }
        false
    };
    let summary = batch::run(seg, manifest, &opts, stop, |bad| eprintln!("warning: skipped manifest {bad}"))?;
    println!(
        "{} items segmented, {} already done, {} bad lines skipped; {} sentences in {}",
        summary.done,
        summary.skipped,
        summary.bad_lines.len(),
        summary.sentences,
        a.out.join(batch::RESULTS_FILE).display()
    );
    if let Some(m) = &summary.metrics {
        let prec: Vec<String> =
            m.prec.iter().map(|(t, p)| format!("{} {:.2}", precision_label(*t), 100.0 * p)).collect();
        println!(
            "{} sentences with a ground truth: mIoU {:.2}, oIoU {:.2}, {}",
            summary.with_ground_truth,
            100.0 * m.miou,
            100.0 * m.oiou,
            prec.join(", ")
        );
    }
    Ok(())
}
