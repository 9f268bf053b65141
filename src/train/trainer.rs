//! The training loop, top to bottom (the schedule and
//! the choice of `best` are in `docs/architecture.md`, Quirks): Adam, MultiStepLR stepped per
//! epoch, BCE-with-logits on the nearest-downsampled soft mask, train-mode
//! BatchNorm and dropout; each epoch a validation mIoU, an atomic `last`
//! checkpoint and `best` by validation mIoU; `--resume` continues exactly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use detris_io::data::loader::Mode;
use detris_io::metrics::Summary;
use serde::Serialize;
use tch::{Kind, Tensor};

use super::adam::Adam;
use super::checkpoint::{self, Resumed, Snapshot, TrainState, Which};
use super::history::{self, prec_by_label, EpochRecord};
use super::precision::{GradScaler, MixedPrecision};
use super::recipe::TrainOptions;
use crate::data::TrainData;
use crate::distributed::is_main;
use crate::distributed::sync_bn::SyncBn;
use crate::model::{Ctx, Detris, Levers};

pub struct Trainer {
    pub model: Detris,
    pub opt: Adam,
    pub state: TrainState,
    pub opts: TrainOptions,
    pub out: PathBuf,
    /// Draw a progress bar (rank 0 only); without it, log lines every `print_freq` steps.
    pub progress_bar: bool,
}

/// One epoch's training, summed as it goes.
struct EpochTotals {
    loss_sum: f64,
    steps: usize,
    started: Instant,
}

impl EpochTotals {
    fn mean_loss(&self) -> Option<f64> {
        (self.steps > 0).then(|| self.loss_sum / self.steps as f64)
    }
}

/// What every rank of a data-parallel run must agree on before the first step.
#[derive(Serialize)]
struct RunIdentity<'a> {
    #[serde(flatten)]
    options: &'a TrainOptions,
    resume_at_step: u64,
}

impl Trainer {
    pub fn new(model: Detris, opts: TrainOptions, out: &Path) -> Result<Trainer> {
        if opts.train_backbones {
            // Every parameter trains; BatchNorm running statistics stay buffers.
            for (name, v) in model.vs.variables() {
                let _ = v.set_requires_grad(!name.contains("running_"));
            }
        }
        std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the run folder", out.display()))?;
        let trainable: Vec<(String, Tensor)> =
            model.vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
        // The official optimizer (two groups, weight decay, clipping) and first epoch.
        let opt = Adam::official(trainable, &opts.recipe.adam_options(opts.schedule.base_lr));
        let state = TrainState { epoch: opts.recipe.start_epoch, ..Default::default() };
        Ok(Trainer { model, opt, state, opts, out: out.to_path_buf(), progress_bar: true })
    }

    pub fn last_path(&self) -> PathBuf {
        checkpoint::last_path(&self.out)
    }
    pub fn best_path(&self) -> PathBuf {
        checkpoint::best_path(&self.out)
    }

    /// Continues from a checkpoint of either format: detris's (the exact
    /// position; only the stopping point, the schedule ahead and how often to
    /// save may differ from its options) or an official `last_model.pth`
    /// (the epoch after its own, at the learning rate the schedule gives it).
    pub fn resume_from(&mut self, path: &Path) -> Result<()> {
        match checkpoint::read(path, &self.model, &mut self.opt)? {
            Resumed::Detris { state, options } => {
                if serde_json::to_value(options.resumable_as(&self.opts))? != serde_json::to_value(&self.opts)? {
                    bail!(
                        "{}: --resume with different training options than the checkpoint's; they were:\n{}",
                        path.display(),
                        serde_json::to_string_pretty(&options)?
                    );
                }
                self.state = state;
            }
            Resumed::Official(s) => {
                self.state.epoch = s.epoch;
                self.state.batch_in_epoch = 0;
                self.state.global_step = s.adam_step.max(0) as u64;
                self.state.best_miou = (s.epoch > 0).then_some(s.best_iou);
                self.opt.lr = self.opts.schedule.lr_at(s.epoch);
            }
        }
        Ok(())
    }

    /// Writes the checkpoint files `which` names (rank 0 alone writes the run's files).
    fn save(&self, which: Which, val: Option<&Summary>) -> Result<()> {
        if !is_main() {
            return Ok(());
        }
        let snap = Snapshot { model: &self.model, opt: &self.opt, state: &self.state, options: &self.opts, val };
        checkpoint::save(&self.out, which, &snap)
    }

    fn steps_done(&self) -> bool {
        self.opts.max_steps.is_some_and(|m| self.state.global_step >= m)
    }

