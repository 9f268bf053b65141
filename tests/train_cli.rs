//! `detris data synth` → `detris train` → `detris eval` end to end on a small
//! synthetic set, and `--resume` continuing bit-identically.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    detris_checked, detris_unchecked, fresh_temp_dir, max_abs_diff, sorted_safetensors, synth_data, synth_eval_args,
    synth_train_args,
};
use detris::data::DataSource;
use detris::eval::EvalRequest;
use detris::train::recipe::Schedule;
use detris::weights::{self, ConfigChoice, WeightFiles};
use detris_io::data::loader::Mode;
use tch::Tensor;

/// A small synthetic data set and a narrow config at 112 px, made once per test binary.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let data = synth_data(dir, 20);
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/detris-synth.config.json")).unwrap(),
    )
    .unwrap();
    cfg["input_size"] = 112.into();
    cfg["dropout"] = 0.1.into(); // exercise the seeded dropout on resume
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    (data, cfg_path)
}

fn train(data: &Path, cfg: &Path, out: &Path, extra: &[&str]) {
    detris_checked(&train_args(data, cfg, out, extra));
}

fn train_args<'a>(data: &'a Path, cfg: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let own = ["--random-init", "--config", cfg.to_str().unwrap(), "--epochs", "2"];
    synth_train_args(data, out, &[&own[..], extra].concat())
}

/// The two checkpoints hold the same tensors, bit for bit; returns how many.
fn assert_bit_identical(a: &Path, b: &Path, after: &str) -> usize {
    let (a, b) = (sorted_safetensors(a), sorted_safetensors(b));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(max_abs_diff(ta, tb), 0.0, "{na} differs after {after}");
    }
    a.len()
}

#[test]
fn resume_continues_bit_identically() {
    let dir = fresh_temp_dir("resume");
    let (data, cfg) = setup(&dir);
    let (straight, split) = (dir.join("straight"), dir.join("split"));
    train(&data, &cfg, &straight, &["--max-steps", "9"]);
    // Stop inside the first epoch, then again inside the second, resuming each time.
    train(&data, &cfg, &split, &["--max-steps", "2"]);
    train(&data, &cfg, &split, &["--max-steps", "7", "--resume"]);
    train(&data, &cfg, &split, &["--max-steps", "9", "--resume"]);
    let saved = assert_bit_identical(&straight.join("last.safetensors"), &split.join("last.safetensors"), "resume");
    assert!(saved > 100, "weights and Adam moments are saved");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let dir = fresh_temp_dir("nan-loss");
    let (data, cfg) = setup(&dir);
    let out = dir.join("run");
    // Adam moves every weight by about lr per step: at 1e30 the first step
    // leaves finite weights of that size, and the second forward overflows.
    let mut args = train_args(&data, &cfg, &out, &["--train-backbones", "--save-every", "1", "--max-steps", "6"]);
    let lr = args.iter().position(|a| *a == "--lr").unwrap() + 1;
    args[lr] = "1e30";
    let o = detris_unchecked(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "training went on with a NaN loss:\n{stderr}");
    assert!(stderr.contains("the loss became") && stderr.contains("last good checkpoint"), "{stderr}");
    // The checkpoint left behind is whole, finite, and loads.
    let last = out.join("last.safetensors");
    for (name, t) in sorted_safetensors(&last) {
        assert!(t.isfinite().all().int64_value(&[]) == 1, "{name} is not finite in {}", last.display());
    }
    let json = dir.join("eval.json");
    detris_checked(&synth_eval_args(&data, "val", &json, Some(&last), &["--limit", "2"]));
    std::fs::remove_dir_all(&dir).ok();
}

/// The per-epoch records of a run's metrics.jsonl.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The mIoU of a checkpoint on the first `limit` refs of a split, as the trainer's
/// validation computes it (first sentence per ref, one thread, the same batch size).
fn validation_miou(checkpoint: &Path, data: &Path, split: &str, limit: usize) -> f64 {
    tch::set_num_threads(1);
    let files = WeightFiles { checkpoint: Some(checkpoint.to_path_buf()), ..Default::default() };
    let model = weights::load_model(&files, &ConfigChoice::default(), tch::Device::Cpu).unwrap();
    let request = EvalRequest {
        mode: Mode::Val,
        limit: Some(limit),
        batch_size: 8,
        workers: 2,
        ..EvalRequest::new(DataSource::new(data, "synth"), split)
    };
    detris::eval::evaluate(&model, &request).unwrap().summary.miou
}

