//! The training loop, top to bottom (the schedule and
//! the choice of `best` are in `docs/architecture.md`, Quirks): Adam, MultiStepLR stepped per
//! epoch, BCE-with-logits on the nearest-downsampled soft mask, train-mode
//! BatchNorm and dropout; each epoch a validation mIoU, an atomic `last`
//! checkpoint and `best` by validation mIoU; `--resume` continues exactly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::adam::Adam;
use super::checkpoint::{self, TrainState};
use super::precision::{GradScaler, MixedPrecision};
use super::recipe::Recipe;
use crate::data::{self, DataSpec};
use crate::device::Precision;
use crate::model::{Ctx, Detris, Levers};
use detris_io::data::loader::Mode;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    pub data: DataSpec,
    pub epochs: usize,
    /// Epochs after which the lr is multiplied by `lr_decay` (MultiStepLR).
    pub milestones: Vec<usize>,
    pub base_lr: f64,
    pub lr_decay: f64,
    pub batch_size: usize,
    pub seed: u64,
    /// f32, or bf16 autocast (CPU, CUDA), or f16 autocast with loss scaling (CUDA).
    pub precision: Precision,
    /// Stop after this many optimizer steps in total (tests, quick runs).
    pub max_steps: Option<u64>,
    /// Also write `last` every this many steps (so a kill loses little).
    pub save_every: Option<u64>,
    /// Train the backbones too (the first stage of the shipped model); the
    /// official recipe freezes them.
    pub train_backbones: bool,
    /// Validate on at most this many refs (0 = all).
    pub val_limit: usize,
    pub workers: usize,
    /// The official optimizer, validation and saving options.
    #[serde(default)]
    pub recipe: Recipe,
}

/// `lr` of epoch `e` (0-based): base · decay^(milestones ≤ e), as
/// `MultiStepLR.step(epoch)` gives it in the official loop.
pub fn lr_at(opts: &TrainOptions, epoch: usize) -> f64 {
    let passed = opts.milestones.iter().filter(|&&m| m <= epoch).count();
    opts.base_lr * opts.lr_decay.powi(passed as i32)
}

