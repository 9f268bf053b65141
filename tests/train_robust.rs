//! Long runs that survive what real data and real use bring: gradient
//! accumulation equal to one large batch, unreadable samples skipped and
//! named, a run folder that no second run can clobber, `train.log` and the
//! official training metrics per logging interval.

mod common;

use std::path::{Path, PathBuf};

use common::{
    detris_checked, detris_ok, detris_unchecked, fresh_temp_dir, max_abs_diff, read_st, sorted_safetensors, synth_data,
    synth_train_args, tiny_config, tiny_model,
};
use detris::model::Levers;
use detris::train::adam::Adam;
use detris::train::precision::MixedPrecision;
use detris::train::step::{backward_micro, finish_step};
use tch::{Device, Kind, Tensor};

/// A small synthetic set and a narrow config at 112 px (as tests/train_cli.rs).
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let data = synth_data(dir, 20);
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/detris-synth.config.json")).unwrap(),
    )
    .unwrap();
    cfg["input_size"] = 112.into();
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    (data, cfg_path)
}

fn train_args<'a>(data: &'a Path, cfg: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let own = ["--random-init", "--config", cfg.to_str().unwrap(), "--epochs", "1"];
    synth_train_args(data, out, &[&own[..], extra].concat())
}

/// The lines of a run's metrics.jsonl of one `kind`.
fn records(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|r| r["kind"] == kind).collect()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The trainable parameters' gradients, by name.
fn grads(model: &detris::Detris) -> Vec<(String, Tensor)> {
    let mut g: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(_, v)| v.requires_grad())
        .map(|(n, v)| {
            let g = v.grad();
            (n, if g.defined() { g.copy() } else { v.zeros_like() })
        })
        .collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    g
}

/// One accumulated step (micro-batches of 2 and 4 samples) gives the gradients
/// of one batch of all 6. Train-mode BatchNorm normalises each micro-batch with
/// its own statistics, so the micro-batches here hold the same inputs (the
/// second is the first, twice, reordered) with different targets: every
/// batch then has the same BatchNorm statistics, and only the weighting of the
/// losses is left to test. Dropout 0, f32.
#[test]
fn an_accumulated_step_equals_one_batch_of_all_its_samples() {
    let mut cfg = tiny_config();
    cfg.dropout = 0.0;
    let io = read_st("tiny/io.safetensors");
    let tr = read_st("tiny/train.safetensors");
    let (img, ids, mask) = (&io["input.img"], &io["input.word"], &tr["input.mask"]);
    let b = img.size()[0];
    assert!(b >= 2, "the fixture batch has {b} samples");
    let two = Tensor::from_slice(&[0i64, 1]);
    let (img2, ids2) = (img.index_select(0, &two), ids.index_select(0, &two));
    // Distinct targets per sample: the fixture's, and shifted copies of it.
    let m2 = mask.index_select(0, &two);
    let shifted = |k: i64| m2.roll([k * 3], [3]);
    let reorder = Tensor::from_slice(&[1i64, 0, 0, 1]);
    let (img4, ids4) = (
        Tensor::cat(&[&img2, &img2], 0).index_select(0, &reorder),
        Tensor::cat(&[&ids2, &ids2], 0).index_select(0, &reorder),
    );
    let m4 = Tensor::cat(&[shifted(1), shifted(2)], 0);
    let (img6, ids6, m6) =
        (Tensor::cat(&[&img2, &img4], 0), Tensor::cat(&[&ids2, &ids4], 0), Tensor::cat(&[&m2, &m4], 0));

    let run = |parts: &[(&Tensor, &Tensor, &Tensor)]| {
        let model = tiny_model(cfg.clone(), Kind::Float);
        let trainable = model.vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
        let mut opt = Adam::new(trainable, 1e-4);
        let mut precision = MixedPrecision::new(detris::device::Precision::F32, Device::Cpu).unwrap();
        let total: i64 = parts.iter().map(|p| p.0.size()[0]).sum();
        opt.zero_grad();
        let mut loss = 0.0;
        for (img, ids, target) in parts {
            let w = img.size()[0] as f64 / total as f64;
            let o = backward_micro(&model, img, ids, target, w, Levers::FAST, None, &mut precision).unwrap();
            loss += o.loss * w;
        }
        let g = grads(&model);
        finish_step(&mut opt, &mut precision.scaler, 1.0).unwrap();
        (loss, g)
    };
    let (loss_one, g_one) = run(&[(&img6, &ids6, &m6)]);
    let (loss_acc, g_acc) = run(&[(&img2, &ids2, &m2), (&img4, &ids4, &m4)]);
    // f32 sums in another order (the mean of 6 maps vs the weighted means of 2 and 4):
    // a relative 1e-5 on the loss, 1e-4 of each tensor's largest gradient; tensors whose
    // true gradient is zero (a conv bias before a train-mode BatchNorm) hold only rounding
    // noise, bounded by 1e-5 of the largest gradient of all.
    assert!((loss_one - loss_acc).abs() <= 1e-5 * loss_one.abs(), "loss {loss_one} vs {loss_acc}");
    let global = g_one.iter().map(|(_, g)| common::max_abs(g)).fold(0.0, f64::max);
    let mut moved = 0;
    for ((n, a), (_, b)) in g_one.iter().zip(&g_acc) {
        let scale = common::max_abs(a).max(1e-12);
        let d = max_abs_diff(a, b);
        assert!(d <= 1e-4 * scale + 1e-5 * global, "{n}: max |Δgrad| {d} vs max |grad| {scale} (of all {global})");
        moved += usize::from(scale > 1e-12);
    }
    assert!(moved > 10, "the step has gradients to compare ({moved})");
}

