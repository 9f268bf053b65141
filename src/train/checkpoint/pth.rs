//! The checkpoint container of the official `train.py`, both ways:
//! `{'epoch', 'cur_iou', 'best_iou', 'prec', 'state_dict', 'optimizer',
//! 'scheduler'}` with `module.`-prefixed keys in the official order, the Adam
//! state indexed by position in the two official parameter groups, and the
//! MultiStepLR state. The official `test.py`, `demo.py` and `train.py
//! --resume` load what [`save`] writes; `Trainer::resume_from` continues an
//! official run from what [`load`] reads.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use detris_io::pickle::writer::PickleValue as P;
use detris_io::pickle::Value;
use detris_io::torch_file::writer::TorchSave;
use detris_io::RawTensor;

use super::param_order::official_order;
use super::Snapshot;
use crate::model::Detris;
use crate::train::adam::{Adam, Param};
use crate::train::history::prec_by_label;
use crate::train::recipe::{Recipe, Schedule};
use crate::weights::{self, from_tch, to_tch, DDP_PREFIX};

/// What the official loop records beside the weights after an epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    /// Epochs finished (the official `epoch_log`).
    pub epoch: usize,
    /// This epoch's validation mIoU.
    pub cur_iou: f64,
    /// The best validation mIoU so far (this epoch's included).
    pub best_iou: f64,
    /// `Pr@50` ... `Pr@90` of this epoch's validation.
    pub prec: Vec<(String, f64)>,
    pub milestones: Vec<usize>,
    pub gamma: f64,
    pub base_lr: f64,
    /// Every BatchNorm's `num_batches_tracked` (training forwards so far).
    pub bn_batches: i64,
}

impl RunRecord {
    /// What the official loop records after the epoch `snap` has just finished.
    pub fn of(snap: &Snapshot) -> RunRecord {
        let (state, schedule) = (snap.state, &snap.options.schedule);
        RunRecord {
            epoch: state.epoch,
            cur_iou: snap.val.map_or(0.0, |v| v.miou),
            best_iou: state.best_miou.unwrap_or(0.0),
            prec: snap.val.map(prec_by_label).unwrap_or_default(),
            milestones: schedule.milestones.clone(),
            gamma: schedule.lr_decay,
            base_lr: schedule.base_lr,
            bn_batches: state.global_step as i64,
        }
    }
}

/// The optimizer's parameters as the official `param_groups` list them:
/// group after group, each in state-dict order. Returns (detris index into
/// `opt.params`) per official position, and the group sizes.
fn official_positions(opt: &Adam) -> Result<(Vec<usize>, Vec<usize>)> {
    let names: Vec<&str> = opt.params.iter().map(|p| p.name.as_str()).collect();
    let order = official_order(&names)?;
    let mut positions = Vec::new();
    let mut sizes = Vec::new();
    for g in 0..opt.groups.len() {
        let members: Vec<usize> = order.iter().copied().filter(|&i| opt.params[i].group == g).collect();
        sizes.push(members.len());
        positions.extend(members);
    }
    Ok((positions, sizes))
}

/// The model's state dict as the official model has it: every weight, and a
/// `num_batches_tracked` beside every BatchNorm's running statistics.
fn official_state_dict(model: &Detris, bn_batches: i64) -> Result<Vec<(String, RawTensor)>> {
    let mut map = weights::state_dict(model, false)?;
    let counters: Vec<String> = map
        .keys()
        .filter_map(|k| k.strip_suffix("running_mean"))
        .map(|prefix| format!("{prefix}num_batches_tracked"))
        .collect();
    for name in counters {
        map.entry(name).or_insert_with(|| RawTensor::from_i64(vec![], &[bn_batches]).expect("a scalar"));
    }
    let names: Vec<&String> = map.keys().collect();
    let order = official_order(&names)?;
    let mut entries: Vec<(String, RawTensor)> = map.into_iter().collect();
    let mut sorted = Vec::with_capacity(entries.len());
    let mut taken: Vec<Option<(String, RawTensor)>> = entries.drain(..).map(Some).collect();
    for i in order {
        sorted.push(taken[i].take().expect("a permutation"));
    }
    Ok(sorted)
}

