//! The nine released YAML configs, read verbatim: `detris train --yaml FILE
//! --print-config` resolves each to the file's own values (this test reads
//! the YAML itself to compare), and bad keys or values are named.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::detris_ok;

fn configs() -> Vec<PathBuf> {
    let root = detris_io::fixtures::path("official-configs");
    let mut files = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let dir = dir.unwrap().path();
        if dir.is_dir() {
            for f in std::fs::read_dir(&dir).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "yaml") {
                    files.push(f);
                }
            }
        }
    }
    files.sort();
    files
}

fn print_config(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_detris")).args(["train"]).args(args).output().expect("run detris")
}

/// The flattened keys of a YAML file, as the official `utils/config.py` sees them.
fn yaml_keys(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    let yaml: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let json = serde_json::to_value(yaml).unwrap();
    let mut flat = serde_json::Map::new();
    for (_, section) in json.as_object().unwrap() {
        flat.extend(section.as_object().unwrap().clone());
    }
    flat
}

#[test]
fn every_released_config_resolves_to_its_own_values() {
    let files = configs();
    assert_eq!(files.len(), 9, "the nine released configs");
    for file in &files {
        let out = print_config(&["--yaml", file.to_str().unwrap(), "--print-config"]);
        assert!(out.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = yaml_keys(file);
        let (model, recipe, data) = (&got["model"], &got["recipe"], &got["data"]);
        let f = file.display();
        for (key, field) in [
            ("visual_adapter_dim", &model["visual_adapter_dim"]),
            ("visual_adapter_layer", &model["dino_adapter_layers"]),
            ("txt_adapter_dim", &model["txt_adapter_dim"]),
            ("txtual_adapter_layer", &model["txt_adapter_layers"]),
            ("output_dinov2", &model["taps"]),
            ("dino_layers", &model["dino_depth"]),
            ("input_size", &model["input_size"]),
            ("word_len", &model["word_len"]),
            ("word_dim", &model["embed_dim"]),
            ("vis_dim", &model["vis_dim"]),
            ("num_layers", &model["dec_layers"]),
            ("num_head", &model["dec_heads"]),
            ("dim_ffn", &model["dec_ffn"]),
            ("epochs", &recipe["epochs"]),
            ("milestones", &recipe["milestones"]),
            ("batch_size", &recipe["batch_size"]),
            ("batch_size_val", &recipe["options"]["batch_size_val"]),
            ("manual_seed", &recipe["seed"]),
            ("dataset", &data["dataset"]),
            ("train_split", &data["train_split"]),
            ("val_split", &data["val_split"]),
            ("test_split", &data["test_split"]),
        ] {
            assert_eq!(field, &want[key], "{f}: {key}");
        }
        // fpn_in is the DINOv2 width; the numbers as floats (0.1 may be written 1e-1).
        assert_eq!(model["dino_dim"], want["fpn_in"][0], "{f}: fpn_in");
        for (key, field) in [
            ("base_lr", &recipe["base_lr"]),
            ("lr_decay", &recipe["lr_decay"]),
            ("lr_multi", &recipe["options"]["lr_multi"]),
            ("weight_decay", &recipe["options"]["weight_decay"]),
            ("max_norm", &recipe["options"]["max_norm"]),
            ("dropout", &model["dropout"]),
        ] {
            assert_eq!(field.as_f64(), want[key].as_f64(), "{f}: {key}");
        }
        let lr = want["base_lr"].as_f64().unwrap();
        assert_eq!(recipe["lr_groups"]["head"].as_f64(), Some(lr), "{f}");
        assert_eq!(recipe["lr_groups"]["backbone"].as_f64(), Some(lr * want["lr_multi"].as_f64().unwrap()), "{f}");
        // The data root is mask_root's grandparent; the run folder output_folder/exp_name.
        let mask_root = PathBuf::from(want["mask_root"].as_str().unwrap());
        assert_eq!(
            data["root"].as_str().map(PathBuf::from),
            mask_root.parent().unwrap().parent().map(Path::to_path_buf)
        );
        let out_dir = Path::new(want["output_folder"].as_str().unwrap()).join(want["exp_name"].as_str().unwrap());
        assert_eq!(got["run"]["out"].as_str().map(PathBuf::from), Some(out_dir), "{f}");
        assert_eq!(got["weights"]["dinov2"], want["dino_pretrain"], "{f}");
        assert!(got["not_used_by_train"]["train_lmdb"].as_str().unwrap().contains("LMDB"), "{f}");
    }
}

#[test]
fn command_line_and_opts_win_over_the_file() {
    let file = detris_io::fixtures::path("official-configs/refcoco+/DETRIS_base.yaml");
    let out = print_config(&[
        "--yaml",
        file.to_str().unwrap(),
        "--epochs",
        "3",
        "--print-config",
        "--opts",
        "TRAIN.base_lr",
        "2e-4",
        "TRAIN.lr_multi",
        "0.5",
        "DATA.val_split",
        "val",
        "TRAIN.milestones",
        "[1, 2]",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["recipe"]["epochs"], 3);
    assert_eq!(got["recipe"]["milestones"], serde_json::json!([1, 2]));
    assert_eq!(got["recipe"]["lr_groups"]["backbone"].as_f64(), Some(1e-4));
    assert_eq!(got["data"]["val_split"], "val");
    assert_eq!(got["recipe"]["base_lr"].as_f64(), Some(2e-4));
}

#[test]
fn without_a_yaml_the_defaults_are_the_detris_b_refcoco_recipe() {
    let out = print_config(&["--data", "anywhere", "--variant", "detris-b", "--print-config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = yaml_keys(&detris_io::fixtures::path("official-configs/refcoco/DETRIS_base.yaml"));
    assert_eq!(got["recipe"]["epochs"], want["epochs"]);
    assert_eq!(got["recipe"]["milestones"], want["milestones"]);
    assert_eq!(got["recipe"]["batch_size"], want["batch_size"]);
    assert_eq!(got["recipe"]["options"]["batch_size_val"], want["batch_size_val"]);
    assert_eq!(got["recipe"]["base_lr"].as_f64(), want["base_lr"].as_f64());
    assert_eq!(got["data"]["val_split"], want["val_split"]);
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let dir = std::env::temp_dir().join(format!("detris-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = std::fs::read_to_string(detris_io::fixtures::path("official-configs/refcoco/DETRIS_base.yaml")).unwrap();
    for (name, text, needle) in [
        ("unknown", base.replace("  lr_multi: 1\n", "  lr_multi: 1\n  lr_warmup: 5\n"), "lr_warmup"),
        ("bad", base.replace("  epochs: 65\n", "  epochs: many\n"), "epochs"),
        ("list", base.replace("  milestones: [35,55]\n", "  milestones: 35\n"), "milestones"),
        ("refused", base.replace("  intermediate: False", "  intermediate: True"), "intermediate"),
    ] {
        assert_ne!(text, base, "{name}: the edit applies");
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        let out = print_config(&["--yaml", path.to_str().unwrap(), "--print-config"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
    }
    let base_path = detris_io::fixtures::path("official-configs/refcoco/DETRIS_base.yaml");
    for (opts, needle) in [(["TRAIN.warmup", "1"], "TRAIN.warmup"), (["TRAIN.epochs", "'x'"], "epochs")] {
        let mut args = vec!["--yaml", base_path.to_str().unwrap(), "--print-config", "--opts"];
        args.extend(opts);
        let out = print_config(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{opts:?}: {err}");
        assert!(err.contains(needle), "{opts:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `evaluate: False`, `start_epoch` and `save_freq` from `--opts` change the run
/// as they change the official loop: no validation and no best_model, the
/// epochs from start_epoch on, last_model written after the final epoch.
#[test]
fn evaluate_start_epoch_and_save_freq_are_honoured() {
    let dir = std::env::temp_dir().join(format!("detris-yaml-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = common::synth_data(&dir, 10);
    let (yaml, cfg) = (
        detris_io::fixtures::path("official-configs/refcoco/DETRIS_base.yaml"),
        detris_io::fixtures::path("tiny/config.json"),
    );
    let out = dir.join("run");
    detris_ok(&[
        "train",
        "--yaml",
        yaml.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--dataset",
        "synth",
        "--random-init",
        "--config",
        cfg.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--workers",
        "1",
        "--device",
        "cpu",
        "--save-format",
        "pth",
        "--out",
        out.to_str().unwrap(),
        "--opts",
        "TRAIN.evaluate",
        "False",
        "TRAIN.start_epoch",
        "1",
        "TRAIN.save_freq",
        "5",
    ]);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let epochs: Vec<i64> = records.iter().map(|r| r["epoch"].as_i64().unwrap()).collect();
    assert_eq!(epochs, [2, 3], "start_epoch 1 runs the second and third epochs");
    assert!(records.iter().all(|r| r["val_miou"].is_null()), "evaluate False: no validation");
    assert!(!out.join("best_model.pth").exists(), "no validation, no best_model");
    let (root, _) = detris_io::torch_file::load_tree(&out.join("last_model.pth")).unwrap();
    assert_eq!(root.get("epoch").and_then(detris_io::pickle::Value::as_i64), Some(3), "the final epoch is saved");
    std::fs::remove_dir_all(&dir).ok();
}
