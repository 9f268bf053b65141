//! Forward parity against `tiny/io.safetensors` (official f32 and f64 runs).
//! Tolerances (fixtures README): f32 forward within 1e-4 max-abs of the f64
//! reference (f32 vs f64 logits of the official code differ by 1.2e-5); f64
//! forward within 1e-5 (the official f64 run resized the position embedding
//! in f32, which alone moves the taps by up to 3e-6).

mod common;

use common::*;
use detris::model::{Ctx, Levers, Trace};
use tch::Kind;

fn run(kind: Kind, levers: Levers, tol: f64) {
    let io = read_st("tiny/io.safetensors");
    let model = tiny_model(tiny_config(), kind);
    let trace = Trace::default();
    let ctx = Ctx { train: false, levers, trace: Some(&trace) };
    let img = io["input.img"].to_kind(kind);
    let logits = tch::no_grad(|| model.forward(&img, &io["input.word"], &ctx));
    let mut worst = (0.0, String::new());
    let mut compared = 0;
    for (key, reference) in &io {
        let Some(name) = key.strip_prefix("f64.") else { continue };
        let Some(ours) = trace.get(name) else { panic!("forward did not record `{name}`") };
        assert_eq!(ours.size(), reference.size(), "{name}");
        let d = max_abs_diff(&ours, reference);
        if d > worst.0 {
            worst = (d, name.to_string());
        }
        compared += 1;
        assert!(d <= tol, "{name}: max |Δ| {d:e} > {tol:e} ({kind:?}, {levers:?})");
    }
    assert!(compared > 20);
    assert!(max_abs_diff(&logits, &io["f64.pred"]) <= tol);
    eprintln!("{kind:?} {levers:?}: {compared} outputs, worst {:e} at {}", worst.0, worst.1);
}

/// The plain mode, the fast mode and each lever alone.
fn every_mode() -> Vec<Levers> {
    let mut modes = vec![Levers::PLAIN, Levers::FAST];
    modes.extend(Levers::named().map(|(_, l)| l));
    modes
}

#[test]
fn f64_forward_matches_reference_within_1e5() {
    for levers in every_mode() {
        run(Kind::Double, levers, 1e-5);
    }
}

#[test]
fn f32_forward_matches_reference_within_1e4() {
    for levers in every_mode() {
        run(Kind::Float, levers, 1e-4);
    }
}
