//! Evaluation exactly as the official `test.py`: every sentence (or the first
//! one, during training), the official test post-processing back to the
//! photo's size, threshold 0.35, IoU against the ground-truth PNG, then mIoU,
//! oIoU and Pr@50..90.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use detris_io::data::loader::{BatchItem, Mode};
use detris_io::image::{self, PostPath, THRESHOLD};
use detris_io::metrics::{Metrics, Summary};
use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::data::{batch_tensors, DataSource, SplitRead, SplitSource};
use crate::model::{Ctx, Detris};
use crate::segment::logits_to_prob;

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub dataset: String,
    pub split: String,
    pub summary: Summary,
    /// Refs whose mask PNG had another size than the photo (resized, nearest).
    pub resized_masks: Vec<String>,
    pub seconds: f64,
    /// One record per sentence, in order (gathered from every rank when data-parallel), kept
    /// when [`EvalOutputs::records`] is set;
    /// `detris eval` writes them as JSON Lines beside the summary.
    #[serde(skip)]
    pub records: Vec<SentenceRecord>,
}

/// One evaluated sentence: what its IoU and the sums of the summary are made of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SentenceRecord {
    pub split: String,
    /// The ref's `segment_id`.
    pub ref_id: String,
    /// Position of the sentence among its ref's sentences.
    pub sentence_index: usize,
    pub sentence: String,
    /// `intersection / (union + 1e-6)`, as the official code.
    pub iou: f64,
    /// Pixels in both the prediction and the ground truth, at the photo's size.
    pub intersection: u64,
    /// Pixels in either.
    pub union: u64,
}

/// What an evaluation produces besides the metrics; the default (as the validation during
/// training) is the official threshold and nothing else.
#[derive(Clone, Debug)]
pub struct EvalOutputs {
    /// Foreground where the probability is above this (0.35 in the official code).
    pub threshold: f32,
    /// Keep a [`SentenceRecord`] per sentence in the report.
    pub records: bool,
    /// Write what the official `test.py --visualize` writes here, plus an overlay per sentence:
    /// `<ref>-img.<ext>`, `<ref>-mask.png`, `<ref>-iou=<IoU×100>-<sentence>.png`, and
    /// `<ref>-iou=<IoU×100>-<sentence>-overlay.png`.
    pub visualize: Option<PathBuf>,
    /// Write `<ref>-<sentence index>.png` overlays here.
    pub overlays: Option<PathBuf>,
}

impl Default for EvalOutputs {
    fn default() -> EvalOutputs {
        EvalOutputs { threshold: THRESHOLD, records: false, visualize: None, overlays: None }
    }
}

/// What to evaluate and how. [`EvalRequest::new`] (a prepared split) and [`EvalRequest::of`]
/// (any [`SplitSource`], e.g. a manifest) give the official test: every sentence of the split,
/// the official threshold, nothing written; change the rest with struct update syntax
/// (`EvalRequest { mode: Mode::Val, ..EvalRequest::new(data, "val") }`).
#[derive(Clone, Debug)]
pub struct EvalRequest {
    /// The refs: a split of the prepared layout or a manifest.
    pub data: SplitSource,
    /// Test: every sentence; Val: the first sentence of each ref (the validation during training).
    pub mode: Mode,
    /// Only the first this many refs (`None`: all).
    pub limit: Option<usize>,
    /// Sentences per forward pass; data-parallel, the global batch (each rank runs its share).
    pub batch_size: usize,
    /// Loader threads.
    pub workers: usize,
    /// What to keep or write besides the metrics.
    pub outputs: EvalOutputs,
}

impl EvalRequest {
    /// Every sentence of `split` of a prepared data set ([`EvalRequest::of`]).
    pub fn new(data: DataSource, split: impl Into<String>) -> EvalRequest {
        EvalRequest::of(data.split(split))
    }

    /// Every sentence of `data`, 8 per batch, one loader thread, the default [`EvalOutputs`].
    pub fn of(data: SplitSource) -> EvalRequest {
        EvalRequest { data, mode: Mode::Test, limit: None, batch_size: 8, workers: 1, outputs: EvalOutputs::default() }
    }
}

/// One evaluated sentence's pixel counts and its place in the one-process order (by which
/// the ranks' counts are put back in order when data-parallel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SentenceCounts {
    position: usize,
    intersection: u64,
    union: u64,
}

impl SentenceCounts {
    /// The width of a gathered row, [`Self::to_row`].
    const ROW: usize = 3;

