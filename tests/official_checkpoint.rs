//! Checkpoints the official code loads, both ways: the fixture written by the
//! official `train.py` (`tiny/detris_ckpt.pth`) read into the model and the
//! official optimizer and written again gives the same pickle structure and
//! the same tensors; a detris-written file reads back exactly; training
//! writes `last_model.pth` and `--resume-from` continues from it and from the
//! official fixture.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use detris::train::adam::{Adam, AdamOptions};
use detris::train::checkpoint::pth::{self as official_pth, RunRecord};
use detris_io::pickle::Value;
use detris_io::torch_file::{load_tree, TensorReader};
use tch::{Kind, Tensor};

fn official_adam(model: &detris::Detris, lr_multi: f64, weight_decay: f64) -> Adam {
    let trainable = model.vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    Adam::official(trainable, &AdamOptions { lr: 1e-4, lr_multi, weight_decay, max_norm: 0.0 })
}

/// Every tensor record of a tree, in order, with where it is.
fn tensor_records<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    if v.as_object().is_some_and(|o| o.callable.name == "_rebuild_tensor_v2") {
        out.push((at, v));
        return;
    }
    match v {
        Value::Dict(pairs) => {
            for (k, item) in pairs {
                let key =
                    k.as_str().map(str::to_string).or_else(|| k.as_i64().map(|i| i.to_string())).unwrap_or_default();
                tensor_records(item, format!("{at}/{key}"), out);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, item) in items.iter().enumerate() {
                tensor_records(item, format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn read_all(root: &Value, reader: &mut TensorReader) -> Vec<(String, detris_io::RawTensor)> {
    let mut records = Vec::new();
    tensor_records(root, String::new(), &mut records);
    records.into_iter().map(|(at, v)| (at, reader.tensor(v).unwrap().unwrap())).collect()
}

#[test]
fn the_official_fixture_written_again_has_the_same_structure_and_tensors() {
    let fixture_path = fixture("tiny/detris_ckpt.pth");
    let model = tiny_model(tiny_config(), Kind::Float);
    let mut opt = official_adam(&model, 1.0, 0.0);
    let state = official_pth::load(&fixture_path, &model, &mut opt).unwrap();
    let (theirs, mut their_reader) = load_tree(&fixture_path).unwrap();
    let dir = fresh_temp_dir("official-structure");
    let ours_path = dir.join("last_model.pth");
    // The fixture's own bookkeeping, read from it (the test does not assume its values).
    let float = |k: &str| theirs.get(k).and_then(Value::as_f64).unwrap();
    let prec = theirs.get("prec").and_then(Value::as_dict).unwrap();
    let sched = theirs.get("scheduler").unwrap();
    let bn_key = "module.neck.aggr.1.num_batches_tracked";
    let bn = their_reader.tensor(theirs.get("state_dict").unwrap().get(bn_key).unwrap()).unwrap().unwrap();
    // MultiStepLR keeps its milestones as a Counter: milestone → how often it is listed.
    let counter = sched.get("milestones").unwrap();
    let counts = counter.as_dict().or_else(|| counter.as_object().and_then(|o| o.args.first()?.as_dict())).unwrap();
    let milestones: Vec<usize> = counts
        .iter()
        .flat_map(|(m, n)| std::iter::repeat_n(m.as_i64().unwrap() as usize, n.as_i64().unwrap() as usize))
        .collect();
    let run = RunRecord {
        epoch: state.epoch,
        cur_iou: float("cur_iou"),
        best_iou: float("best_iou"),
        prec: prec.iter().map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_f64().unwrap())).collect(),
        milestones,
        gamma: sched.get("gamma").and_then(Value::as_f64).unwrap(),
        base_lr: sched.get("base_lrs").and_then(Value::as_list).unwrap()[1].as_f64().unwrap(),
        bn_batches: bn.to_i64_vec()[0],
    };
    official_pth::save(&ours_path, &model, &opt, &run).unwrap();
    let (ours, mut our_reader) = load_tree(&ours_path).unwrap();
    // Entry by entry first, for a readable failure; then the whole trees.
    let keys = |v: &Value| -> Vec<String> {
        v.as_dict().unwrap().iter().map(|(k, _)| k.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(keys(&ours), keys(&theirs));
    for key in keys(&theirs) {
        let (a, b) = (ours.get(&key).unwrap(), theirs.get(&key).unwrap());
        if key == "state_dict" || key == "optimizer" {
            let names = |v: &Value| -> Vec<Value> { v.as_dict().unwrap().iter().map(|(k, _)| k.clone()).collect() };
            assert_eq!(names(a), names(b), "{key}: keys and their order");
        }
        assert!(a == b, "`{key}` differs:\nours   {a:?}\ntheirs {b:?}");
    }
    assert_eq!(ours, theirs);
    let (a, b) = (read_all(&ours, &mut our_reader), read_all(&theirs, &mut their_reader));
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 500, "weights and Adam moments: {}", a.len());
    for ((at, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!((x.dtype, &x.shape), (y.dtype, &y.shape), "{at}");
        assert!(x.bytes() == y.bytes(), "{at}: the tensor differs");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_written_checkpoint_loads_back_with_the_same_weights_and_optimizer_state() {
    let model = tiny_model(tiny_config(), Kind::Float);
    let mut opt = official_adam(&model, 0.5, 1e-4);
    tch::manual_seed(3);
    tch::no_grad(|| {
        for p in &mut opt.params {
            let _ = p.exp_avg.copy_(&p.exp_avg.randn_like());
            let _ = p.exp_avg_sq.copy_(&p.exp_avg_sq.rand_like());
        }
    });
    opt.step = 7;
    opt.lr = 1e-5;
    let dir = fresh_temp_dir("official-roundtrip");
    let path = dir.join("best_model.pth");
    let run = RunRecord {
        epoch: 4,
        cur_iou: 0.25,
        best_iou: 0.5,
        prec: vec![("Pr@50".into(), 0.3), ("Pr@90".into(), 0.01)],
        milestones: vec![3],
        gamma: 0.1,
        base_lr: 1e-4,
        bn_batches: 28,
    };
    official_pth::save(&path, &model, &opt, &run).unwrap();
    let mut cfg = tiny_config();
    cfg.dropout = 0.0;
    let fresh = detris::Detris::new(cfg, tch::Device::Cpu).unwrap();
    let mut fresh_opt = official_adam(&fresh, 0.5, 1e-4);
    let state = official_pth::load(&path, &fresh, &mut fresh_opt).unwrap();
    assert_eq!((state.epoch, state.best_iou, state.adam_step), (4, 0.5, 7));
    assert_eq!(fresh_opt.step, 7);
    let (a, b) = (model.vs.variables(), fresh.vs.variables());
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert_eq!(max_abs_diff(t, &b[name]), 0.0, "{name}");
    }
    for (p, p2) in opt.params.iter().zip(&fresh_opt.params) {
        let n = &p.name;
        assert_eq!(n, &p2.name);
        assert_eq!(
            (max_abs_diff(&p.exp_avg, &p2.exp_avg), max_abs_diff(&p.exp_avg_sq, &p2.exp_avg_sq)),
            (0.0, 0.0),
            "{n}"
        );
    }
    // What the official scripts read: `module.` keys, the two groups' lrs, the schedule.
    let (root, _) = load_tree(&path).unwrap();
    let sd = root.get("state_dict").and_then(Value::as_dict).unwrap();
    assert!(sd.iter().all(|(k, _)| k.as_str().unwrap().starts_with("module.")));
    let groups = root.get("optimizer").and_then(|o| o.get("param_groups")).and_then(Value::as_list).unwrap();
    let lr = |g: &Value, k: &str| g.get(k).and_then(Value::as_f64).unwrap();
    assert_eq!((lr(&groups[0], "lr"), lr(&groups[1], "lr")), (0.5e-5, 1e-5));
    assert_eq!((lr(&groups[0], "initial_lr"), lr(&groups[1], "weight_decay")), (0.5e-4, 1e-4));
    assert_eq!(root.get("scheduler").and_then(|s| s.get("last_epoch")).and_then(Value::as_i64), Some(3));
    // Every global the file names is one torch.load(weights_only=True) allows.
    let bytes = std::fs::read(&path).unwrap();
    for global in ["torch._utils\n_rebuild_tensor_v2", "torch\nFloatStorage", "collections\nOrderedDict"] {
        assert!(bytes.windows(global.len()).any(|w| w == global.as_bytes()), "{global:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
    let _ = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
}

fn synth_setup(dir: &Path) -> (PathBuf, PathBuf) {
    (synth_data(dir, 20), fixture("tiny/config.json"))
}

fn train_args<'a>(data: &'a Path, cfg: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let own = ["--random-init", "--config", cfg.to_str().unwrap()];
    synth_train_args(data, out, &[&own[..], extra].concat())
}

#[test]
fn training_writes_last_model_pth_and_resume_from_it_continues_exactly() {
    let dir = fresh_temp_dir("official-resume");
    let (data, cfg) = synth_setup(&dir);
    let (straight, first, second) = (dir.join("straight"), dir.join("first"), dir.join("second"));
    detris_ok(&train_args(&data, &cfg, &straight, &["--epochs", "2", "--save-format", "both"]));
    detris_ok(&train_args(&data, &cfg, &first, &["--epochs", "1", "--save-format", "pth"]));
    assert!(first.join("last_model.pth").is_file() && first.join("best_model.pth").is_file());
    assert!(!first.join("last.safetensors").exists(), "--save-format pth writes no safetensors at epoch ends");
    let last = first.join("last_model.pth");
    let log = detris_ok(&train_args(
        &data,
        &cfg,
        &second,
        &["--epochs", "2", "--save-format", "both", "--resume-from", last.to_str().unwrap()],
    ));
    assert!(log.contains("resuming at epoch 2"), "{log}");
    // Weights, BatchNorm statistics and Adam moments after epoch 2, bit for bit.
    let (a, b) =
        (sorted_safetensors(&straight.join("last.safetensors")), sorted_safetensors(&second.join("last.safetensors")));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(max_abs_diff(ta, tb), 0.0, "{na} differs after resuming from last_model.pth");
    }
    // The official fixture resumes too: its epoch and Adam step carry on.
    let official = dir.join("official");
    let fixture_ckpt = fixture("tiny/detris_ckpt.pth");
    let log = detris_ok(&train_args(
        &data,
        &cfg,
        &official,
        &["--epochs", "2", "--max-steps", "2", "--resume-from", fixture_ckpt.to_str().unwrap()],
    ));
    assert!(log.contains("resuming at epoch 2, step 1"), "{log}");
    assert!(official.join("last.safetensors").is_file());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn export_format_pth_holds_every_weight_under_module_keys() {
    let dir = fresh_temp_dir("official-export");
    let out = dir.join("exported.pth");
    let (ckpt, cfg) = (fixture("tiny/detris_ckpt.pth"), fixture("tiny/config.json"));
    detris_ok(&[
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--device",
        "cpu",
        "--format",
        "pth",
        "--out",
        out.to_str().unwrap(),
    ]);
    let want = read_st("tiny/state_dict.safetensors");
    let stored = detris_io::torch_file::load_checkpoint(&out).unwrap().tensors;
    assert!(stored.keys().all(|k| k.starts_with("module.")), "every key under `module.`, as DDP saves them");
    let got = detris::weights::read_weights(&out).unwrap().0;
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "the official key set");
    for (name, t) in &want {
        let ours = detris::weights::to_tch(&got[name]).unwrap();
        assert_eq!(max_abs_diff(&ours.to_kind(Kind::Double), &t.to_kind(Kind::Double)), 0.0, "{name}");
    }
    let (root, _) = load_tree(&out).unwrap();
    let state = root.get("optimizer").and_then(|o| o.get("state")).and_then(Value::as_dict).unwrap();
    assert!(state.is_empty(), "no Adam state before a step");
    std::fs::remove_dir_all(&dir).ok();
}
