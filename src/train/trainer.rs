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
use tch::Tensor;

use super::adam::Adam;
use super::bad_samples;
use super::checkpoint::{self, Resumed, Snapshot, TrainState, Which};
use super::history::{self, prec_by_label, EpochRecord, IntervalRecord, MetricsLine};
use super::precision::MixedPrecision;
use super::recipe::TrainOptions;
use super::run_folder::TrainLog;
use super::step::{backward_micro, finish_step, BatchOutcome};
pub use super::step::{step_scaled, train_step};
use crate::data::{Batch, TrainData};
use crate::distributed::is_main;
use crate::distributed::sync_bn::SyncBn;
use crate::model::{Detris, Levers};

pub struct Trainer {
    pub model: Detris,
    pub opt: Adam,
    pub state: TrainState,
    pub opts: TrainOptions,
    pub out: PathBuf,
    /// Draw a progress bar (rank 0 only); without it, log lines every `print_freq` steps.
    pub progress_bar: bool,
    /// The run folder's `train.log`: every log line (and, under a progress bar,
    /// the `print_freq` lines the bar stands for).
    pub train_log: Option<TrainLog>,
    /// The start files the checkpoints name instead of holding the frozen weights (`None`: they hold them).
    pub base: Option<crate::weights::base::Base>,
}

/// One epoch's training, summed as it goes (the official meters).
struct EpochTotals {
    loss_sum: f64,
    iou_sum: f64,
    pr50_sum: f64,
    steps: usize,
    started: Instant,
}

impl EpochTotals {
    fn new() -> EpochTotals {
        EpochTotals { loss_sum: 0.0, iou_sum: 0.0, pr50_sum: 0.0, steps: 0, started: Instant::now() }
    }

    fn mean_loss(&self) -> Option<f64> {
        (self.steps > 0).then(|| self.loss_sum / self.steps as f64)
    }
}

/// The micro-batches of one optimizer step so far: each one's outcome and size.
#[derive(Default)]
struct StepParts(Vec<(BatchOutcome, usize)>);

impl StepParts {
    fn samples(&self) -> usize {
        self.0.iter().map(|p| p.1).sum()
    }

    /// The step's outcome: its micro-batches' weighted by their sizes (one micro-batch's as it is).
    fn outcome(&self) -> BatchOutcome {
        if let [(one, _)] = self.0[..] {
            return one;
        }
        let n = self.samples() as f64;
        let mean = |f: fn(&BatchOutcome) -> f64| self.0.iter().map(|(o, k)| f(o) * *k as f64).sum::<f64>() / n;
        BatchOutcome { loss: mean(|o| o.loss), iou: mean(|o| o.iou), pr50: mean(|o| o.pr50) }
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
        Ok(Trainer { model, opt, state, opts, out: out.to_path_buf(), progress_bar: true, train_log: None, base: None })
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
        let base = self.base.as_ref();
        let snap = Snapshot { model: &self.model, opt: &self.opt, state: &self.state, options: &self.opts, val, base };
        checkpoint::save(&self.out, which, &snap)
    }

    fn steps_done(&self) -> bool {
        self.opts.max_steps.is_some_and(|m| self.state.global_step >= m)
    }

