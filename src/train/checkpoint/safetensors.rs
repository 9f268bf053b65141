//! detris's training checkpoint: one safetensors file holding the trained
//! weights, the Adam moments and (in its metadata) the config, the options
//! and the position in the run, written atomically (temp file, fsync, rename)
//! so that a kill at any moment leaves the previous checkpoint intact.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{Snapshot, TrainState};
use crate::model::Detris;
use crate::train::adam::Adam;
use crate::train::recipe::TrainOptions;
use crate::weights::{self, from_tch, to_tch};

pub const META_TRAIN_STATE: &str = "detris.train_state";

/// The metadata entry [`META_TRAIN_STATE`]: the position, the options, Adam's step.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    state: TrainState,
    options: TrainOptions,
    /// Absent from files written before it had its own field (it rode in
    /// `options` then; [`load`] reads it from there).
    #[serde(default)]
    adam_step: Option<i64>,
}

/// Writes the model's weights, the optimizer moments and the state. With a
/// base to name (and frozen backbones), the trained variables alone
/// (BatchNorm statistics included) and the base's files in `detris.base`;
/// else every weight, the token embedding pruned to the model's known ids as
/// it came, so that the file is usable as it is.
pub fn save(path: &Path, snap: &Snapshot) -> Result<()> {
    let link = snap.base.filter(|_| !snap.options.train_backbones);
    let mut map = weights::state_dict(snap.model, link.is_some())?;
    if let (None, false, Some(ids)) = (link, snap.options.train_backbones, &snap.model.known_token_ids) {
        // Frozen, the rows outside `ids` are the zeros the pruned start file widened to.
        weights::prune_vocab(&mut map, ids)?;
    }
    for p in &snap.opt.params {
        map.insert(format!("adam.exp_avg.{}", p.name), from_tch(&p.exp_avg)?);
        map.insert(format!("adam.exp_avg_sq.{}", p.name), from_tch(&p.exp_avg_sq)?);
    }
    let mut meta = weights::metadata_for(&map, &snap.model.config)?;
    let stored = Stored { state: snap.state.clone(), options: snap.options.clone(), adam_step: Some(snap.opt.step) };
    meta.insert(META_TRAIN_STATE.into(), serde_json::to_string(&stored)?);
    if let Some(base) = link {
        meta.insert(weights::base::META_BASE.into(), base.to_json()?);
    }
    detris_io::safetensors_file::write(path, &map, &meta)?;
    Ok(())
}

/// Restores weights, optimizer moments and step from a checkpoint; returns
/// the run's position and the options it ran with.
pub fn load(path: &Path, model: &Detris, opt: &mut Adam) -> Result<(TrainState, TrainOptions)> {
    let (mut map, meta) = weights::read_weights(path)?;
    // A pruned token embedding (see `save`) widened as the model has it.
    weights::expand_vocab(&mut map, model.config.vocab_size)?;
    let json =
        meta.get(META_TRAIN_STATE).with_context(|| format!("{}: not a detris training checkpoint", path.display()))?;
    let unreadable = || format!("{}: unreadable training state", path.display());
    let mut value: serde_json::Value = serde_json::from_str(json).with_context(unreadable)?;
    let older_step = value.get_mut("options").and_then(|o| o.as_object_mut()?.remove("adam_step"));
    let stored: Stored = serde_json::from_value(value).with_context(unreadable)?;
    let (model_part, adam_part): (BTreeMap<_, _>, BTreeMap<_, _>) =
        map.into_iter().partition(|(k, _)| !k.starts_with("adam."));
    let report = weights::load_map(model, &model_part, false)?;
    report.check(&path.display().to_string())?;
    for p in &mut opt.params {
        let name = &p.name;
        let (Some(em), Some(ev)) =
            (adam_part.get(&format!("adam.exp_avg.{name}")), adam_part.get(&format!("adam.exp_avg_sq.{name}")))
        else {
            bail!("{}: no optimizer state for `{name}`", path.display());
        };
        tch::no_grad(|| -> Result<()> {
            p.exp_avg.copy_(&to_tch(em)?.to_kind(p.exp_avg.kind()));
            p.exp_avg_sq.copy_(&to_tch(ev)?.to_kind(p.exp_avg_sq.kind()));
            Ok(())
        })?;
    }
    opt.step = stored.adam_step.or_else(|| older_step.and_then(|s| s.as_i64())).unwrap_or(0);
    Ok((stored.state, stored.options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DataSpec;
    use crate::train::recipe::{Recipe, Schedule};

    /// A checkpoint written before Adam's step had its own field (it rode in
    /// `options.adam_step`) still resumes at that step.
    #[test]
    fn adam_step_is_read_from_the_options_of_older_checkpoints() {
        let cfg = crate::weights::read_config_file(&detris_io::fixtures::path("tiny/config.json")).unwrap();
        let model = Detris::new(cfg, tch::Device::Cpu).unwrap();
        let trainable = model.vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
        let mut opt = Adam::official(trainable, &Recipe::default().adam_options(1e-4));
        opt.step = 7;
        let data = DataSpec::prepared(&crate::data::DataSource::new("d", "s"), "t", "v");
        let options = TrainOptions {
            data,
            schedule: Schedule::default(),
            precision: crate::device::Precision::F32,
            max_steps: None,
            save_every: None,
            train_backbones: false,
            val_limit: 0,
            workers: 1,
            recipe: Recipe::default(),
            accumulate: 1,
            max_bad_samples: 10,
        };
        let state = TrainState { epoch: 2, global_step: 7, ..Default::default() };
        let path = std::env::temp_dir().join(format!("detris-old-checkpoint-{}.safetensors", std::process::id()));
        save(&path, &Snapshot { model: &model, opt: &opt, state: &state, options: &options, val: None, base: None })
            .unwrap();
        // Rewrite the metadata as older versions wrote it.
        let (map, mut meta) = detris_io::safetensors_file::read(&path).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&meta[META_TRAIN_STATE]).unwrap();
        let step = v.as_object_mut().unwrap().remove("adam_step").unwrap();
        v["options"]["adam_step"] = step;
        meta.insert(META_TRAIN_STATE.into(), v.to_string());
        detris_io::safetensors_file::write(&path, &map, &meta).unwrap();
        let mut fresh = Adam::official(
            model.vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect(),
            &Recipe::default().adam_options(1e-4),
        );
        let (read, read_options) = load(&path, &model, &mut fresh).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!((fresh.step, read), (7, state));
        assert_eq!(serde_json::to_value(read_options).unwrap(), serde_json::to_value(options).unwrap());
    }
}