    /// Runs until `epochs` (or `max_steps`) is reached.
    pub fn run(&mut self, log: &mut dyn FnMut(&str)) -> Result<()> {
        let mut quiet = |_: &str| {};
        let log: &mut dyn FnMut(&str) = if is_main() { log } else { &mut quiet };
        self.start_data_parallel()?;
        let (o, s) = (&self.opts, &self.opts.schedule);
        let train = TrainData::open(&o.data, &self.model.config, s.seed, o.workers, s.batch_size)?;
        let per_epoch = train.batches_per_epoch();
        if per_epoch == 0 {
            bail!("the training split has fewer refs ({}) than one batch ({})", train.len(), s.batch_size);
        }
        let mut precision = self.precision()?;
        log(&format!(
            "training {} on {} ({} refs, {per_epoch} batches of {} per epoch), best checkpoint chosen on `{}`",
            self.model.config.name,
            o.data.describe(),
            train.len(),
            s.batch_size,
            o.data.val_label()
        ));
        while self.state.epoch < self.opts.schedule.epochs {
            let totals = self.train_epoch(&train, per_epoch, &mut precision, log)?;
            if self.state.batch_in_epoch < per_epoch {
                // Stopped by max_steps inside the epoch: keep the position.
                self.save(Which::MID_EPOCH, None)?;
                let (step, epoch, batch) = (self.state.global_step, self.state.epoch + 1, self.state.batch_in_epoch);
                log(&format!("stopped at step {step} (epoch {epoch}, batch {batch})"));
                return Ok(());
            }
            self.end_epoch(totals, log)?;
            if self.steps_done() {
                break;
            }
        }
        Ok(())
    }