pub struct Trainer {
    pub model: Detris,
    pub opt: Adam,
    pub state: TrainState,
    pub opts: TrainOptions,
    pub out: PathBuf,
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
        let r = &opts.recipe;
        let opt = Adam::official(trainable, opts.base_lr, r.lr_multi, r.weight_decay, r.max_norm);
        let state = TrainState { options: serde_json::to_value(&opts)?, epoch: r.start_epoch, ..Default::default() };
        Ok(Trainer { model, opt, state, opts, out: out.to_path_buf() })
    }

    pub fn last_path(&self) -> PathBuf {
        self.out.join("last.safetensors")
    }
    pub fn best_path(&self) -> PathBuf {
        self.out.join("best.safetensors")
    }

    /// Continues from a checkpoint written by `Trainer::save`.
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let state = checkpoint::load(path, &self.model, &mut self.opt)?;
        let mut then: TrainOptions = serde_json::from_value(state.options.clone())
            .with_context(|| format!("{}: the checkpoint's options are unreadable", path.display()))?;
        // Only the stopping point and the lr schedule ahead may change on
        // resume (the schedule is a function of the epoch alone).
        then.max_steps = self.opts.max_steps;
        then.epochs = self.opts.epochs;
        then.milestones = self.opts.milestones.clone();
        then.recipe.save_format = self.opts.recipe.save_format;
        then.recipe.save_freq = self.opts.recipe.save_freq;
        then.recipe.print_freq = self.opts.recipe.print_freq;
        then.recipe.batch_size_val = self.opts.recipe.batch_size_val;
        if serde_json::to_value(&then)? != serde_json::to_value(&self.opts)? {
            bail!(
                "{}: --resume with different training options than the checkpoint's; they were:\n{}",
                path.display(),
                serde_json::to_string_pretty(&state.options)?
            );
        }
        self.state = state;
        self.state.options = serde_json::to_value(&self.opts)?;
        Ok(())
    }

    fn save(&self, path: &Path) -> Result<()> {
        if !crate::distributed::is_main() {
            return Ok(()); // rank 0 alone writes the run's files
        }
        checkpoint::save(path, &self.model, &self.opt, &self.state, self.opts.train_backbones)
    }

    /// `--resume-from` an official `last_model.pth`: the run continues with the
    /// epoch after the checkpoint's, at the learning rate the schedule gives it.
    pub fn resume_official(&mut self, path: &Path) -> Result<()> {
        let s = super::official_pth::load(path, &self.model, &mut self.opt)?;
        self.state.epoch = s.epoch;
        self.state.batch_in_epoch = 0;
        self.state.global_step = s.adam_step.max(0) as u64;
        self.state.best_miou = (s.epoch > 0).then_some(s.best_iou);
        self.opt.lr = lr_at(&self.opts, s.epoch);
        Ok(())
    }

    /// What the official container records of the run besides the weights.
    fn run_record(&self, val: Option<&detris_io::metrics::Summary>) -> super::official_pth::RunRecord {
        let prec = val
            .map(|v| v.prec.iter().map(|(thr, p)| (detris_io::metrics::precision_label(*thr), *p)).collect())
            .unwrap_or_default();
        super::official_pth::RunRecord {
            epoch: self.state.epoch,
            cur_iou: val.map_or(0.0, |v| v.miou),
            best_iou: self.state.best_miou.unwrap_or(0.0),
            prec,
            milestones: self.opts.milestones.clone(),
            gamma: self.opts.lr_decay,
            base_lr: self.opts.base_lr,
            bn_batches: self.state.global_step as i64,
        }
    }

    /// The official `last_model.pth` / `best_model.pth` beside the safetensors files.
    pub fn official_path(&self, best: bool) -> PathBuf {
        self.out.join(if best { "best_model.pth" } else { "last_model.pth" })
    }

    /// The checkpoints of a finished epoch, in the formats asked for
    /// (`save_freq` spaces the `last` ones; the final epoch always writes).
    fn save_epoch(&self, improved: bool, val: Option<&detris_io::metrics::Summary>) -> Result<()> {
        if !crate::distributed::is_main() {
            return Ok(()); // rank 0 alone writes the run's files
        }
        let r = &self.opts.recipe;
        let due = self.state.epoch % r.save_freq.max(1) == 0 || self.state.epoch >= self.opts.epochs;
        if r.save_format.safetensors() {
            if due {
                self.save(&self.last_path())?;
            }
            if improved {
                // Write `best` as its own atomic file (no partial copies).
                self.save(&self.best_path())?;
            }
        }
        if r.save_format.pth() {
            let run = self.run_record(val);
            if due {
                super::official_pth::save(&self.official_path(false), &self.model, &self.opt, &run)?;
            }
            if improved {
                super::official_pth::save(&self.official_path(true), &self.model, &self.opt, &run)?;
            }
        }
        Ok(())
    }

    /// Runs until `epochs` (or `max_steps`) is reached.
    pub fn run(&mut self, log: &mut dyn FnMut(&str)) -> Result<()> {
        let mut quiet = |_: &str| {};
        let log: &mut dyn FnMut(&str) = if crate::distributed::is_main() { log } else { &mut quiet };
        self.start_data_parallel()?;
        let device = self.model.device();
        let train = data::TrainData::open(
            &self.opts.data,
            &self.model.config,
            self.opts.seed,
            self.opts.workers,
            self.opts.batch_size,
        )?;
        let per_epoch = train.batches_per_epoch();
        if per_epoch == 0 {
            bail!("the training split has fewer refs ({}) than one batch ({})", train.len(), self.opts.batch_size);
        }
        let metrics_path = self.out.join("metrics.jsonl");
        let mut precision = MixedPrecision::new(self.opts.precision, device)?;
        if let Some(scaler) = &self.state.grad_scaler {
            precision.scaler = scaler.clone();
        }
        if device.is_cuda() {
            // Every batch has the same shapes: let cuDNN pick its fastest kernels once.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        log(&format!(
            "training {} on {} ({} refs, {per_epoch} batches of {} per epoch), best checkpoint chosen on `{}`",
            self.model.config.name,
            self.opts.data.describe(),
            train.len(),
            self.opts.batch_size,
            self.opts.data.val_split
        ));
        while self.state.epoch < self.opts.epochs {
            let epoch = self.state.epoch;
            self.opt.lr = lr_at(&self.opts, epoch);
            let bar = progress_bar(per_epoch as u64, epoch, self.opts.epochs);
            bar.set_position(self.state.batch_in_epoch as u64);
            let started = Instant::now();
            let mut loss_sum = 0.0;
            let mut loss_n = 0usize;
            for batch in train.epoch(epoch, self.state.batch_in_epoch) {
                if self.opts.max_steps.is_some_and(|m| self.state.global_step >= m) {
                    break;
                }
                let batch = batch?;
                // Dropout randomness from (seed, step): a resumed run draws the same.
                tch::manual_seed((self.opts.seed as i64) ^ (self.state.global_step as i64).wrapping_mul(0x9E37_79B9));
                let batch = batch.to_device(device);
                let loss = train_step(
                    &self.model,
                    &mut self.opt,
                    &batch.img,
                    &batch.ids,
                    &batch.target,
                    Levers::FAST,
                    &mut precision,
                )?;
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
                loss_sum += loss;
                loss_n += 1;
                self.state.batch_in_epoch += 1;
                self.state.global_step += 1;
                bar.inc(1);
                let rate = loss_n as f64 / started.elapsed().as_secs_f64();
                bar.set_message(format!("loss {loss:.4} lr {:.1e} {rate:.2} it/s", self.opt.lr));
                if bar.is_hidden() && self.state.global_step % self.opts.recipe.print_freq.max(1) == 0 {
                    log(&format!(
                        "step {} (epoch {}, batch {}/{per_epoch}): loss {:.4} (mean {:.4}), {rate:.2} it/s",
                        self.state.global_step,
                        epoch + 1,
                        self.state.batch_in_epoch,
                        loss,
                        loss_sum / loss_n as f64
                    ));
                }
                if self.opts.save_every.is_some_and(|n| self.state.global_step % n == 0) {
                    self.save(&self.last_path())?;
                }
            }
            bar.finish_and_clear();
            let finished_epoch = self.state.batch_in_epoch >= per_epoch;
            if !finished_epoch {
                // Stopped by max_steps inside the epoch: keep the position.
                self.save(&self.last_path())?;
                log(&format!(
                    "stopped at step {} (epoch {}, batch {})",
                    self.state.global_step,
                    epoch + 1,
                    self.state.batch_in_epoch
                ));
                return Ok(());
            }
            let val = if self.opts.recipe.evaluate {
                Some(
                    crate::eval::evaluate(
                        &self.model,
                        &crate::eval::EvalRequest {
                            mode: Mode::Val,
                            limit: (self.opts.val_limit > 0).then_some(self.opts.val_limit),
                            batch_size: self.opts.recipe.batch_size_val,
                            workers: self.opts.workers,
                            ..crate::eval::EvalRequest::new(self.opts.data.source.clone(), &self.opts.data.val_split)
                        },
                    )?
                    .summary,
                )
            } else {
                None
            };
            let mean_loss = if loss_n > 0 { loss_sum / loss_n as f64 } else { f64::NAN };
            let (miou, oiou) = val.as_ref().map_or((f64::NAN, f64::NAN), |v| (v.miou, v.oiou));
            let record = serde_json::json!({
                "epoch": epoch + 1, "step": self.state.global_step, "lr": self.opt.lr,
                "train_loss": mean_loss, "val_split": self.opts.data.val_split,
                "val_miou": val.as_ref().map(|v| v.miou), "val_oiou": val.as_ref().map(|v| v.oiou),
                "val_prec": val.as_ref().map(|v| v.prec.iter().map(|(t, p)| (detris_io::metrics::precision_label(*t), serde_json::Value::from(*p))).collect::<serde_json::Map<_, _>>()),
                "seconds": started.elapsed().as_secs_f64(),
            });
            self.state.history.push(record.clone());
            if crate::distributed::is_main() {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path)?;
                writeln!(f, "{record}")?;
            }
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
            // As the official loop: best when the validation mIoU is at least the best so far.
            let improved = val.is_some() && self.state.best_miou.is_none_or(|b| miou >= b);
            if improved {
                self.state.best_miou = Some(miou);
                self.state.best_epoch = Some(epoch + 1);
            }
            self.save_epoch(improved, val.as_ref())?;
            log(&format!(
                "epoch {}/{}: loss {mean_loss:.4}, lr {:.1e}, {} mIoU {miou:.4} oIoU {oiou:.4}{}",
                epoch + 1,
                self.opts.epochs,
                self.opt.lr,
                self.opts.data.val_split,
                if improved { " (best)" } else { "" }
            ));
            if crate::distributed::is_main() {
                detris_io::plot::write_plot(&self.out.join("training.png"), &self.state.history)?;
            }
            if self.opts.max_steps.is_some_and(|m| self.state.global_step >= m) {
                break;
            }
        }
        Ok(())
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
        let mut options = serde_json::to_value(&self.opts)?;
        options["resume_at_step"] = self.state.global_step.into();
        let anns = self.opts.data.source.root.join("anns").join(&self.opts.data.source.dataset);
        let files = [&self.opts.data.train_split, &self.opts.data.val_split].map(|s| anns.join(format!("{s}.json")));
        crate::distributed::start_training(&vars, &shared, &options, &files)
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
    precision: &mut MixedPrecision,
) -> Result<f64> {
    let ctx = Ctx { train: true, levers, trace: None };
    opt.zero_grad();
    let autocast = precision.autocast.is_some();
    let loss = precision.forward(|| {
        let logits = model.forward(img, ids, &ctx);
        // The loss in f32, whatever autocast computed the logits in.
        let logits = if autocast { logits.to_kind(Kind::Float) } else { logits };
        Detris::loss(&logits, target).0
    })?;
    let value = loss.double_value(&[]);
    // Data-parallel: a backward through SyncBatchNorm talks to the other ranks.
    (loss * precision.scaler.scale).f_backward().map_err(|e| crate::distributed::failed("the backward pass", e))?;
    crate::distributed::average_gradients(opt.params.iter().map(|(_, p, _, _)| p))?;
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
        opt.params.iter().map(|(_, p, _, _)| p.grad()).filter(|g| g.defined()).map(|g| g.isfinite().all()).collect();
    flags.is_empty() || Tensor::stack(&flags, 0).all().int64_value(&[]) == 1
}

fn progress_bar(len: u64, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    if std::env::var_os("DETRIS_NO_PROGRESS").is_some() || !crate::distributed::is_main() {
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