/// Writes the official container (see the module doc).
pub fn save(path: &Path, model: &Detris, opt: &Adam, run: &RunRecord) -> Result<()> {
    let mut save = TorchSave::new();
    let state_dict = official_state_dict(model, run.bn_batches)?
        .into_iter()
        .map(|(name, t)| (P::str(format!("{DDP_PREFIX}{name}")), save.tensor(t)))
        .collect();
    let (positions, sizes) = official_positions(opt)?;
    // torch keeps no state for a parameter before its first step.
    let mut state = Vec::new();
    if opt.step > 0 {
        for (index, &i) in positions.iter().enumerate() {
            let p = &opt.params[i];
            let step = RawTensor::from_f32(vec![], &[opt.step as f32]).expect("a scalar");
            let entry = P::Dict(vec![
                (P::str("step"), save.tensor(step)),
                (P::str("exp_avg"), save.tensor(from_tch(&p.exp_avg)?)),
                (P::str("exp_avg_sq"), save.tensor(from_tch(&p.exp_avg_sq)?)),
            ]);
            state.push((P::Int(index as i64), entry));
        }
    }
    let mut param_groups = Vec::new();
    let mut first = 0;
    for (g, &size) in sizes.iter().enumerate() {
        let initial_lr = run.base_lr * opt.groups[g].lr_scale;
        param_groups.push(P::dict([
            ("initial_lr", P::float(initial_lr)),
            ("lr", P::float(opt.group_lr(g))),
            ("betas", P::Tuple(vec![P::float(opt.beta1), P::float(opt.beta2)])),
            ("eps", P::float(opt.eps)),
            ("weight_decay", P::float(opt.weight_decay)),
            ("amsgrad", P::Bool(false)),
            ("maximize", P::Bool(false)),
            ("foreach", P::None),
            ("capturable", P::Bool(false)),
            ("differentiable", P::Bool(false)),
            ("fused", P::None),
            ("decoupled_weight_decay", P::Bool(false)),
            ("params", P::List((first..first + size).map(|i| P::Int(i as i64)).collect())),
        ]));
        first += size;
    }
    let base_lrs: Vec<P> = opt.groups.iter().map(|g| P::float(run.base_lr * g.lr_scale)).collect();
    let last_lrs: Vec<P> = (0..opt.groups.len()).map(|g| P::float(opt.group_lr(g))).collect();
    let mut milestones: Vec<(P, P)> = Vec::new();
    for &m in &run.milestones {
        match milestones.iter_mut().find(|(k, _)| *k == P::Int(m as i64)) {
            Some((_, P::Int(count))) => *count += 1,
            _ => milestones.push((P::Int(m as i64), P::Int(1))),
        }
    }
    // Saved before `scheduler.step(epoch_log)`: the scheduler has stepped once
    // at construction and once after each earlier epoch (epoch 0: as constructed).
    let scheduler = P::dict([
        ("milestones", P::call("collections", "Counter", vec![P::Dict(milestones)])),
        ("gamma", P::float(run.gamma)),
        ("base_lrs", P::List(base_lrs)),
        ("last_epoch", P::Int((run.epoch as i64 - 1).max(0))),
        ("_step_count", P::Int((run.epoch as i64).max(1))),
        ("_is_initial", P::Bool(false)),
        ("_get_lr_called_within_step", P::Bool(false)),
        ("_last_lr", P::List(last_lrs)),
    ]);
    let root = P::dict([
        ("epoch", P::Int(run.epoch as i64)),
        ("cur_iou", P::float(run.cur_iou)),
        ("best_iou", P::float(run.best_iou)),
        ("prec", P::Dict(run.prec.iter().map(|(k, v)| (P::str(k), P::float(*v))).collect())),
        ("state_dict", P::Dict(state_dict)),
        ("optimizer", P::dict([("state", P::Dict(state)), ("param_groups", P::List(param_groups))])),
        ("scheduler", scheduler),
    ]);
    save.write(path, &root).with_context(|| format!("{}: cannot write the checkpoint", path.display()))
}

/// Where an official checkpoint stands.
#[derive(Clone, Debug, PartialEq)]
pub struct OfficialState {
    /// Epochs finished: the official run continues with this (0-based) epoch.
    pub epoch: usize,
    pub best_iou: f64,
    pub adam_step: i64,
}