    /// The run's arithmetic, with the loss scale a resumed checkpoint had.
    fn precision(&self) -> Result<MixedPrecision> {
        let device = self.model.device();
        let mut precision = MixedPrecision::new(self.opts.precision, device)?;
        if let Some(scaler) = &self.state.grad_scaler {
            precision.scaler = scaler.clone();
        }
        if device.is_cuda() {
            // Every batch has the same shapes: let cuDNN pick its fastest kernels once.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        Ok(precision)
    }

    /// The batches of the current epoch from where the run stands, until the
    /// epoch ends or `max_steps` is reached.
    fn train_epoch(
        &mut self,
        train: &TrainData,
        per_epoch: usize,
        precision: &mut MixedPrecision,
        log: &mut dyn FnMut(&str),
    ) -> Result<EpochTotals> {
        let epoch = self.state.epoch;
        self.opt.lr = self.opts.schedule.lr_at(epoch);
        let bar = progress_bar(per_epoch as u64, epoch, self.opts.schedule.epochs, self.progress_bar && is_main());
        bar.set_position(self.state.batch_in_epoch as u64);
        let mut totals = EpochTotals { loss_sum: 0.0, steps: 0, started: Instant::now() };
        let (device, seed) = (self.model.device(), self.opts.schedule.seed);
        let sync_bn = SyncBn::for_run(self.opts.recipe.sync_bn);
        for batch in train.epoch(epoch, self.state.batch_in_epoch) {
            if self.steps_done() {
                break;
            }
            let batch = batch?;
            // Dropout randomness from (seed, step): a resumed run draws the same.
            tch::manual_seed((seed as i64) ^ (self.state.global_step as i64).wrapping_mul(0x9E37_79B9));
            let batch = batch.to_device(device);
            let (img, ids, target) = (&batch.img, &batch.ids, &batch.target);
            let loss = train_step(&self.model, &mut self.opt, img, ids, target, Levers::FAST, sync_bn.as_ref(), precision)?;
            // Data-parallel: the mean over ranks, so that all stop together.
            let loss = crate::distributed::mean_over_ranks(loss)?;
            self.state.grad_scaler = Some(precision.scaler.clone());
            if !loss.is_finite() {
                bail!(
                    "the loss became {loss} at epoch {} step {}: stopped; the last good checkpoint is {}",
                    epoch + 1,
                    self.state.global_step,
                    self.last_path().display()
                );
            }
            totals.loss_sum += loss;
            totals.steps += 1;
            self.state.batch_in_epoch += 1;
            self.state.global_step += 1;
            bar.inc(1);
            let rate = totals.steps as f64 / totals.started.elapsed().as_secs_f64();
            bar.set_message(format!("loss {loss:.4} lr {:.1e} {rate:.2} it/s", self.opt.lr));
            if bar.is_hidden() && self.state.global_step % self.opts.recipe.print_freq.max(1) == 0 {
                log(&format!(
                    "step {} (epoch {}, batch {}/{per_epoch}): loss {:.4} (mean {:.4}), {rate:.2} it/s",
                    self.state.global_step,
                    epoch + 1,
                    self.state.batch_in_epoch,
                    loss,
                    totals.loss_sum / totals.steps as f64
                ));
            }
            if self.opts.save_every.is_some_and(|n| self.state.global_step % n == 0) {
                self.save(Which::MID_EPOCH, None)?;
            }
        }
        bar.finish_and_clear();
        Ok(totals)
    }

    /// After an epoch's last batch: validate, record, choose `best`, save, plot.
    fn end_epoch(&mut self, totals: EpochTotals, log: &mut dyn FnMut(&str)) -> Result<()> {
        let epoch = self.state.epoch;
        let val = self.validate()?;
        let record = EpochRecord {
            epoch: epoch + 1,
            lr: self.opt.lr,
            seconds: totals.started.elapsed().as_secs_f64(),
            step: self.state.global_step,
            train_loss: totals.mean_loss(),
            val_miou: val.as_ref().map(|v| v.miou),
            val_oiou: val.as_ref().map(|v| v.oiou),
            val_prec: val.as_ref().map(|v| prec_by_label(v).into_iter().collect()),
            val_split: self.opts.data.val_label(),
        };
        if is_main() {
            record.append_to(&self.out.join("metrics.jsonl"))?;
        }
        self.state.history.push(record);
        self.state.epoch += 1;
        self.state.batch_in_epoch = 0;
        let (miou, oiou) = val.as_ref().map_or((f64::NAN, f64::NAN), |v| (v.miou, v.oiou));
        // As the official loop: best when the validation mIoU is at least the best so far.
        let improved = val.is_some() && self.state.best_miou.is_none_or(|b| miou >= b);
        if improved {
            self.state.best_miou = Some(miou);
            self.state.best_epoch = Some(epoch + 1);
        }
        // `save_freq` spaces the `last` files; the final epoch always writes.
        let (r, epochs) = (&self.opts.recipe, self.opts.schedule.epochs);
        let due = self.state.epoch % r.save_freq.max(1) == 0 || self.state.epoch >= epochs;
        self.save(Which { last: due, best: improved, formats: r.save_format }, val.as_ref())?;
        log(&format!(
            "epoch {}/{epochs}: loss {:.4}, lr {:.1e}, {} mIoU {miou:.4} oIoU {oiou:.4}{}",
            epoch + 1,
            totals.mean_loss().unwrap_or(f64::NAN),
            self.opt.lr,
            self.opts.data.val_label(),
            if improved { " (best)" } else { "" }
        ));
        if is_main() {
            history::plot(&self.out.join("training.png"), &self.state.history)?;
        }
        Ok(())
    }

    /// The validation of the epoch just trained, unless the recipe has none.
    fn validate(&self) -> Result<Option<Summary>> {
        if !self.opts.recipe.evaluate {
            return Ok(None);
        }
        let o = &self.opts;
        let eval = crate::eval::evaluate(
            &self.model,
            &crate::eval::EvalRequest {
                mode: Mode::Val,
                limit: (o.val_limit > 0).then_some(o.val_limit),
                batch_size: o.recipe.batch_size_val,
                workers: o.workers,
                ..crate::eval::EvalRequest::of(o.data.val.clone())
            },
        )?;
        Ok(Some(eval.summary))
    }

    /// Data-parallel runs: the same setup on every rank, rank 0's weights.
    fn start_data_parallel(&self) -> Result<()> {
        // Name order: the variable map's own order differs between processes.
        let mut vars: Vec<(String, Tensor)> = self.model.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let shared: Vec<Tensor> = vars
            .iter()
            .filter(|(n, v)| v.requires_grad() || n.contains("running_"))
            .map(|(_, v)| v.shallow_clone())
            .collect();
        let identity = RunIdentity { options: &self.opts, resume_at_step: self.state.global_step };
        let files = self.opts.data.list_files();
        crate::distributed::start_training(&vars, &shared, &serde_json::to_value(identity)?, &files)
    }
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
    let ctx = Ctx { train: true, levers, trace: None, sync_bn };
    opt.zero_grad();
    let autocast = precision.autocast.is_some();
    let loss = precision.forward(|| {
        let logits = model.forward(img, ids, &ctx);
        // The loss in f32, whatever autocast computed the logits in.
        let logits = if autocast { logits.to_kind(Kind::Float) } else { logits };
        Detris::loss(&logits, target).0
    })?;
    // A rank lost during the forward: its error, before a backward that would wait on it.
    sync_bn.map_or(Ok(()), SyncBn::check)?;
    let value = loss.double_value(&[]);
    // Data-parallel: a backward through SyncBatchNorm talks to the other ranks.
    (loss * precision.scaler.scale).f_backward().map_err(|e| crate::distributed::failed("the backward pass", e))?;
    crate::distributed::average_gradients(opt.tensors())?;
    // The official loop clips here (on the averaged gradients), before the scaler's inf check and unscaling.
    opt.clip_grad_norm();
    step_scaled(opt, &mut precision.scaler);
    Ok(value)
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

fn progress_bar(len: u64, epoch: usize, epochs: usize, shown: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    if !shown {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
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
