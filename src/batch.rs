//! Batch segmentation from a manifest (`detris segment --manifest items.jsonl`).
//!
//! ```text
//! manifest lines (detris_io::manifest) → photo + ground truth checked → Segmenter::segment
//!   → <out>/<id>/NN-<sentence>.{mask,overlay[,prob]}.png (atomic)
//!   → one results.jsonl line per sentence, appended and flushed per item
//!   → summary.json (mIoU, oIoU, Pr@X over the sentences with a ground truth)
//! ```
//!
//! An item is finished when all its lines are in `results.jsonl`; a rerun skips finished
//! items (unless `overwrite`), and a torn last write of a crashed run is cut off first, so a
//! crash or Ctrl-C loses no finished item and does no item twice.

use std::collections::HashMap;
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use detris_io::image::{self, Rgb};
use detris_io::manifest::{BadLine, GroundTruth, Manifest, ManifestItem};
use detris_io::metrics::{self, Metrics, Summary};
use serde::{Deserialize, Serialize};

use crate::mask_formats::{self, bounding_box, RleJson};
use crate::segment::{Segmenter, SentenceMask};

/// File names inside the output folder.
pub const RESULTS_FILE: &str = "results.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";

/// How to run a manifest.
#[derive(Clone, Debug, Default)]
pub struct BatchOptions {
    pub out: PathBuf,
    /// Redo every item and start `results.jsonl` afresh.
    pub overwrite: bool,
    /// Stop at the first bad line instead of reporting and skipping it.
    pub strict: bool,
    /// Also write each sentence's probability heat map (`NN-<sentence>.prob.png`).
    pub probabilities: bool,
    /// Draw a progress bar on the terminal (the CLI turns it off for tests and logs).
    pub progress: bool,
}

/// One `results.jsonl` line: one sentence of one manifest item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    pub id: String,
    /// The manifest line it came from.
    pub line: usize,
    pub image: PathBuf,
    pub sentence_index: usize,
    /// Sentences of the item (an item is finished when all its lines are written).
    pub sentence_count: usize,
    pub sentence: String,
    pub width: usize,
    pub height: usize,
    pub area: usize,
    pub mean_probability: f32,
    /// Paths relative to the output folder.
    pub mask: PathBuf,
    pub overlay: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<PathBuf>,
    /// COCO RLE (`{"size": [h, w], "counts": "<compressed>"}`, pycocotools' format).
    pub rle: RleJson,
    /// `[x, y, width, height]` of the mask, pycocotools `toBbox`.
    pub bbox: [usize; 4],
    pub tokens: usize,
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_words: Vec<String>,
    /// Against the item's ground truth, when it has one (the official IoU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iou: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intersection: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub union: Option<u64>,
}

/// `summary.json`: what this run did and the metrics over every finished item.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchSummary {
    /// Items segmented by this run.
    pub done: usize,
    /// Items skipped because an earlier run finished them.
    pub skipped: usize,
    /// Lines that could not be used (manifest errors, unreadable photos or masks).
    pub bad_lines: Vec<BadLineJson>,
    /// Sentence lines in `results.jsonl`.
    pub sentences: usize,
    /// Those with a ground truth, which the metrics are over.
    pub with_ground_truth: usize,
    /// mIoU, oIoU, Pr@50..90 (absent without ground truths).
    pub metrics: Option<Summary>,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BadLineJson {
    pub line: usize,
    pub error: String,
}

