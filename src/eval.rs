//! Evaluation exactly as the official `test.py`: every sentence (or the first
//! one, during training), the official test post-processing back to the
//! photo's size, threshold 0.35, IoU against the ground-truth PNG, then mIoU,
//! oIoU and Pr@50..90.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use detris_io::data::loader::Mode;
use detris_io::image::{self, PostPath};
use detris_io::metrics::{Metrics, Summary};
use serde::Serialize;
use tch::Kind;

use crate::data::{batch_tensors, open_loader, DataSpec};
use crate::model::{Ctx, Detris};

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub dataset: String,
    pub split: String,
    pub summary: Summary,
    /// Refs whose mask PNG had another size than the photo (resized, nearest).
    pub resized_masks: Vec<String>,
    pub seconds: f64,
}

/// Evaluates one split. `mode` Test = every sentence, Val = the first
/// sentence of each ref; `limit` > 0 evaluates only the first refs; with
/// `overlays`, writes `<segment_id>-<sentence>.png` there for every prediction.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Detris,
    spec: &DataSpec,
    split: &str,
    mode: Mode,
    limit: usize,
    batch: usize,
    workers: usize,
    overlays: Option<&Path>,
) -> Result<EvalReport> {
    let started = Instant::now();
    // Data-parallel: each rank takes every world-th sentence, in batches of
    // batch / world; the counts are gathered so that each sentence counts once.
    let (rank, world) = crate::distributed::rank_and_size();
    let batch = if world > 1 { (batch / world).max(1) } else { batch };
    let loader = open_loader(spec, split, mode, &model.config, batch, 0, workers, limit)?;
    let mine: Vec<(usize, (usize, usize))> =
        loader.plan(0).into_iter().flatten().enumerate().filter(|(i, _)| i % world == rank).collect();
    let plan = mine.chunks(batch).map(|c| c.iter().map(|(_, s)| *s).collect()).collect();
    let mut positions = mine.iter().map(|(i, _)| *i as i64);
    // (position in the one-process order, intersection, union) per sentence.
    let mut counts: Vec<Vec<i64>> = Vec::new();
    let device = model.device();
    if let Some(dir) = overlays {
        std::fs::create_dir_all(dir)?;
    }
    for b in loader.run_plan(plan) {
        let b = b?;
        let (img, ids) = batch_tensors(&b);
        let logits = tch::no_grad(|| {
            model.forward(&img.to_device(device).to_kind(model.kind()), &ids.to_device(device), &Ctx::eval())
        });
        let logits = logits.to_device(tch::Device::Cpu).to_kind(Kind::Float);
        let (_, _, lh, lw) = logits.size4()?;
        for (i, item) in b.items.iter().enumerate() {
            let values = Vec::<f32>::try_from(&logits.get(i as i64).flatten(0, -1))?;
            let prob = image::postprocess(&values, lh as usize, lw as usize, &item.letterbox, PostPath::Test)?;
            let gt = item.eval.as_ref().map(|e| e.mask.iter().map(|&v| v != 0).collect::<Vec<bool>>());
            let gt = gt.ok_or_else(|| anyhow::anyhow!("the evaluation loader gave no ground truth"))?;
            if prob.mask.len() != gt.len() {
                anyhow::bail!("prediction has {} pixels but the ground-truth mask has {}", prob.mask.len(), gt.len());
            }
            let (inter, union) = detris_io::metrics::counts(&prob.mask, &gt);
            counts.push(vec![positions.next().unwrap_or(-1), inter as i64, union as i64]);
            if let Some(dir) = overlays {
                let photo = image::load_rgb(&loader.refs()[item.ref_index].image)?;
                let over = image::overlay(&photo, &prob.mask, [255, 64, 64])?;
                let name = format!("{}-{}.png", item.segment_id, item.sentence_index);
                image::write_png_atomic(dir.join(name), &image::rgb_png(&over)?)?;
            }
        }
    }
    let mut counts = crate::distributed::allgather_rows(&counts, 3)?;
    counts.sort_by_key(|c| c[0]);
    let mut metrics = Metrics::new();
    for c in &counts {
        metrics.push_counts(c[1] as u64, c[2] as u64);
    }
    let mut resized_masks = loader.resized_masks();
    if world > 1 {
        let lists = crate::distributed::allgather_string("eval/resized", &resized_masks.join("\n"))?;
        resized_masks = lists.iter().flat_map(|l| l.lines().map(str::to_string)).collect();
        resized_masks.sort();
        resized_masks.dedup();
    }
    Ok(EvalReport {
        dataset: spec.dataset.clone(),
        split: split.to_string(),
        summary: metrics.summary(),
        resized_masks,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The terminal table of several splits.
pub fn table(reports: &[EvalReport]) -> String {
    let mut s = format!(
        "{:<12} {:<8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8}\n",
        "dataset", "split", "mIoU", "oIoU", "Pr@50", "Pr@60", "Pr@70", "Pr@80", "Pr@90", "sentences"
    );
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