    /// Runs until `epochs` (or `max_steps`) is reached.
    pub fn run(&mut self, log: &mut dyn FnMut(&str)) -> Result<()> {
        let train_log = self.train_log.clone();
        let mut quiet = |_: &str| {};
        let mut teed = |line: &str| {
            log(line);
            train_log.iter().for_each(|t| t.line(line));
        };
        let log: &mut dyn FnMut(&str) = if is_main() { &mut teed } else { &mut quiet };
        self.start_data_parallel()?;
        let (o, s) = (&self.opts, &self.opts.schedule);
        let train = TrainData::open(&o.data, &self.model.config, s.seed, o.workers, s.batch_size)?;
        let n = o.accumulate.max(1);
        // A step's batches all come from one epoch: the last ones that fill no step are left out.
        let steps_per_epoch = train.batches_per_epoch() / n;
        if steps_per_epoch == 0 {
            let need = if n > 1 { format!("one step ({n} batches of {})", s.batch_size) } else { "one batch".into() };
            bail!("the training split has fewer refs ({}) than {need} ({})", train.len(), s.batch_size * n);
        }
        if self.state.batch_in_epoch % n != 0 {
            bail!("the checkpoint stopped inside an accumulation of {n} batches: it cannot resume exactly");
        }
        let mut precision = self.precision()?;
        let per_epoch = match n {
            1 => format!("{steps_per_epoch} batches of {} per epoch", s.batch_size),
            _ => format!("{steps_per_epoch} steps of {n} batches of {} per epoch", s.batch_size),
        };
        let (name, data, val_split) = (&self.model.config.name, o.data.describe(), o.data.val_label());
        log(&format!(
            "training {name} on {data} ({} refs, {per_epoch}), best checkpoint chosen on `{val_split}`",
            train.len()
        ));
        while self.state.epoch < self.opts.schedule.epochs {
            let totals = self.train_epoch(&train, steps_per_epoch, &mut precision, log)?;
            if self.state.batch_in_epoch < steps_per_epoch * n {
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
    /// epoch's last full step or `max_steps`.
    fn train_epoch(
        &mut self,
        train: &TrainData,
        steps_per_epoch: usize,
        precision: &mut MixedPrecision,
        log: &mut dyn FnMut(&str),
    ) -> Result<EpochTotals> {
        let (epoch, n) = (self.state.epoch, self.opts.accumulate.max(1));
        self.opt.lr = self.opts.schedule.lr_at(epoch);
        let bar =
            progress_bar(steps_per_epoch as u64, epoch, self.opts.schedule.epochs, self.progress_bar && is_main());
        bar.set_position((self.state.batch_in_epoch / n) as u64);
        let mut totals = EpochTotals::new();
        let (device, seed) = (self.model.device(), self.opts.schedule.seed);
        let sync_bn = SyncBn::for_run(self.opts.recipe.sync_bn);
        // Each micro-batch's loss weighs its share of the step's planned samples.
        let planned = (train.local_batch() * n) as f64;
        let left = (steps_per_epoch * n).saturating_sub(self.state.batch_in_epoch);
        let mut parts = StepParts::default();
        for batch in train.epoch(epoch, self.state.batch_in_epoch).take(left) {
            if self.state.batch_in_epoch % n == 0 {
                if self.steps_done() {
                    break;
                }
                // Dropout randomness from (seed, step): a resumed run draws the same.
                tch::manual_seed((seed as i64) ^ (self.state.global_step as i64).wrapping_mul(0x9E37_79B9));
                self.opt.zero_grad();
                parts = StepParts::default();
            }
            let batch = batch?;
            self.note_skipped(&batch, log)?;
            if batch.len > 0 {
                let b = batch.to_device(device);
                let weight = b.len as f64 / planned;
                let (img, ids, target) = (&b.img, &b.ids, &b.target);
                let o =
                    backward_micro(&self.model, img, ids, target, weight, Levers::FAST, sync_bn.as_ref(), precision)?;
                parts.0.push((o, b.len));
            }
            self.state.batch_in_epoch += 1;
            if self.state.batch_in_epoch % n == 0 {
                self.end_step(&parts, planned, &mut totals, precision, steps_per_epoch, &bar, log)?;
            }
        }
        bar.finish_and_clear();
        Ok(totals)
    }

    /// The samples a batch left out: named, counted, and the run stopped past
    /// `--max-bad-samples` (every rank alike).
    fn note_skipped(&mut self, batch: &Batch, log: &mut dyn FnMut(&str)) -> Result<()> {
        let world = crate::distributed::rank_and_size().1;
        let count_all = match world {
            1 => batch.skipped.len(),
            w => (crate::distributed::mean_over_ranks(batch.skipped.len() as f64)? * w as f64).round() as usize,
        };
        if world > 1 && batch.len == 0 {
            bail!("every sample of this rank's batch was unreadable: a data-parallel step cannot go on without it");
        }
        if count_all == 0 {
            return Ok(());
        }
        let (skips, history) = (&mut self.state.skipped, &self.state.history);
        bad_samples::note(skips, history, &batch.skipped, count_all, self.opts.max_bad_samples, log)
    }

    /// After a step's last micro-batch: Adam's step, the NaN check, the meters,
    /// the interval record and the `--save-every` checkpoint.
    #[allow(clippy::too_many_arguments)]
    fn end_step(
        &mut self,
        parts: &StepParts,
        planned: f64,
        totals: &mut EpochTotals,
        precision: &mut MixedPrecision,
        steps_per_epoch: usize,
        bar: &indicatif::ProgressBar,
        log: &mut dyn FnMut(&str),
    ) -> Result<()> {
        if parts.samples() == 0 {
            log(&format!("no step at step {}: every sample of its batches was unreadable", self.state.global_step));
            return Ok(());
        }
        finish_step(&mut self.opt, &mut precision.scaler, planned / parts.samples() as f64)?;
        let o = parts.outcome();
        // Data-parallel: the mean over ranks, so that all stop together.
        let loss = crate::distributed::mean_over_ranks(o.loss)?;
        self.state.grad_scaler = Some(precision.scaler.clone());
        if !loss.is_finite() {
            bail!(
                "the loss became {loss} at epoch {} step {}: stopped; {}",
                self.state.epoch + 1,
                self.state.global_step,
                self.last_good()
            );
        }
        totals.loss_sum += loss;
        totals.iou_sum += crate::distributed::mean_over_ranks(o.iou)?;
        totals.pr50_sum += crate::distributed::mean_over_ranks(o.pr50)?;
        totals.steps += 1;
        self.state.global_step += 1;
        bar.inc(1);
        let rate = totals.steps as f64 / totals.started.elapsed().as_secs_f64();
        bar.set_message(format!("loss {loss:.4} lr {:.1e} {rate:.2} it/s", self.opt.lr));
        if self.state.global_step % self.opts.recipe.print_freq.max(1) == 0 {
            self.log_interval(totals, loss, rate, steps_per_epoch, bar.is_hidden(), log)?;
        }
        if self.opts.save_every.is_some_and(|n| self.state.global_step % n == 0) {
            self.save(Which::MID_EPOCH, None)?;
        }
        Ok(())
    }

    /// Every `print_freq` steps: the official meters' running means, to
    /// `metrics.jsonl`, and as a log line (to `train.log` alone under a progress bar).
    fn log_interval(
        &self,
        totals: &EpochTotals,
        loss: f64,
        rate: f64,
        steps_per_epoch: usize,
        to_terminal: bool,
        log: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let k = totals.steps as f64;
        let step_in_epoch = self.state.batch_in_epoch / self.opts.accumulate.max(1);
        let record = IntervalRecord {
            epoch: self.state.epoch + 1,
            step: self.state.global_step,
            step_in_epoch,
            lr: self.opt.lr,
            loss: totals.loss_sum / k,
            iou: totals.iou_sum / k,
            pr50: totals.pr50_sum / k,
        };
        let line = format!(
            "step {} (epoch {}, batch {step_in_epoch}/{steps_per_epoch}): loss {loss:.4} (mean {:.4}), train IoU {:.4} Pr@50 {:.4}, {rate:.2} it/s",
            record.step, record.epoch, record.loss, record.iou, record.pr50
        );
        if !is_main() {
            return Ok(());
        }
        MetricsLine::Interval(&record).append_to(&self.out.join("metrics.jsonl"))?;
        match (to_terminal, &self.train_log) {
            (true, _) => log(&line),
            (false, Some(t)) => t.line(&line),
            (false, None) => {}
        }
        Ok(())
    }

    /// Where a NaN stop leaves the run: its newest checkpoint on disk, or none.
    fn last_good(&self) -> String {
        let candidates = [self.last_path(), checkpoint::official_path(&self.out, false)];
        match candidates.into_iter().find(|p| p.exists()) {
            Some(p) => format!("the last good checkpoint is {}", p.display()),
            None => format!("no checkpoint was written yet into {}", self.out.display()),
        }
    }

    /// After an epoch's last batch: validate, record, choose `best`, save, plot.
    fn end_epoch(&mut self, totals: EpochTotals, log: &mut dyn FnMut(&str)) -> Result<()> {
        let epoch = self.state.epoch;
        let val = self.validate()?;
        let record = EpochRecord {
            epoch: epoch + 1,
            lr: self.opt.lr,
            seconds: totals.started.elapsed().as_secs_f64(),
            skipped: std::mem::take(&mut self.state.skipped.samples),
            skipped_count: std::mem::take(&mut self.state.skipped.count),
            step: self.state.global_step,
            train_loss: totals.mean_loss(),
            val_miou: val.as_ref().map(|v| v.miou),
            val_oiou: val.as_ref().map(|v| v.oiou),
            val_prec: val.as_ref().map(|v| prec_by_label(v).into_iter().collect()),
            val_split: self.opts.data.val_label(),
        };
        if is_main() {
            MetricsLine::Epoch(&record).append_to(&self.out.join("metrics.jsonl"))?;
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
        let skipped = match self.state.history.last().map_or(0, |r| r.skipped_count) {
            0 => String::new(),
            k => format!(", {k} unreadable samples skipped"),
        };
        log(&format!(
            "epoch {}/{epochs}: loss {:.4}, lr {:.1e}, {} mIoU {miou:.4} oIoU {oiou:.4}{}{skipped}",
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
