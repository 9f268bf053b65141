//! Strict loading: every tensor goes into the model variable of the same name;
//! missing, unexpected and wrong-shape keys are listed by name.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use detris_io::tensor::TensorMap;

use super::convert::{from_tch, to_tch};
use crate::model::Detris;

/// Keys a weight file may hold that the model does not need: BatchNorm
/// counters of the official state dict, optimizer moments of a detris
/// training checkpoint.
fn ignorable(name: &str) -> bool {
    name.ends_with("num_batches_tracked") || name.starts_with("adam.")
}

/// What a strict load found; `check` turns problems into one error.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// name, expected shape, found shape
    pub wrong_shape: Vec<(String, Vec<i64>, Vec<usize>)>,
}

impl LoadReport {
    pub fn check(&self, source: &str) -> Result<()> {
        if self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_shape.is_empty() {
            return Ok(());
        }
        let mut msg = format!("{source}: the weights do not fit this model");
        let list = |v: &[String]| {
            let head: Vec<&str> = v.iter().take(12).map(|s| s.as_str()).collect();
            let more = if v.len() > 12 { format!(" … and {} more", v.len() - 12) } else { String::new() };
            format!("{}{more}", head.join(", "))
        };
        if !self.wrong_shape.is_empty() {
            let shapes: Vec<String> =
                self.wrong_shape.iter().map(|(n, e, f)| format!("{n}: model {e:?}, file {f:?}")).collect();
            msg += &format!("\n  {} with the wrong shape: {}", shapes.len(), list(&shapes));
        }
        if !self.missing.is_empty() {
            msg += &format!("\n  {} missing: {}", self.missing.len(), list(&self.missing));
        }
        if !self.unexpected.is_empty() {
            msg += &format!("\n  {} unexpected: {}", self.unexpected.len(), list(&self.unexpected));
        }
        bail!(msg)
    }
}

/// Copies every tensor of `map` into the model's variable of the same name,
/// converting dtype and device. Names the model lacks, shapes that differ,
/// and (when `require_all`) variables the map lacks are reported.
pub fn load_map(model: &Detris, map: &TensorMap, require_all: bool) -> Result<LoadReport> {
    let vars = model.vs.variables();
    let mut report = LoadReport::default();
    let mut seen = BTreeSet::new();
    for (name, raw) in map {
        let Some(var) = vars.get(name) else {
            if !ignorable(name) {
                report.unexpected.push(name.clone());
            }
            continue;
        };
        seen.insert(name.as_str());
        let want = var.size();
        if want.len() != raw.shape.len() || want.iter().zip(&raw.shape).any(|(&a, &b)| a as usize != b) {
            report.wrong_shape.push((name.clone(), want, raw.shape.clone()));
            continue;
        }
        let src = to_tch(raw).with_context(|| format!("tensor `{name}`"))?;
        tch::no_grad(|| var.shallow_clone().copy_(&src.to_kind(var.kind())));
        report.loaded += 1;
    }
    if require_all {
        report.missing = vars.keys().filter(|k| !seen.contains(k.as_str())).cloned().collect();
        report.missing.sort();
    }
    report.unexpected.sort();
    Ok(report)
}

/// Every variable of the model by name (trainable only, if asked), as plain tensors.
pub fn state_dict(model: &Detris, trainable_only: bool) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (name, t) in model.vs.variables() {
        let keep = !trainable_only || t.requires_grad() || name.contains("running_");
        if keep {
            out.insert(name, from_tch(&t.detach())?);
        }
    }
    Ok(out)
}