/// Loads an official checkpoint into the model and the optimizer: the
/// weights (`module.` removed), the Adam moments mapped from their positions
/// in the official parameter groups onto detris's parameters, the step
/// count, and where the schedule stands.
pub fn load(path: &Path, model: &Detris, opt: &mut Adam) -> Result<OfficialState> {
    let (tensors, _) = weights::read_weights(path)?;
    weights::load_map(model, &tensors, true)?.check(&path.display().to_string())?;
    let (root, mut reader) = detris_io::torch_file::load_tree(path)?;
    let at = |what: &str| format!("{}: {what}", path.display());
    let epoch = root.get("epoch").and_then(Value::as_i64).with_context(|| at("no `epoch` number"))?;
    ensure!(epoch >= 0, at("a negative `epoch`"));
    let best_iou = match root.get("best_iou") {
        Some(v) => number(v, &mut reader).with_context(|| at("`best_iou` is not a number"))?,
        None => 0.0,
    };
    let optimizer = root.get("optimizer").with_context(|| at("no `optimizer` entry (not a train.py checkpoint)"))?;
    let groups = optimizer.get("param_groups").and_then(Value::as_list).with_context(|| at("no param_groups"))?;
    let (positions, sizes) = official_positions(opt)?;
    let theirs: Vec<usize> =
        groups.iter().map(|g| g.get("params").and_then(Value::as_list).map_or(0, <[_]>::len)).collect();
    if theirs != sizes {
        bail!(
            "{}: the optimizer has parameter groups of {theirs:?} parameters; this model's official groups \
             (backbone adapters, head) have {sizes:?}",
            path.display()
        );
    }
    let mut index_of_position = Vec::new();
    for g in groups {
        for p in g.get("params").and_then(Value::as_list).unwrap_or_default() {
            index_of_position.push(p.as_i64().with_context(|| at("a parameter index is not an int"))?);
        }
    }
    let state = optimizer.get("state").and_then(Value::as_dict).with_context(|| at("no optimizer state"))?;
    let mut steps = Vec::new();
    for (position, &i) in positions.iter().enumerate() {
        let index = index_of_position[position];
        let Some((_, entry)) = state.iter().find(|(k, _)| k.as_i64() == Some(index)) else {
            continue;
        };
        let Param { name, tensor: p, exp_avg, exp_avg_sq, .. } = &mut opt.params[i];
        for (key, dst) in [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)] {
            let t = entry
                .get(key)
                .and_then(|t| reader.tensor(t).transpose())
                .with_context(|| at(&format!("parameter {index} (`{name}`) has no {key}")))??;
            ensure!(
                t.shape.iter().map(|&d| d as i64).collect::<Vec<_>>() == p.size(),
                at(&format!("the {key} of parameter {index} has shape {:?}; `{name}` is {:?}", t.shape, p.size()))
            );
            tch::no_grad(|| -> Result<()> {
                dst.copy_(&to_tch(&t)?.to_kind(dst.kind()).to_device(dst.device()));
                Ok(())
            })?;
        }
        let step = entry.get("step").with_context(|| at(&format!("parameter {index} has no step")))?;
        steps.push(number(step, &mut reader).with_context(|| at("a step is not a number"))? as i64);
    }
    steps.dedup();
    let adam_step = match steps.as_slice() {
        [] => 0,
        [s] => *s,
        _ => bail!("{}: the parameters have taken different numbers of steps ({steps:?})", path.display()),
    };
    opt.step = adam_step;
    if let Some(last) = root.get("scheduler").and_then(|s| s.get("last_epoch")).and_then(Value::as_i64) {
        ensure!(
            last == (epoch - 1).max(0),
            at(&format!("the scheduler's last_epoch {last} does not follow epoch {epoch}"))
        );
    }
    Ok(OfficialState { epoch: epoch as usize, best_iou, adam_step })
}

/// A float, an int or a one-element tensor.
fn number(v: &Value, reader: &mut detris_io::torch_file::TensorReader) -> Result<f64> {
    if let Some(x) = v.as_f64() {
        return Ok(x);
    }
    let t = reader.tensor(v)?.context("neither a number nor a tensor")?;
    ensure!(t.numel() == 1, "a tensor of {} elements, not one number", t.numel());
    Ok(t.to_f64_vec()[0])
}

/// A model alone in the official container: the official optimizer over
/// its trainable parameters before any step, the schedule at its start.
pub fn export_model(path: &Path, model: &Detris) -> Result<()> {
    let trainable = model.vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    let schedule = Schedule::default();
    let opt = Adam::official(trainable, &Recipe::default().adam_options(schedule.base_lr));
    let run = RunRecord {
        epoch: 0,
        cur_iou: 0.0,
        best_iou: 0.0,
        prec: Vec::new(),
        milestones: schedule.milestones,
        gamma: schedule.lr_decay,
        base_lr: opt.lr,
        bn_batches: 0,
    };
    save(path, model, &opt, &run)
}