/// Runs `manifest` through `seg`. `stop` is asked before each item (with the number this
/// run has done so far); answering true ends the run there as if it had been interrupted.
/// `report` is told about each bad line as it is found.
pub fn run(
    seg: &Segmenter,
    manifest: &Manifest,
    opts: &BatchOptions,
    mut stop: impl FnMut(usize) -> bool,
    mut report: impl FnMut(&BadLine),
) -> Result<BatchSummary> {
    let started = Instant::now();
    let mut bad: Vec<BadLine> = Vec::new();
    for b in &manifest.bad {
        if opts.strict {
            bail!("{b} (--strict stops at the first bad line)");
        }
        report(b);
        bad.push(b.clone());
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("{}: cannot create the folder", opts.out.display()))?;
    let results_path = opts.out.join(RESULTS_FILE);
    let finished = if opts.overwrite { HashMap::new() } else { finished_items(&results_path)? };
    let mut results = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_path)
        .with_context(|| format!("{}: cannot open", results_path.display()))?;
    if opts.overwrite {
        results.set_len(0).with_context(|| format!("{}: cannot truncate", results_path.display()))?;
    }

    let todo: Vec<&ManifestItem> = manifest.items.iter().filter(|i| !finished.contains_key(&i.id)).collect();
    let skipped = manifest.items.len() - todo.len();
    let bar = progress_bar(todo.len() as u64, opts.progress);
    let mut done = 0;
    for item in todo {
        if stop(done) {
            break;
        }
        bar.set_message(item.id.clone());
        match run_item(seg, item, opts) {
            Ok(lines) => {
                let mut text = String::new();
                for l in &lines {
                    text += &serde_json::to_string(l)?;
                    text.push('\n');
                }
                // One write per item, then to disk: a crash leaves whole items or a torn
                // last item, which the next run cuts off.
                results
                    .write_all(text.as_bytes())
                    .and_then(|()| results.sync_data())
                    .with_context(|| format!("{}: cannot append", results_path.display()))?;
                done += 1;
            }
            Err(e) => {
                let b = BadLine { line: item.line, error: format!("{e:#}") };
                if opts.strict {
                    bail!("{b} (--strict stops at the first bad line)");
                }
                bar.suspend(|| report(&b));
                bad.push(b);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    drop(results);

    let all = read_results(&results_path)?;
    let mut m = Metrics::new();
    for r in &all {
        if let (Some(i), Some(u)) = (r.intersection, r.union) {
            m.push_counts(i, u);
        }
    }
    let summary = BatchSummary {
        done,
        skipped,
        bad_lines: bad.iter().map(|b| BadLineJson { line: b.line, error: b.error.clone() }).collect(),
        sentences: all.len(),
        with_ground_truth: m.count() as usize,
        metrics: (m.count() > 0).then(|| m.summary()),
        seconds: started.elapsed().as_secs_f64(),
    };
    write_atomic(&opts.out.join(SUMMARY_FILE), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(summary)
}

fn progress_bar(len: u64, visible: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} items, {per_sec}, eta {eta} {msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    if !visible {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// Segments one item and writes its pictures; returns its result lines.
fn run_item(seg: &Segmenter, item: &ManifestItem, opts: &BatchOptions) -> Result<Vec<ResultLine>> {
    let photo = image::load_rgb(&item.image)?;
    image::check_min_side(&photo).with_context(|| item.image.display().to_string())?;
    let gt = item.ground_truth.as_ref().map(|g| ground_truth(g, &photo)).transpose()?;
    let masks = seg.segment(&photo, &item.sentences)?;
    let dir = PathBuf::from(&item.id);
    std::fs::create_dir_all(opts.out.join(&dir))
        .with_context(|| format!("{}: cannot create the folder", opts.out.join(&dir).display()))?;
    masks.iter().enumerate().map(|(i, m)| write_sentence(&photo, m, i, item, &dir, gt.as_deref(), opts)).collect()
}

fn write_sentence(
    photo: &Rgb,
    m: &SentenceMask,
    i: usize,
    item: &ManifestItem,
    dir: &Path,
    gt: Option<&[bool]>,
    opts: &BatchOptions,
) -> Result<ResultLine> {
    let stem = format!("{:02}-{}", i + 1, mask_formats::slug(&m.sentence));
    let (mask, overlay) = (dir.join(format!("{stem}.mask.png")), dir.join(format!("{stem}.overlay.png")));
    let pngs = mask_formats::sentence_pngs(photo, &m.mask, i)?;
    image::write_png_atomic(opts.out.join(&mask), &pngs.mask)?;
    image::write_png_atomic(opts.out.join(&overlay), &pngs.overlay)?;
    let probabilities = match (&m.probabilities, opts.probabilities) {
        (Some(p), true) => {
            let path = dir.join(format!("{stem}.prob.png"));
            image::write_png_atomic(opts.out.join(&path), &mask_formats::probability_png(p, m.width, m.height)?)?;
            Some(path)
        }
        _ => None,
    };
    let scored = gt.map(|g| metrics::intersection_union(&m.mask, g)).transpose()?;
    Ok(ResultLine {
        id: item.id.clone(),
        line: item.line,
        image: item.image.clone(),
        sentence_index: i,
        sentence_count: item.sentences.len(),
        sentence: m.sentence.clone(),
        width: m.width,
        height: m.height,
        area: m.area,
        mean_probability: m.mean_probability,
        mask,
        overlay,
        probabilities,
        rle: RleJson::encode(&m.mask, m.width, m.height)?,
        bbox: bounding_box(&m.mask, m.width),
        tokens: m.tokens,
        truncated: m.truncated,
        unknown_words: m.unknown_words.clone(),
        iou: scored.map(|(i, u)| metrics::iou(i, u)),
        intersection: scored.map(|(i, _)| i),
        union: scored.map(|(_, u)| u),
    })
}

/// The ground truth at the photo's size, true = foreground (any non-zero PNG value).
fn ground_truth(g: &GroundTruth, photo: &Rgb) -> Result<Vec<bool>> {
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    let m = g.read(w, h)?;
    if (m.width, m.height) != (w, h) {
        bail!("{}: the ground truth is {}×{} but the photo is {w}×{h}", g.describe(), m.width, m.height);
    }
    Ok(m.grey.iter().map(|&v| v != 0).collect())
}

/// Items whose lines are all in `results.jsonl` (id → line count). A torn tail (a crash in
/// the middle of an item's write) is cut off, so the item is done again, once.
fn finished_items(path: &Path) -> Result<HashMap<String, usize>> {
    let Ok(file) = std::fs::File::open(path) else { return Ok(HashMap::new()) };
    let mut reader = std::io::BufReader::new(file);
    let mut lines: HashMap<String, usize> = HashMap::new();
    let (mut offset, mut good_end) = (0u64, 0u64);
    let mut finished = HashMap::new();
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf).with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        offset += n as u64;
        let Some(text) = buf.strip_suffix('\n') else { break };
        let Ok(r) = serde_json::from_str::<ResultLine>(text) else { break };
        let count = lines.entry(r.id.clone()).or_default();
        *count += 1;
        if *count == r.sentence_count {
            finished.insert(r.id, *count);
            good_end = offset;
        }
    }
    let len = std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?.len();
    if good_end < len {
        eprintln!(
            "note: {}: the last {} bytes are an unfinished item of an interrupted run; it will be done again",
            path.display(),
            len - good_end
        );
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(good_end)?;
        f.seek(std::io::SeekFrom::End(0))?;
    }
    Ok(finished)
}

/// Every line of `results.jsonl`.
pub fn read_results(path: &Path) -> Result<Vec<ResultLine>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1)))
        .collect()
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(image::write_png_atomic(path, bytes)?)
}