    fn to_row(self) -> Vec<i64> {
        vec![self.position as i64, self.intersection as i64, self.union as i64]
    }

    fn from_row(row: &[i64]) -> SentenceCounts {
        SentenceCounts { position: row[0] as usize, intersection: row[1] as u64, union: row[2] as u64 }
    }

    fn iou(self) -> f64 {
        detris_io::metrics::iou(self.intersection, self.union)
    }
}

/// Evaluates one split (see [`EvalRequest`]).
pub fn evaluate(model: &Detris, request: &EvalRequest) -> Result<EvalReport> {
    let started = Instant::now();
    let (split, outputs) = (&request.data.label(), &request.outputs);
    // Data-parallel: each rank takes every world-th sentence, in batches of
    // batch / world; the counts are gathered so that each sentence counts once.
    let (rank, world) = crate::distributed::rank_and_size();
    let batch = if world > 1 { (request.batch_size / world).max(1) } else { request.batch_size };
    let read =
        SplitRead { mode: request.mode, batch_size: batch, workers: request.workers, seed: 0, limit: request.limit };
    let loader = request.data.loader(&read, &model.config)?;
    let mine: Vec<(usize, (usize, usize))> =
        loader.plan(0).into_iter().flatten().enumerate().filter(|(i, _)| i % world == rank).collect();
    let plan = mine.chunks(batch).map(|c| c.iter().map(|(_, s)| *s).collect()).collect();
    let mut positions = mine.iter().map(|(i, _)| *i);
    let mut counts: Vec<SentenceCounts> = Vec::new();
    let device = model.device();
    let mut sink = SentenceSink::new(split, outputs)?;
    for b in loader.run_plan(plan) {
        let b = b?;
        let (img, ids) = batch_tensors(&b);
        let logits = tch::no_grad(|| {
            model.forward(&img.to_device(device).to_kind(model.kind()), &ids.to_device(device), &Ctx::eval())
        });
        let logits = logits.to_device(tch::Device::Cpu).to_kind(Kind::Float);
        for (i, item) in b.items.iter().enumerate() {
            let prob = logits_to_prob(&logits, i, &item.letterbox, PostPath::Test, outputs.threshold)?;
            let gt = item.eval.as_ref().map(|e| e.mask.iter().map(|&v| v != 0).collect::<Vec<bool>>());
            let gt = gt.ok_or_else(|| anyhow::anyhow!("the evaluation loader gave no ground truth"))?;
            let (intersection, union) = detris_io::metrics::intersection_union(&prob.mask, &gt)?;
            let position = positions.next().context("the loader gave more sentences than its plan")?;
            let c = SentenceCounts { position, intersection, union };
            counts.push(c);
            sink.push(item, &item.image, &prob.mask, &gt, c)?;
        }
    }
    let records = if outputs.records { gather_records(&counts, sink.records)? } else { Vec::new() };
    let rows: Vec<Vec<i64>> = counts.iter().map(|c| c.to_row()).collect();
    let mut counts: Vec<SentenceCounts> = crate::distributed::allgather_rows(&rows, SentenceCounts::ROW)?
        .iter()
        .map(|row| SentenceCounts::from_row(row))
        .collect();
    counts.sort_by_key(|c| c.position);
    let mut metrics = Metrics::new();
    for c in &counts {
        metrics.push_counts(c.intersection, c.union);
    }
    let mut resized_masks = loader.resized_masks();
    if world > 1 {
        let lists = crate::distributed::allgather_string("eval/resized", &resized_masks.join("\n"))?;
        resized_masks = lists.iter().flat_map(|l| l.lines().map(str::to_string)).collect();
        resized_masks.sort();
        resized_masks.dedup();
    }
    Ok(EvalReport {
        dataset: request.data.dataset(),
        split: split.clone(),
        summary: metrics.summary(),
        resized_masks,
        seconds: started.elapsed().as_secs_f64(),
        records,
    })
}

