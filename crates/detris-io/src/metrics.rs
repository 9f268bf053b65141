//! Referring-segmentation metrics exactly as the official `engine.py` computes
//! them: per sentence, at the original image resolution,
//! `I = Σ(pred ∧ gt)`, `U = Σ(pred ∨ gt)`, `IoU = I / (U + 1e-6)` (so an empty
//! prediction of an empty mask scores 0); mIoU is the mean IoU, oIoU is ΣI / ΣU,
//! Pr@X the fraction of sentences with IoU strictly above the float32
//! thresholds of `torch.arange(0.5, 1.0, 0.1)`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Number of Pr@X thresholds (0.5, 0.6, 0.7, 0.8, 0.9).
pub const PREC_THRESHOLDS: usize = 5;

/// `torch.arange(0.5, 1.0, 0.1)` in float32: 0.5, 0.6, 0.7, 0.8, 0.9 rounded
/// to f32 (0.6f32 = 0.60000002...), compared against the f64 IoU.
pub fn prec_thresholds() -> [f32; PREC_THRESHOLDS] {
    std::array::from_fn(|i| (0.5 + 0.1 * i as f64) as f32)
}

/// The name of the Pr@X figure of `threshold`: `Pr@50` for 0.5 (the official logs' names).
pub fn precision_label(threshold: f32) -> String {
    format!("Pr@{}", (f64::from(threshold) * 100.0).round() as i64)
}

/// `I / (U + 1e-6)`, the official per-sentence IoU.
pub fn iou(intersection: u64, union: u64) -> f64 {
    intersection as f64 / (union as f64 + 1e-6)
}

/// (intersection, union) pixel counts of a prediction and its ground truth
/// (equal lengths).
pub fn counts(pred: &[bool], gt: &[bool]) -> (u64, u64) {
    let (mut inter, mut union) = (0u64, 0u64);
    for (&p, &g) in pred.iter().zip(gt) {
        inter += u64::from(p && g);
        union += u64::from(p || g);
    }
    (inter, union)
}

/// [`counts`], refusing masks of different sizes.
pub fn intersection_union(pred: &[bool], gt: &[bool]) -> Result<(u64, u64)> {
    if pred.len() != gt.len() {
        return Err(Error::input(format!(
            "prediction has {} pixels but the ground-truth mask has {}",
            pred.len(),
            gt.len()
        )));
    }
    Ok(counts(pred, gt))
}

/// Running totals over the evaluated sentences.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    count: u64,
    iou_sum: f64,
    intersection_sum: u64,
    union_sum: u64,
    /// Sentences whose IoU is above each threshold of [`prec_thresholds`].
    above: [u64; PREC_THRESHOLDS],
}

/// The reported figures. Fractions in 0..1 (the official logs print ×100).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Mean of the per-sentence IoU (the paper's main metric); 0 when empty.
    pub miou: f64,
    /// Overall IoU ΣI / ΣU; 0 when the union is empty.
    pub oiou: f64,
    /// (threshold, fraction of sentences with IoU > threshold).
    pub prec: [(f32, f64); PREC_THRESHOLDS],
    /// Number of sentences.
    pub count: u64,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scores one prediction against its ground truth, both flattened masks of
    /// the same (original) resolution, true = foreground. Returns the IoU.
    pub fn push(&mut self, pred: &[bool], gt: &[bool]) -> Result<f64> {
        let (inter, union) = intersection_union(pred, gt)?;
        Ok(self.push_counts(inter, union))
    }

    /// Adds one sentence given its intersection and union pixel counts.
    pub fn push_counts(&mut self, intersection: u64, union: u64) -> f64 {
        let value = iou(intersection, union);
        self.count += 1;
        self.iou_sum += value;
        self.intersection_sum += intersection;
        self.union_sum += union;
        for (above, threshold) in self.above.iter_mut().zip(prec_thresholds()) {
            *above += u64::from(value > f64::from(threshold));
        }
        value
    }

    /// Merges the totals of another accumulator (e.g. another worker's).
    pub fn merge(&mut self, other: &Metrics) {
        self.count += other.count;
        self.iou_sum += other.iou_sum;
        self.intersection_sum += other.intersection_sum;
        self.union_sum += other.union_sum;
        for (a, b) in self.above.iter_mut().zip(other.above) {
            *a += b;
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn summary(&self) -> Summary {
        let per_sentence = |total: f64| if self.count == 0 { 0.0 } else { total / self.count as f64 };
        let thresholds = prec_thresholds();
        Summary {
            miou: per_sentence(self.iou_sum),
            oiou: if self.union_sum == 0 { 0.0 } else { self.intersection_sum as f64 / self.union_sum as f64 },
            prec: std::array::from_fn(|i| (thresholds[i], per_sentence(self.above[i] as f64))),
            count: self.count,
        }
    }
}

#[cfg(test)]
mod tests;
