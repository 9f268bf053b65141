//! Forward parity against `tiny/io.safetensors` (official f32 and f64 runs).
//! Tolerances (fixtures README): f32 forward within 1e-4 max-abs of the f64
//! reference (f32 vs f64 logits of the official code differ by 1.2e-5); f64
//! forward within 1e-5 (the official f64 run resized the position embedding
//! in f32, which alone moves the taps by up to 3e-6).

use detris::model::{Ctx, Trace};
use detris::{weights, Detris, DetrisConfig};
use tch::{Device, Kind, Tensor};

fn fixture(rel: &str) -> std::path::PathBuf {
    detris_io::fixtures::path(rel)
}

fn read_st(rel: &str) -> std::collections::BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixture(rel)).unwrap().into_iter().collect()
}

fn tiny_model(kind: Kind) -> Detris {
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny/config.json")).unwrap()).unwrap();
    let cfg = DetrisConfig::from_fixture_params(&cfg_json["params"]).unwrap();
    let mut model = Detris::new(cfg, Device::Cpu).unwrap();
    let sd = read_st("tiny/state_dict.safetensors");
    let vars = model.vs.variables();
    for (k, v) in &sd {
        if let Some(var) = vars.get(k) {
            tch::no_grad(|| var.shallow_clone().copy_(v));
        } else {
            assert!(k.ends_with("num_batches_tracked"), "unexpected {k}");
        }
    }
    assert_eq!(vars.len(), sd.iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).count());
    if kind == Kind::Double {
        model.vs.double();
    }
    model
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn run(kind: Kind, fast: bool, tol: f64) {
    let io = read_st("tiny/io.safetensors");
    let model = tiny_model(kind);
    let trace = Trace::default();
    let ctx = Ctx { train: false, fast, trace: Some(&trace) };
    let img = io["input.img"].to_kind(kind);
    let logits = tch::no_grad(|| model.forward(&img, &io["input.word"], &ctx));
    let mut worst = (0.0, String::new());
    let mut compared = 0;
    for (key, reference) in &io {
        let Some(name) = key.strip_prefix("f64.") else { continue };
        let Some(ours) = trace.get(name) else { panic!("forward did not record `{name}`") };
        assert_eq!(ours.size(), reference.size(), "{name}");
        let d = max_abs(&ours, reference);
        if d > worst.0 {
            worst = (d, name.to_string());
        }
        compared += 1;
        assert!(d <= tol, "{name}: max |Δ| {d:e} > {tol:e} ({kind:?}, fast={fast})");
    }
    assert!(compared > 20);
    assert!(max_abs(&logits, &io["f64.pred"]) <= tol);
    eprintln!("{kind:?} fast={fast}: {compared} outputs, worst {:e} at {}", worst.0, worst.1);
}

#[test]
fn f64_forward_matches_reference_within_1e5() {
    run(Kind::Double, false, 1e-5);
    run(Kind::Double, true, 1e-5);
}

#[test]
fn f32_forward_matches_reference_within_1e4() {
    run(Kind::Float, false, 1e-4);
    run(Kind::Float, true, 1e-4);
}