#[test]
fn accumulate_counts_optimizer_steps_and_resumes_bit_identically() {
    let dir = fresh_temp_dir("accumulate");
    let (data, cfg) = setup(&dir);
    let (straight, split) = (dir.join("straight"), dir.join("split"));
    let args = |out: &Path, steps: &'static str, resume: bool| -> Vec<String> {
        let mut extra = vec!["--max-steps", steps, "--accumulate", "2", "--opts", "TRAIN.print_freq", "1"];
        if resume {
            extra.insert(0, "--resume");
        }
        let a = common::set_flag(train_args(&data, &cfg, out, &extra), "--batch-size", "4");
        a.into_iter().map(str::to_string).collect()
    };
    let run = |a: Vec<String>| detris_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let log = run(args(&straight, "3", false));
    assert!(log.contains("steps of 2 batches of 4 per epoch"), "{log}");
    let steps: Vec<u64> = records(&straight, "interval").iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3], "--max-steps and print_freq count optimizer steps");
    run(args(&split, "1", false));
    run(args(&split, "3", true));
    let (a, b) =
        (sorted_safetensors(&straight.join("last.safetensors")), sorted_safetensors(&split.join("last.safetensors")));
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(max_abs_diff(x, y), 0.0, "{n} differs after resuming an accumulated run");
    }
    // Resuming with another accumulation is refused (the options differ).
    let mut other = args(&split, "4", true);
    let i = other.iter().position(|s| s == "--accumulate").unwrap();
    other[i + 1] = "4".into();
    let o = detris_unchecked(&other.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success() && stderr(&o).contains("different training options"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

/// The file of the train split's first photo, how many refs show it, and how many refs
/// the split has.
fn first_photo(data: &Path) -> (PathBuf, usize, usize) {
    let anns: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("anns/synth/train.json")).unwrap()).unwrap();
    let refs = anns.as_array().unwrap();
    let name = refs[0]["img_name"].as_str().unwrap();
    let count = refs.iter().filter(|r| r["img_name"] == name).count();
    (data.join("images/train2014").join(name), count, refs.len())
}

