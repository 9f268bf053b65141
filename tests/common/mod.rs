//! Helpers shared by the integration tests: fixture paths and the tiny
//! official model.
#![allow(dead_code)]

use std::collections::BTreeMap;

use detris::{Detris, DetrisConfig};
use tch::{Device, Kind, Tensor};

pub fn fixture(rel: &str) -> std::path::PathBuf {
    detris_io::fixtures::path(rel)
}

/// A fixture safetensors file through tch's own reader (independent of
/// detris-io, so a reader bug cannot hide a model bug).
pub fn read_st(rel: &str) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixture(rel)).unwrap().into_iter().collect()
}

pub fn tiny_config() -> DetrisConfig {
    DetrisConfig::from_json_file(&fixture("tiny/config.json")).unwrap()
}

/// The tiny model with the weights of `tiny/state_dict.safetensors`.
pub fn tiny_model(cfg: DetrisConfig, kind: Kind) -> Detris {
    let mut model = Detris::new(cfg, Device::Cpu).unwrap();
    let sd = read_st("tiny/state_dict.safetensors");
    let vars = model.vs.variables();
    for (k, v) in &sd {
        match vars.get(k) {
            Some(var) => tch::no_grad(|| var.shallow_clone().copy_(v)),
            None => assert!(k.ends_with("num_batches_tracked"), "unexpected {k}"),
        };
    }
    assert_eq!(vars.len(), sd.keys().filter(|k| !k.ends_with("num_batches_tracked")).count());
    if kind == Kind::Double {
        model.vs.double();
    }
    model
}

pub fn max_abs(t: &Tensor) -> f64 {
    if t.numel() == 0 {
        return 0.0;
    }
    t.to_kind(Kind::Double).abs().max().double_value(&[])
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a.to_kind(Kind::Double) - b.to_kind(Kind::Double)))
}
