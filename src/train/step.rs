//! One optimizer step, as the official loop takes it, and the same step
//! split into micro-batches (`--accumulate`): each micro-batch's loss is
//! weighted by its share of the step's samples before its backward, so the
//! summed gradients are those of one batch of all of them, up to f32
//! rounding and BatchNorm (train-mode BatchNorm normalises each micro-batch
//! with its own statistics, and updates its running statistics once per
//! micro-batch).

use anyhow::Result;
use tch::{Kind, Tensor};

use super::adam::Adam;
use super::precision::{GradScaler, MixedPrecision};
use crate::distributed::sync_bn::SyncBn;
use crate::model::{Ctx, Detris, Levers};

/// The official training metric's threshold on the sigmoid (`trainMetricGPU`).
const TRAIN_METRIC_THRESHOLD: f64 = 0.35;

/// What the forward of one (micro-)batch gave.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchOutcome {
    /// The batch's mean loss.
    pub loss: f64,
    /// The official training metric on the batch: mean IoU and the fraction of
    /// IoUs above 0.5 of the thresholded logits against the target (> 0).
    pub iou: f64,
    pub pr50: f64,
}

/// Forward in train mode, BCE-with-logits and backward of one micro-batch of
/// an optimizer step, its loss multiplied by `weight` (its share of the
/// step's samples; 1 for a step of one batch). Gradients add up in the
/// parameters' `.grad` until [`finish_step`].
/// img (B, 3, S, S), ids (B, L), target (B, 1, S, S).
#[allow(clippy::too_many_arguments)]
pub fn backward_micro(
    model: &Detris,
    img: &Tensor,
    ids: &Tensor,
    target: &Tensor,
    weight: f64,
    levers: Levers,
    sync_bn: Option<&SyncBn>,
    precision: &mut MixedPrecision,
) -> Result<BatchOutcome> {
    let ctx = Ctx { train: true, levers, trace: None, sync_bn };
    let autocast = precision.autocast.is_some();
    let (loss, logits, resized_target) = precision.forward(|| {
        let logits = model.forward(img, ids, &ctx);
        // The loss in f32, whatever autocast computed the logits in.
        let logits = if autocast { logits.to_kind(Kind::Float) } else { logits };
        let (loss, resized_target) = Detris::loss(&logits, target);
        (loss, logits.detach(), resized_target)
    })?;
    let metric = tch::no_grad(|| train_metric(&logits, &resized_target));
    // A rank lost during the forward: its error, before a backward that would wait on it.
    sync_bn.map_or(Ok(()), SyncBn::check)?;
    let value = loss.double_value(&[]);
    // Data-parallel: a backward through SyncBatchNorm talks to the other ranks.
    (loss * (precision.scaler.scale * weight))
        .f_backward()
        .map_err(|e| crate::distributed::failed("the backward pass", e))?;
    Ok(BatchOutcome { loss: value, iou: metric.0, pr50: metric.1 })
}

/// After the backward of every micro-batch of a step: `grad_factor` applied to the
/// gradients (when the micro-batches' weights do not sum to 1, e.g. samples were
/// skipped), averaged over ranks, clipped, Adam's step (or a skipped f16 step).
pub fn finish_step(opt: &mut Adam, scaler: &mut GradScaler, grad_factor: f64) -> Result<()> {
    if grad_factor != 1.0 {
        tch::no_grad(|| {
            for g in opt.tensors().map(Tensor::grad).filter(Tensor::defined) {
                let _ = g.shallow_clone().g_mul_scalar_(grad_factor);
            }
        });
    }
    crate::distributed::average_gradients(opt.tensors())?;
    // The official loop clips here (on the averaged gradients), before the scaler's inf check and unscaling.
    opt.clip_grad_norm();
    step_scaled(opt, scaler);
    Ok(())
}

/// One optimizer step, as the official loop: zero the gradients, forward in
/// train mode, BCE-with-logits, backward, Adam. Returns the loss (a skipped
/// f16 step, after a gradient overflow, returns it too).
/// img (B, 3, S, S), ids (B, L), target (B, 1, S, S).
pub fn train_step(
    model: &Detris,
    opt: &mut Adam,
    img: &Tensor,
    ids: &Tensor,
    target: &Tensor,
    levers: Levers,
    sync_bn: Option<&SyncBn>,
    precision: &mut MixedPrecision,
) -> Result<f64> {
    opt.zero_grad();
    let outcome = backward_micro(model, img, ids, target, 1.0, levers, sync_bn, precision)?;
    finish_step(opt, &mut precision.scaler, 1.0)?;
    Ok(outcome.loss)
}