#[test]
fn train_then_eval_writes_checkpoints_metrics_plot_table_and_json() {
    let dir = fresh_temp_dir("e2e");
    let (data, cfg) = setup(&dir);
    let run = dir.join("run");
    train(&data, &cfg, &run, &["--train-backbones"]);
    for f in ["last.safetensors", "best.safetensors", "metrics.jsonl", "training.png"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let records = metrics(&run);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["val_miou"].as_f64().is_some() && r["train_loss"].as_f64().unwrap().is_finite()));
    for r in &records {
        // Pr@50..90 per epoch: fractions of the validation sentences, falling with the threshold.
        let prec: Vec<f64> = (5..10).map(|t| r["val_prec"][format!("Pr@{}", t * 10)].as_f64().unwrap()).collect();
        assert!(prec.iter().all(|p| (0.0..=1.0).contains(p)) && prec.windows(2).all(|w| w[0] >= w[1]), "{r}");
    }
    assert_eq!(image::image_dimensions(run.join("training.png")).unwrap(), (900, 420));
    // From random weights the loss falls (about 0.30 → 0.15 here): far more than the
    // batch-to-batch noise of a trained model.
    let loss: Vec<f64> = records.iter().map(|r| r["train_loss"].as_f64().unwrap()).collect();
    assert!(loss[1] < loss[0], "the training loss did not fall: {loss:?}");

    let json = dir.join("eval.json");
    let overlays = dir.join("overlays");
    let best = run.join("best.safetensors");
    let out = detris_checked(&synth_eval_args(
        &data,
        "val,test",
        &json,
        Some(&best),
        &["--overlays", overlays.to_str().unwrap()],
    ));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("mIoU") && table.contains("Pr@90") && table.lines().count() == 3, "{table}");
    let reports: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let test = &reports[1];
    assert_eq!(test["split"], "test");
    // Test mode evaluates every sentence of the split.
    let anns: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("anns/synth/test.json")).unwrap()).unwrap();
    let sentences: usize = anns.as_array().unwrap().iter().map(|r| r["sentences"].as_array().unwrap().len()).sum();
    assert_eq!(test["summary"]["count"].as_u64().unwrap() as usize, sentences);
    assert_eq!(std::fs::read_dir(overlays.join("test")).unwrap().count(), sentences);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn best_is_the_epoch_with_the_highest_miou_on_the_validation_split() {
    let dir = fresh_temp_dir("best");
    let (data, _) = setup(&dir);
    let run = dir.join("run");
    // Fine-tuning the shipped model (trained on this kind of data, so its masks overlap the
    // ground truth and the mIoU moves between epochs); `best` chosen on the test split, as the
    // official RefCOCO+ configs choose it on testB.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/models/detris-synth.safetensors");
    let epochs = 3;
    #[rustfmt::skip]
    detris_checked(&[
        "train", "--checkpoint", shipped, "--train-backbones", "--data", data.to_str().unwrap(),
        "--dataset", "synth", "--val-split", "test", "--epochs", &epochs.to_string(), "--milestones", "2",
        "--batch-size", "8", "--lr", "1e-3", "--seed", "5", "--threads", "1", "--workers", "2",
        "--device", "cpu", "--val-limit", "6", "--out", run.to_str().unwrap(),
    ]);
    let records = metrics(&run);
    assert_eq!(records.len(), epochs);
    assert!(records.iter().all(|r| r["val_split"] == "test"), "{records:?}");
    let miou: Vec<f64> = records.iter().map(|r| r["val_miou"].as_f64().unwrap()).collect();
    // max_by returns the last of equal maxima: the later epoch, as the official `>=`.
    let best = (0..epochs).max_by(|&a, &b| miou[a].total_cmp(&miou[b])).unwrap();
    eprintln!("test mIoU per epoch {miou:?}: best is epoch {}", best + 1);
    assert!(miou.iter().all(|&m| m > 0.0), "the masks must overlap the ground truth for this test: {miou:?}");
    // Exact: the same weights, refs, batches and arithmetic as the trainer's validation.
    let again = validation_miou(&run.join("best.safetensors"), &data, "test", 6);
    assert_eq!(again, miou[best], "best.safetensors gives {again} on test; epoch {} had {}", best + 1, miou[best]);
    let model_part = |p: &Path| -> Vec<(String, Tensor)> {
        sorted_safetensors(p).into_iter().filter(|(name, _)| !name.starts_with("adam.")).collect()
    };
    let (b, l) = (model_part(&run.join("best.safetensors")), model_part(&run.join("last.safetensors")));
    let same = b.len() == l.len() && b.iter().zip(&l).all(|((_, x), (_, y))| max_abs_diff(x, y) == 0.0);
    assert_eq!(
        same,
        best == epochs - 1,
        "best.safetensors is the last epoch's weights exactly when that epoch is best"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A run killed with SIGKILL at arbitrary moments (checkpoint writes
/// included: `--save-every 1` writes one every step) and resumed each time
/// ends with the same parameters as an uninterrupted run; no checkpoint is
/// ever left half-written.
#[test]
fn killed_and_resumed_runs_end_bit_identical() {
    let dir = fresh_temp_dir("kill");
    let (data, cfg) = setup(&dir);
    let (straight, killed) = (dir.join("straight"), dir.join("killed"));
    let t0 = std::time::Instant::now();
    train(&data, &cfg, &straight, &["--max-steps", "8", "--save-every", "1"]);
    let straight_time = t0.elapsed();
    let args = |out: &Path| -> Vec<String> {
        let extra = ["--max-steps", "8", "--save-every", "1", "--resume"];
        train_args(&data, &cfg, out, &extra).iter().map(|s| s.to_string()).collect()
    };
    // Kill moments as fixed fractions of the uninterrupted run's wall time, so
    // that they fall inside the run on a fast machine and a slow one alike (no
    // clock-seeded randomness in tests); each restart pays the start-up again.
    let fractions = [0.3, 0.25, 0.5, 0.15, 0.7, 0.4, 0.9, 0.6];
    let mut kills = 0;
    for round in 0.. {
        let mut child = Command::new(env!("CARGO_BIN_EXE_detris"))
            .args(args(&killed))
            .env("DETRIS_NO_PROGRESS", "1")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = straight_time.mul_f64(fractions[round % fractions.len()]);
        let started = std::time::Instant::now();
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() >= delay && round < 12 {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // Whatever the moment of the kill, the checkpoint on disk is whole.
        let last = killed.join("last.safetensors");
        if last.exists() {
            assert!(Tensor::read_safetensors(&last).is_ok(), "half-written checkpoint after kill {kills}");
        }
        if let Some(status) = finished {
            assert!(status.success());
            break;
        }
    }
    assert!(kills >= 2, "the run was killed {kills} times");
    assert_bit_identical(
        &straight.join("last.safetensors"),
        &killed.join("last.safetensors"),
        &format!("{kills} kills"),
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn precisions_a_device_cannot_train_in_are_refused_before_any_work() {
    let dir = fresh_temp_dir("bad-precision");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let (data, cfg, out) = (dir.join("data"), dir.join("no-config.json"), dir.join("run"));
    for (precision, says) in [("f16", "not available on Cpu"), ("fp8", "invalid value")] {
        let o = detris_unchecked(&train_args(&data, &cfg, &out, &["--precision", precision]));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--precision {precision}:\n{stderr}");
        assert!(stderr.contains(says) && stderr.contains(precision), "{stderr}");
        assert!(!out.exists(), "nothing is written before the options are checked");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn learning_rate_steps_down_at_each_official_milestone() {
    // The schedules of the nine released YAML files: MultiStepLR stepped once per epoch,
    // so 0-based epoch e runs at base · decay^(milestones ≤ e).
    let root = common::fixture("official-configs");
    let mut yamls = Vec::new();
    for ds in std::fs::read_dir(&root).unwrap() {
        let ds = ds.unwrap().path();
        if ds.is_dir() {
            yamls.extend(std::fs::read_dir(ds).unwrap().map(|f| f.unwrap().path()));
        }
    }
    assert!(!yamls.is_empty(), "no YAML under {}", root.display());
    for path in yamls {
        let yaml: serde_json::Value =
            serde_norway::from_str::<serde_json::Value>(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let train = &yaml["TRAIN"];
        let num = |k: &str| train[k].as_f64().unwrap_or_else(|| panic!("{}: no {k}", path.display()));
        let milestones: Vec<usize> =
            train["milestones"].as_array().unwrap().iter().map(|m| m.as_u64().unwrap() as usize).collect();
        let opts = schedule(milestones.clone(), num("base_lr"), num("lr_decay"), num("epochs") as usize);
        // 1e-12 relative: decay^k is computed by repeated multiplication in f64.
        let near = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
        let at = |e: usize| opts.lr_at(e);
        assert!(near(at(0), opts.base_lr), "{}", path.display());
        for (k, &m) in milestones.iter().enumerate() {
            let before = opts.base_lr * opts.lr_decay.powi(k as i32);
            assert!(near(at(m - 1), before), "{}: epoch {m} (1-based) runs at {}", path.display(), at(m - 1));
            assert!(
                near(at(m), before * opts.lr_decay),
                "{}: epoch {} (1-based) runs at {}",
                path.display(),
                m + 1,
                at(m)
            );
        }
        let last = opts.base_lr * opts.lr_decay.powi(milestones.len() as i32);
        assert!(near(at(opts.epochs - 1), last), "{}: the last epoch runs at {}", path.display(), at(opts.epochs - 1));
    }
    // A milestone given twice decays twice (MultiStepLR counts milestones); none: constant.
    let twice = schedule(vec![3, 3], 1.0, 0.5, 10);
    assert_eq!((twice.lr_at(2), twice.lr_at(3)), (1.0, 0.25));
    assert_eq!(schedule(Vec::new(), 1.0, 0.5, 10).lr_at(9), 1.0);
}

/// A learning-rate schedule.
fn schedule(milestones: Vec<usize>, base_lr: f64, lr_decay: f64, epochs: usize) -> Schedule {
    Schedule { epochs, milestones, base_lr, lr_decay, batch_size: 1, seed: 0 }
}