/// Every rank's sentence records, in the one-process order: `counts[i]` are this rank's
/// i-th record's. Every rank calls it (or none does).
fn gather_records(counts: &[SentenceCounts], records: Vec<SentenceRecord>) -> Result<Vec<SentenceRecord>> {
    let (_, world) = crate::distributed::rank_and_size();
    if world == 1 {
        return Ok(records);
    }
    let mut lines = String::new();
    for (c, r) in counts.iter().zip(&records) {
        lines += &serde_json::to_string(&(c.position, r))?;
        lines.push('\n');
    }
    let mut all: Vec<(usize, SentenceRecord)> = Vec::new();
    for rank_lines in crate::distributed::allgather_string("eval/records", &lines)? {
        for line in rank_lines.lines() {
            all.push(serde_json::from_str(line).context("a rank's sentence record")?);
        }
    }
    all.sort_by_key(|(position, _)| *position);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

/// Where each evaluated sentence goes besides the metrics: its record and its pictures.
struct SentenceSink<'a> {
    split: String,
    outputs: &'a EvalOutputs,
    records: Vec<SentenceRecord>,
    /// Refs whose photo and ground truth were already written to `visualize`.
    visualized: HashSet<String>,
}

impl<'a> SentenceSink<'a> {
    fn new(split: &str, outputs: &'a EvalOutputs) -> Result<SentenceSink<'a>> {
        for dir in outputs.visualize.iter().chain(&outputs.overlays) {
            std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the folder", dir.display()))?;
        }
        Ok(SentenceSink { split: split.to_string(), outputs, records: Vec::new(), visualized: HashSet::new() })
    }

    fn push(
        &mut self,
        item: &BatchItem,
        photo_path: &Path,
        pred: &[bool],
        gt: &[bool],
        c: SentenceCounts,
    ) -> Result<()> {
        let id = &item.segment_id;
        let iou = c.iou();
        let photo = match (&self.outputs.visualize, &self.outputs.overlays) {
            (None, None) => None,
            _ => Some(image::load_rgb(photo_path)?),
        };
        if let (Some(dir), Some(photo)) = (&self.outputs.visualize, &photo) {
            if self.visualized.insert(id.clone()) {
                let ext = photo_path.extension().and_then(|e| e.to_str()).unwrap_or("jpg");
                let img_path = dir.join(format!("{id}-img.{ext}"));
                std::fs::copy(photo_path, &img_path)
                    .with_context(|| format!("{}: cannot write", img_path.display()))?;
                image::write_png_atomic(
                    dir.join(format!("{id}-mask.png")),
                    &image::mask_png(gt, item.width, item.height)?,
                )?;
            }
            let stem = format!("{id}-iou={:.2}-{}", iou * 100.0, file_sentence(&item.sentence));
            let pngs = crate::mask_formats::sentence_pngs(photo, pred, 0)?;
            image::write_png_atomic(dir.join(format!("{stem}.png")), &pngs.mask)?;
            image::write_png_atomic(dir.join(format!("{stem}-overlay.png")), &pngs.overlay)?;
        }
        if let (Some(dir), Some(photo)) = (&self.outputs.overlays, &photo) {
            let over = image::overlay(photo, pred, crate::mask_formats::colour(0))?;
            let name = format!("{id}-{}.png", item.sentence_index);
            image::write_png_atomic(dir.join(name), &image::rgb_png(&over)?)?;
        }
        if self.outputs.records {
            self.records.push(SentenceRecord {
                split: self.split.clone(),
                ref_id: id.clone(),
                sentence_index: item.sentence_index,
                sentence: item.sentence.clone(),
                iou,
                intersection: c.intersection,
                union: c.union,
            });
        }
        Ok(())
    }
}

/// The sentence part of an official visualisation file name: words joined by `_` (as
/// `"_".join(sent.split(" "))`), path separators replaced, cut to 200 bytes so the name fits.
pub fn file_sentence(sentence: &str) -> String {
    let mut s: String = sentence.chars().map(|c| if c == ' ' || c == '/' || c == '\\' { '_' } else { c }).collect();
    if s.len() > 200 {
        let cut = (0..=200).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.truncate(cut);
    }
    s
}

/// The terminal table of several splits.
pub fn table(reports: &[EvalReport]) -> String {
    let mut s = format!("{:<12} {:<8} {:>7} {:>7}", "dataset", "split", "mIoU", "oIoU");
    for t in detris_io::metrics::prec_thresholds() {
        s += &format!(" {:>7}", detris_io::metrics::precision_label(t));
    }
    s += &format!(" {:>8}\n", "sentences");
    for r in reports {
        let m = &r.summary;
        s += &format!("{:<12} {:<8} {:>7.2} {:>7.2}", r.dataset, r.split, 100.0 * m.miou, 100.0 * m.oiou);
        for (_, p) in m.prec.iter() {
            s += &format!(" {:>7.2}", 100.0 * p);
        }
        s += &format!(" {:>8}\n", m.count);
    }
    s
}
