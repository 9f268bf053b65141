//! The DETRIS-L* recipe end to end: a mixed mini set made from the REFER
//! fixture (`detris data prepare --mixed`), then `detris train --yaml
//! DETRIS_large_mixed.yaml` on it. The model is shrunk to the tiny fixture
//! config (`--config` wins over the YAML's model keys) so that a CPU runs an
//! epoch in seconds; the data set, splits and recipe are the file's.

mod common;

use std::path::Path;

use common::detris_ok;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn detris_large_mixed_yaml_trains_on_a_prepared_mixed_set() {
    let dir = std::env::temp_dir().join(format!("detris-mixed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mini = detris_io::fixtures::path("data/refer_mini");
    // One REFER download per source: the fixture's refs serve as refcoco+ (unc) and refcocog (umd) too.
    let refer = dir.join("refer");
    copy_dir(&mini.join("images/train2014"), &refer.join("images/train2014"));
    copy_dir(&mini.join("refcoco"), &refer.join("refcoco"));
    copy_dir(&mini.join("refcoco"), &refer.join("refcoco+"));
    std::fs::create_dir_all(refer.join("refcocog")).unwrap();
    std::fs::copy(mini.join("refcoco/refs(unc).p"), refer.join("refcocog/refs(umd).p")).unwrap();
    std::fs::copy(mini.join("refcoco/instances.json"), refer.join("refcocog/instances.json")).unwrap();
    let data = dir.join("prepared");
    detris_ok(&["data", "prepare", "--refer", refer.to_str().unwrap(), "--mixed", "--out", data.to_str().unwrap()]);
    let train: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("anns/refcoco_mixed/train.json")).unwrap()).unwrap();
    let ids: Vec<&str> = train.as_array().unwrap().iter().map(|r| r["segment_id"].as_str().unwrap()).collect();
    for source in ["refcoco_", "refcoco+_", "refcocog_u_"] {
        assert!(ids.iter().any(|id| id.starts_with(source)), "{source}: {ids:?}");
    }
    let yaml = detris_io::fixtures::path("official-configs/refcoco/DETRIS_large_mixed.yaml");
    let cfg = detris_io::fixtures::path("tiny/config.json");
    let out = dir.join("run");
    let log = detris_ok(&[
        "train",
        "--yaml",
        yaml.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--random-init",
        "--config",
        cfg.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--workers",
        "1",
        "--device",
        "cpu",
        "--val-limit",
        "4",
        "--save-format",
        "both",
        "--out",
        out.to_str().unwrap(),
        "--opts",
        "TRAIN.batch_size_val",
        "2",
    ]);
    assert!(log.contains("refcoco_mixed"), "{log}");
    for file in ["last_model.pth", "best_model.pth", "last.safetensors", "metrics.jsonl"] {
        assert!(out.join(file).is_file(), "{file}: {log}");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(record["val_split"], "val");
    assert!(record["val_miou"].as_f64().is_some_and(f64::is_finite), "{record}");
    std::fs::remove_dir_all(&dir).ok();
}
