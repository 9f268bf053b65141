//! Random values for a model without weight files: the one place that draws
//! them. Variables are visited in name order (the variable map's own order
//! differs between processes), so a seed gives the same model every time.

use tch::Tensor;

use super::Detris;

/// The variables by name, sorted.
fn sorted_variables(model: &Detris) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Gives the frozen backbones random values (a model trained from scratch,
/// like the shipped synthetic one): N(0, 0.02) weights, LayerNorm/LayerScale
/// at 1, biases 0, embeddings N(0, 0.02) (positions 0.01, as CLIP). The
/// trainable parts keep the official initialisation `Detris::new` gave them.
pub fn init_backbones_randomly(model: &Detris, seed: u64) {
    tch::manual_seed(seed as i64);
    tch::no_grad(|| {
        for (name, v) in sorted_variables(model) {
            if v.requires_grad() || name.contains("running_") {
                continue;
            }
            let mut v = v.shallow_clone();
            let leaf = name.rsplit('.').next().unwrap_or("");
            let is_norm = name.contains("norm") || name.contains("ln_");
            if leaf == "gamma" || (is_norm && leaf == "weight") {
                let _ = v.fill_(1.0);
            } else if leaf == "bias" || leaf.ends_with("_bias") || name.ends_with("logit_scale") {
                let _ = v.zero_();
            } else if name.ends_with("positional_embedding") {
                let _ = v.normal_(0.0, 0.01);
            } else {
                let _ = v.normal_(0.0, 0.02);
            }
        }
    });
}

/// Fills every variable with small random values (frozen ones included, so
/// the arithmetic is that of a real model, not of zeros): `detris bench`.
pub fn randomise(model: &Detris, seed: i64) {
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for (name, v) in sorted_variables(model) {
            let mut v = v.shallow_clone();
            if name.contains("running_var") || name.ends_with("gamma") || name.contains("norm") {
                let _ = v.uniform_(0.5, 1.5);
            } else {
                let _ = v.normal_(0.0, 0.02);
            }
        }
    });
}
