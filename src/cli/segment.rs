use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use detris::segment::{check_sentence, Segmenter};
use detris_io::image::{self, PostPath};

use super::model_args::{InferencePrecision, ModelArgs};

#[derive(Args)]
pub struct SegmentArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    precision: InferencePrecision,
    /// The photo (JPEG, PNG or WebP).
    #[arg(long)]
    image: PathBuf,
    /// A referring sentence; repeat for several objects.
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    /// Output folder for the masks, overlays and JSON records.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Post-processing path: `test` (official test.py) or `demo` (demo.py).
    #[arg(long, default_value = "test")]
    post: String,
}

/// Overlay colours, one per sentence.
const PALETTE: [[u8; 3]; 6] =
    [[255, 64, 64], [64, 160, 255], [64, 220, 96], [255, 200, 0], [200, 80, 255], [0, 220, 220]];

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(|c| c.to_lowercase()) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    out.trim_end_matches('-').to_string()
}

pub fn run(a: SegmentArgs) -> Result<()> {
    for t in &a.texts {
        check_sentence(t).map_err(|e| super::usage(format!("--text: {e}")))?;
    }
    let post = match a.post.as_str() {
        "test" => PostPath::Test,
        "demo" => PostPath::Demo,
        other => return Err(super::usage(format!("--post `{other}`: use test or demo"))),
    };
    let photo = image::load_rgb(&a.image).map_err(|e| super::usage(e.to_string()))?;
    image::check_min_side(&photo).map_err(|e| super::usage(format!("{}: {e}", a.image.display())))?;
    let model = a.model.load_in(a.precision.precision)?;
    let word_len = model.config.word_len;
    let mut seg = Segmenter::new(model);
    seg.post = post;
    let results = seg.segment(&photo, &a.texts)?;
    if let Some(known) = &seg.model.known_token_ids {
        for r in &results {
            if r.token_ids.iter().any(|id| known.binary_search(id).is_err()) {
                eprintln!(
                    "warning: {:?} uses words this model never saw (it knows {} tokens: the synthetic data set's language); expect a poor mask",
                    r.sentence,
                    known.len()
                );
            }
        }
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}: cannot create the output folder", a.out.display()))?;
    for (i, r) in results.iter().enumerate() {
        if r.truncated {
            eprintln!(
                "warning: sentence {} is longer than the model's {word_len} tokens; it was cut to: {:?}",
                i + 1,
                detris_io::tokenizer::ClipTokenizer::global().decode(&r.token_ids).unwrap_or_default()
            );
        }
        let stem = a.out.join(format!("{:02}-{}", i + 1, slug(&r.sentence)));
        let mask_path = stem.with_extension("mask.png");
        let overlay_path = stem.with_extension("overlay.png");
        let json_path = stem.with_extension("json");
        image::write_png_atomic(&mask_path, &image::mask_png(&r.mask, r.width, r.height)?)?;
        let over = image::overlay(&photo, &r.mask, PALETTE[i % PALETTE.len()])?;
        image::write_png_atomic(&overlay_path, &image::rgb_png(&over)?)?;
        std::fs::write(&json_path, serde_json::to_string_pretty(r)?)
            .with_context(|| format!("{}: cannot write", json_path.display()))?;
        println!(
            "{:?}: {} px ({:.1}% of the photo), mean p {:.3} → {}",
            r.sentence,
            r.area,
            100.0 * r.area as f64 / (r.width * r.height) as f64,
            r.mean_probability,
            overlay_path.display()
        );
    }
    Ok(())
}
