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
    let loader = open_loader(spec, split, mode, &model.config, batch, 0, workers, limit)?;
    let device = model.device();
    let mut metrics = Metrics::new();
    if let Some(dir) = overlays {
        std::fs::create_dir_all(dir)?;
    }
    for b in loader.epoch(0) {
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
            metrics.push(&prob.mask, &gt)?;
            if let Some(dir) = overlays {
                let photo = image::load_rgb(&loader.refs()[item.ref_index].image)?;
                let over = image::overlay(&photo, &prob.mask, [255, 64, 64])?;
                let name = format!("{}-{}.png", item.segment_id, item.sentence_index);
                image::write_png_atomic(dir.join(name), &image::rgb_png(&over)?)?;
            }
        }
    }
    Ok(EvalReport {
        dataset: spec.dataset.clone(),
        split: split.to_string(),
        summary: metrics.summary(),
        resized_masks: loader.resized_masks(),
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