#[test]
fn an_unreadable_photo_is_skipped_named_and_counted_up_to_the_limit() {
    let dir = fresh_temp_dir("bad-samples");
    let (data, cfg) = setup(&dir);
    let (photo, refs, total) = first_photo(&data);
    std::fs::write(&photo, b"not a photo").unwrap();
    let batch = 4;
    let args = |out: &'_ Path, extra: &[&'static str]| -> Vec<String> {
        let a = common::set_flag(train_args(&data, &cfg, out, extra), "--batch-size", "4");
        a.into_iter().map(str::to_string).collect()
    };
    let run = dir.join("run");
    let log = detris_ok(&args(&run, &[]).iter().map(String::as_str).collect::<Vec<_>>());
    let epoch = &records(&run, "epoch")[0];
    // Every ref of the photo is planned, but those of the last partial batch (dropped, as the official loader).
    let skipped = epoch["skipped_count"].as_u64().unwrap() as usize;
    assert!(skipped >= 1 && skipped <= refs && skipped + total % batch >= refs, "{refs} refs of the photo: {epoch}");
    let named = epoch["skipped"].as_array().unwrap();
    assert_eq!(named.len(), skipped);
    let mut entries = Vec::new();
    for s in named {
        assert_eq!(s["origin"]["source"], "prepared", "{s}");
        let entry = format!("entry {} ", s["origin"]["index"]);
        assert!(log.contains("skipped a sample that cannot be read") && log.contains(&entry), "{entry}: {log}");
        entries.push(entry);
    }
    assert!(log.contains(&format!("{skipped} unreadable samples skipped")), "{log}");
    // One fewer allowed than met: the run stops, naming them all.
    let limit: &'static str = Box::leak((skipped - 1).to_string().into_boxed_str());
    let o = detris_unchecked(
        &args(&dir.join("strict"), &["--max-bad-samples", limit]).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains(&format!("--max-bad-samples {limit}")), "{err}");
    assert!(entries.iter().all(|e| err.contains(e.as_str())), "{entries:?} in {err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_folder_holding_a_run_is_refused_and_its_lock_keeps_a_second_run_out() {
    let dir = fresh_temp_dir("run-folder");
    let (data, cfg) = setup(&dir);
    let run = dir.join("run");
    detris_checked(&train_args(&data, &cfg, &run, &["--max-steps", "1", "--opts", "TRAIN.print_freq", "1"]));
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("training ") && log.contains("stopped at step 1"), "train.log:\n{log}");
    let interval = &records(&run, "interval")[0];
    for key in ["loss", "iou", "pr50"] {
        assert!(interval[key].as_f64().is_some_and(|v| v.is_finite()), "{interval}");
    }
    assert!(!run.join(".lock").exists(), "the lock goes with the run");

    // A second run into it: refused, nothing touched.
    let before = std::fs::read(run.join("last.safetensors")).unwrap();
    let o = detris_unchecked(&train_args(&data, &cfg, &run, &["--max-steps", "1"]));
    assert!(
        !o.status.success() && stderr(&o).contains("holds a run") && stderr(&o).contains("--overwrite"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(run.join("last.safetensors")).unwrap(), before);

    // A live process holds the lock (this test's own): refused, naming its pid.
    let me = std::process::id();
    std::fs::write(run.join(".lock"), format!(r#"{{"pid":{me},"host":"{}","started":0}}"#, hostname())).unwrap();
    let o = detris_unchecked(&train_args(&data, &cfg, &run, &["--max-steps", "2", "--resume"]));
    assert!(!o.status.success() && stderr(&o).contains(&format!("pid {me}")), "{}", stderr(&o));
    // A lock of a process that is gone: taken over with a notice.
    let dead = i32::MAX;
    std::fs::write(run.join(".lock"), format!(r#"{{"pid":{dead},"host":"{}","started":0}}"#, hostname())).unwrap();
    let log = detris_ok(&train_args(&data, &cfg, &run, &["--max-steps", "2", "--resume"]));
    assert!(log.contains("stale lock") && log.contains("resuming at epoch 1, step 1"), "{log}");

    // --overwrite: a new run from the start, its old files gone.
    let log = detris_ok(&train_args(&data, &cfg, &run, &["--max-steps", "1", "--overwrite"]));
    assert!(log.contains("--overwrite: removed"), "{log}");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert_eq!(log.matches("training ").count(), 1, "train.log starts again:\n{log}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_nan_stop_before_any_checkpoint_says_none_was_written() {
    let dir = fresh_temp_dir("nan-early");
    let (data, cfg) = setup(&dir);
    let out = dir.join("run");
    // As tests/train_cli.rs: at lr 1e30 the second forward overflows; nothing saves before it.
    let args =
        common::set_flag(train_args(&data, &cfg, &out, &["--train-backbones", "--max-steps", "6"]), "--lr", "1e30");
    let o = detris_unchecked(&args);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("no checkpoint was written yet"), "{err}");
    assert!(!out.join("last.safetensors").exists());
    let log = std::fs::read_to_string(out.join("train.log")).unwrap();
    assert!(log.contains("the loss became"), "the error is in train.log too:\n{log}");
    std::fs::remove_dir_all(&dir).ok();
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}