/// `trainMetricGPU`: sigmoid ≥ 0.35 against target > 0, per sample
/// IoU = I / (U + 1e-6); the batch's mean IoU and fraction of IoUs > 0.5.
fn train_metric(logits: &Tensor, target: &Tensor) -> (f64, f64) {
    let n = logits.size()[0];
    let pred = logits.sigmoid().ge(TRAIN_METRIC_THRESHOLD).view([n, -1]).to_kind(Kind::Float);
    let truth = target.gt(0.0).view([n, -1]).to_kind(Kind::Float);
    let inter = (&pred * &truth).sum_dim_intlist(1, false, Kind::Float);
    let union = pred.sum_dim_intlist(1, false, Kind::Float) + truth.sum_dim_intlist(1, false, Kind::Float) - &inter;
    let iou = inter / (union + 1e-6);
    let pr50 = iou.gt(0.5).to_kind(Kind::Float).mean(Kind::Float);
    (iou.mean(Kind::Float).double_value(&[]), pr50.double_value(&[]))
}
/// After backward, on the final gradients (so that every rank of a
/// distributed run decides alike): Adam's step on the unscaled gradients,
/// or, when loss scaling is on and a gradient is inf or NaN, no step; then
/// the scale's update. Returns whether Adam stepped.
pub fn step_scaled(opt: &mut Adam, scaler: &mut GradScaler) -> bool {
    let finite = !scaler.enabled || grads_finite(opt);
    if finite {
        opt.step(scaler.scale);
    }
    scaler.update(!finite);
    finite
}

/// Whether every gradient is finite, read back once (one device
/// synchronisation per step, not one per parameter).
fn grads_finite(opt: &Adam) -> bool {
    let flags: Vec<Tensor> =
        opt.tensors().map(Tensor::grad).filter(|g| g.defined()).map(|g| g.isfinite().all()).collect();
    flags.is_empty() || Tensor::stack(&flags, 0).all().int64_value(&[]) == 1
}
#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn gradients_are_finite_until_one_element_is_not() {
        let params: Vec<(String, Tensor)> = ["a", "b", "unused"]
            .iter()
            .map(|n| (n.to_string(), Tensor::ones([3, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true)))
            .collect();
        let opt = Adam::new(params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect(), 1e-3);
        assert!(grads_finite(&opt), "no gradient yet counts as finite");
        (&params[0].1 * 2.0 + &params[1].1).sum(Kind::Float).backward();
        assert!(grads_finite(&opt));
        let mut g = params[1].1.grad();
        let _ = g.narrow(1, 2, 1).fill_(f64::INFINITY);
        assert!(!grads_finite(&opt));
        let _ = g.fill_(f64::NAN);
        assert!(!grads_finite(&opt));
    }

    #[test]
    fn an_overflowing_step_is_skipped_and_a_clean_one_steps_on_unscaled_gradients() {
        let p = Tensor::ones([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = Adam::new(vec![("p".into(), p.shallow_clone())], 1e-2);
        let mut scaler = GradScaler::new(true);
        let scale = scaler.scale;
        (&p * scale).sum(Kind::Float).backward();
        let _ = p.grad().narrow(1, 0, 1).fill_(f64::NAN);
        let before = p.detach().copy();
        assert!(!step_scaled(&mut opt, &mut scaler));
        assert_eq!(opt.step, 0, "the skipped step is not counted");
        assert!(p.equal(&before), "no parameter moved");
        assert_eq!(scaler.scale, scale / 2.0);

        // A clean step equals Adam on the gradients without the scale.
        opt.zero_grad();
        (&p * scaler.scale).sum(Kind::Float).backward();
        let q = Tensor::ones([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut plain = Adam::new(vec![("p".into(), q.shallow_clone())], 1e-2);
        q.sum(Kind::Float).backward();
        assert!(step_scaled(&mut opt, &mut scaler));
        plain.step(1.0);
        assert_eq!(opt.step, 1);
        // Dividing by a power of two is exact: the same update to the bit.
        assert!(p.equal(&q));
        assert_eq!(scaler.growth_tracker, 1);
    }
}
